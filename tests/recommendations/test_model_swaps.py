from __future__ import annotations

import math
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest

from tests.recommendations.usage import MILLION, make_project, record_calls
from weckr_core import pricing
from weckr_core.pricing import Rate, resolve_pricing
from weckr_django.recommendations import (
    confidence_for,
    model_recommendations_payload,
    model_swap_recommendations,
)

pytestmark = pytest.mark.django_db


def nov(day: int, hour: int = 12) -> datetime:
    return datetime(2026, 11, day, hour, tzinfo=UTC)


def cost_per_call(
    model: str, *, uncached: int, cached: int = 0, writes: int = 0, output: int = 0
) -> Decimal:
    rates = resolve_pricing(model)
    return (
        uncached * rates.input.base
        + cached * rates.cached_input.base
        + writes * rates.cache_write.base
        + output * rates.output.base
    ) / MILLION


def test_worked_example_per_feature_sorted_by_monthly_saving() -> None:
    project = make_project()
    # 100 calls: 10,000 prompt tokens of which 2,000 cache reads; 300 output incl. 50 reasoning.
    record_calls(
        project,
        100,
        at=nov(3),
        feature="summary",
        model="gpt-4o",
        input_tokens=10_000,
        cached_input_tokens=2_000,
        output_tokens=300,
        reasoning_tokens=50,
    )
    # 12 calls: 10,000 uncached + 40,000 cache reads, 10,000 cache writes, 500 output.
    # 60,000 prompt tokens per call stay under Sonnet 4.5's 200k long-context tier.
    record_calls(
        project,
        12,
        at=nov(10),
        feature="chat",
        model="claude-sonnet-4-5",
        provider="anthropic",
        input_tokens=50_000,
        cached_input_tokens=40_000,
        cache_creation_tokens=10_000,
        output_tokens=500,
    )

    swaps = model_swap_recommendations(project, now=nov(15))

    gpt_mix: dict[str, Any] = {"uncached": 8_000, "cached": 2_000, "output": 300}
    gpt_current = 100 * cost_per_call("gpt-4o", **gpt_mix)
    gpt_projected = 100 * cost_per_call("gpt-4o-mini", **gpt_mix)
    claude_mix: dict[str, Any] = {
        "uncached": 10_000,
        "cached": 40_000,
        "writes": 10_000,
        "output": 500,
    }
    claude_current = 12 * cost_per_call("claude-sonnet-4-5", **claude_mix)
    claude_projected = 12 * cost_per_call("claude-haiku-4-5", **claude_mix)
    # November has 30 days and the 15th has begun: the month is twice the month to date.
    gpt_monthly = (gpt_current - gpt_projected) * 30 / 15
    claude_monthly = (claude_current - claude_projected) * 30 / 15
    assert gpt_monthly > claude_monthly >= 1

    assert [(s.feature, s.current_model, s.suggested_model) for s in swaps] == [
        ("summary", "gpt-4o", "gpt-4o-mini"),
        ("chat", "claude-sonnet-4-5", "claude-haiku-4-5"),
    ]
    gpt, claude = swaps
    assert (gpt.calls, gpt.provider, gpt.confidence) == (100, "openai", "medium")
    assert gpt.avg_output_tokens == 300
    assert gpt.current_cost_usd == gpt_current
    assert gpt.projected_cost_usd == gpt_projected
    assert gpt.saving_to_date_usd == gpt_current - gpt_projected
    assert gpt.monthly_saving_usd == gpt_monthly
    assert (claude.calls, claude.provider, claude.confidence) == (12, "anthropic", "low")
    assert claude.current_cost_usd == claude_current
    assert claude.projected_cost_usd == claude_projected
    assert claude.monthly_saving_usd == claude_monthly


def test_long_outputs_unpriced_models_and_models_without_alternative_are_skipped() -> None:
    project = make_project()
    big_prompt: dict[str, Any] = {"input_tokens": 200_000}
    # Exactly 1,000 output tokens per call on average: not under the threshold.
    record_calls(project, 20, at=nov(2), feature="report", output_tokens=1_000, **big_prompt)
    record_calls(project, 20, at=nov(2), feature="cheap", model="gpt-4o-mini", **big_prompt)
    record_calls(project, 20, at=nov(2), feature="custom", model="acme-llm-7", **big_prompt)
    now = nov(30)

    assert model_swap_recommendations(project, now=now) == []
    relaxed = model_swap_recommendations(project, now=now, max_avg_output_tokens=1_001)
    assert [(s.feature, s.current_model) for s in relaxed] == [("report", "gpt-4o")]


@pytest.mark.parametrize(("calls", "recommended"), [(9, False), (10, True)])
def test_needs_ten_calls_this_month(calls: int, recommended: bool) -> None:
    project = make_project()
    record_calls(project, calls, at=nov(2), input_tokens=100_000, output_tokens=100)
    per_call_saving = cost_per_call("gpt-4o", uncached=100_000, output=100) - cost_per_call(
        "gpt-4o-mini", uncached=100_000, output=100
    )
    assert calls * per_call_saving >= 1  # the saving alone would qualify

    swaps = model_swap_recommendations(project, now=nov(30))

    assert [s.calls for s in swaps] == ([calls] if recommended else [])


@pytest.mark.parametrize("above", [False, True])
def test_needs_a_monthly_saving_of_one_dollar(above: bool) -> None:
    project = make_project()
    saving_per_token = (
        resolve_pricing("gpt-4o").input.base - resolve_pricing("gpt-4o-mini").input.base
    ) / MILLION
    # The fewest prompt tokens whose saving reaches $1; one token fewer falls short.
    tokens = math.ceil(Decimal(1) / saving_per_token) - (0 if above else 1)
    per_call, last_call = divmod(tokens, 10)
    record_calls(project, 9, at=nov(4), input_tokens=per_call, output_tokens=0)
    record_calls(project, 1, at=nov(4), input_tokens=per_call + last_call, output_tokens=0)

    # On November 30th the month to date is the whole month: no extrapolation.
    swaps = model_swap_recommendations(project, now=nov(30, 23))

    if above:
        assert len(swaps) == 1
        assert swaps[0].monthly_saving_usd == tokens * saving_per_token
        assert Decimal(1) <= swaps[0].monthly_saving_usd < Decimal(1) + saving_per_token
    else:
        assert swaps == []
        assert Decimal(1) - saving_per_token <= tokens * saving_per_token < 1


def test_month_follows_the_project_timezone() -> None:
    new_york = make_project("NY", timezone="America/New_York")
    utc = make_project("UTC")
    big: dict[str, Any] = {"input_tokens": 200_000, "output_tokens": 100}
    for project in (new_york, utc):
        # Dec 1st 03:00 UTC is still Nov 30th in New York; Nov 1st 03:00 UTC is Oct 31st.
        record_calls(project, 10, at=datetime(2026, 12, 1, 3, tzinfo=UTC), feature="late", **big)
        record_calls(project, 10, at=datetime(2026, 11, 1, 3, tzinfo=UTC), feature="early", **big)

    end_of_november_in_new_york = datetime(2026, 12, 1, 4, tzinfo=UTC)
    assert [
        s.feature for s in model_swap_recommendations(new_york, now=end_of_november_in_new_york)
    ] == ["late"]
    assert [s.feature for s in model_swap_recommendations(utc, now=nov(30, 23))] == ["early"]


def test_never_suggests_another_vendor() -> None:
    project = make_project()
    record_calls(project, 50, at=nov(2), input_tokens=200_000)
    pricing.set_alternative_overrides(lambda model: "claude-haiku-4-5")

    assert model_swap_recommendations(project, now=nov(30)) == []


def test_confidence_from_call_count() -> None:
    assert [confidence_for(n) for n in (10, 49, 50, 499, 500)] == [
        "low",
        "low",
        "medium",
        "medium",
        "high",
    ]


def test_payload_is_camel_case_with_rounded_money() -> None:
    project = make_project()
    record_calls(project, 10, at=nov(2), feature=None, input_tokens=200_000, output_tokens=250)
    (swap,) = model_swap_recommendations(project, now=nov(20))

    payload = model_recommendations_payload(project, now=nov(20))

    assert payload == {
        "projectId": str(project.pk),
        "month": "2026-11",
        "daysElapsed": 20,
        "daysInMonth": 30,
        "recommendations": [
            {
                "feature": None,
                "provider": "openai",
                "currentModel": "gpt-4o",
                "suggestedModel": "gpt-4o-mini",
                "calls": 10,
                "avgOutputTokens": 250.0,
                "currentCostUsd": float(round(swap.current_cost_usd, 6)),
                "projectedCostUsd": float(round(swap.projected_cost_usd, 6)),
                "savingToDateUsd": float(round(swap.saving_to_date_usd, 6)),
                "monthlySavingUsd": float(round(swap.monthly_saving_usd, 2)),
                "confidence": "low",
            }
        ],
    }
    assert swap.monthly_saving_usd == swap.saving_to_date_usd * 30 / 20


def test_long_prompts_are_projected_at_the_long_context_tier() -> None:
    project = make_project()
    record_calls(
        project,
        10,
        at=nov(2),
        model="gemini-1.5-pro",
        provider="google",
        feature="digest",
        input_tokens=150_000,
        output_tokens=100,
    )

    (swap,) = model_swap_recommendations(project, now=nov(30))

    def long_context(rate: Rate) -> Decimal:
        ((start, price),) = rate.tiers
        assert start < 150_000  # every call is past the tier threshold
        return price

    pro, flash = resolve_pricing("gemini-1.5-pro"), resolve_pricing("gemini-1.5-flash")
    assert swap.suggested_model == "gemini-1.5-flash"
    assert (
        swap.current_cost_usd
        == 10 * (150_000 * long_context(pro.input) + 100 * long_context(pro.output)) / MILLION
    )
    assert (
        swap.projected_cost_usd
        == 10 * (150_000 * long_context(flash.input) + 100 * long_context(flash.output)) / MILLION
    )
