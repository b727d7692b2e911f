from __future__ import annotations

from decimal import Decimal

import pytest

from weckr_core import pricing
from weckr_core.pricing import (
    CHEAPER_ALTERNATIVE,
    ModelPricing,
    calculate_cost,
    cheaper_alternative,
    price_usage,
    resolve_pricing,
)

M = Decimal(1_000_000)


# The providers' published list prices, USD per million tokens, written out here
# independently of the price database so a wrong entry or a wrong formula shows.
@pytest.mark.parametrize(
    ("model", "published_input", "published_cached", "published_output"),
    [
        ("gpt-4o", "2.50", "1.25", "10.00"),
        ("gpt-4o-mini", "0.15", "0.075", "0.60"),
        ("o3-mini", "1.10", "0.55", "4.40"),
        ("gemini-2.5-flash", "0.30", "0.03", "2.50"),
        ("claude-3-5-sonnet-20241022", "3.00", "0.30", "15.00"),
    ],
)
def test_rates_match_published_prices(
    model: str, published_input: str, published_cached: str, published_output: str
) -> None:
    prices = resolve_pricing(model)
    assert prices.priced
    assert prices["input"] == Decimal(published_input)
    assert prices["cached_input"] == Decimal(published_cached)
    assert prices["output"] == Decimal(published_output)


def test_openai_cached_tokens_are_billed_at_the_cache_rate() -> None:
    # 10,000 prompt tokens of which 8,000 were cache hits, 500 output tokens.
    cost = calculate_cost("gpt-4o", 10_000, 500, cached_input_tokens=8_000)
    expected = (2_000 * Decimal("2.50") + 8_000 * Decimal("1.25") + 500 * Decimal("10")) / M
    assert cost == expected


def test_anthropic_cache_writes_are_billed_on_top_at_the_write_rate() -> None:
    # Input 1,200 (200 uncached + 1,000 cache reads), 3,000 written to the cache.
    cost = calculate_cost(
        "claude-3-5-sonnet-20241022",
        1_200,
        400,
        cached_input_tokens=1_000,
        cache_creation_tokens=3_000,
    )
    expected = (
        200 * Decimal("3") + 1_000 * Decimal("0.30") + 3_000 * Decimal("3.75") + 400 * Decimal("15")
    ) / M
    assert cost == expected


def test_reasoning_tokens_are_billed_as_output_once() -> None:
    # o3-mini: 700 of the 1,000 output tokens were reasoning; they are not billed twice.
    with_reasoning = calculate_cost("o3-mini", 100, 1_000, reasoning_tokens=700)
    assert with_reasoning == (100 * Decimal("1.10") + 1_000 * Decimal("4.40")) / M
    # A source that reports reasoning apart from a smaller visible output count.
    assert calculate_cost("o3-mini", 0, 300, reasoning_tokens=900) == 900 * Decimal("4.40") / M


def test_long_context_tier_applies_above_the_threshold() -> None:
    small = price_usage("gemini-2.5-pro", input_tokens=100_000, output_tokens=1_000)
    large = price_usage("gemini-2.5-pro", input_tokens=300_000, output_tokens=1_000)
    assert small.usd == (100_000 * Decimal("1.25") + 1_000 * Decimal("10")) / M
    assert large.usd == (300_000 * Decimal("2.5") + 1_000 * Decimal("15")) / M


@pytest.mark.parametrize(
    ("name", "canonical"),
    [
        ("gpt-4o-2024-08-06", "gpt-4o"),
        ("openai/gpt-4o", "gpt-4o"),
        ("OpenAI/GPT-4o", "gpt-4o"),
        ("claude-3-5-sonnet-20241022", "claude-3-5-sonnet"),
        ("anthropic/claude-3-5-sonnet-20241022", "claude-3-5-sonnet"),
        ("models/gemini-2.5-flash", "gemini-2.5-flash"),
        ("gemini/gemini-2.5-flash", "gemini-2.5-flash"),
    ],
)
def test_dated_and_prefixed_names_resolve(name: str, canonical: str) -> None:
    prices = resolve_pricing(name)
    assert prices.priced
    assert prices.model == canonical


def test_unknown_model_is_flagged_unpriced_not_free() -> None:
    cost = price_usage("acme-llm-9000", input_tokens=1_000, output_tokens=1_000)
    assert cost.priced is False
    assert cost.usd == 0
    assert resolve_pricing("acme-llm-9000").source == "unknown"


def test_overrides_win_and_reset_the_cache() -> None:
    assert resolve_pricing("gpt-4o")["input"] == Decimal("2.5")

    def negotiated(model: str) -> ModelPricing | None:
        if model == "gpt-4o":
            return ModelPricing.flat("gpt-4o", input="2", output="8", provider="openai")
        return None

    pricing.set_price_overrides(negotiated)
    assert resolve_pricing("gpt-4o")["input"] == Decimal("2")
    assert resolve_pricing("gpt-4o")["cached_input"] == Decimal("2")
    assert calculate_cost("gpt-4o", 1_000_000, 0) == Decimal("2")
    # Names the hook does not know still come from the database.
    assert resolve_pricing("gpt-4o-mini").source == "genai-prices"
    pricing.set_price_overrides(None)
    assert resolve_pricing("gpt-4o")["input"] == Decimal("2.5")


def test_custom_model_priced_through_an_override() -> None:
    pricing.set_price_overrides(
        lambda model: (
            ModelPricing.flat(model, input="1", output="2") if model == "inhouse" else None
        )
    )
    cost = price_usage("inhouse", input_tokens=500_000, output_tokens=500_000)
    assert cost.priced
    assert cost.usd == Decimal("1.5")


@pytest.mark.parametrize(("model", "alternative"), sorted(CHEAPER_ALTERNATIVE.items()))
def test_every_downgrade_is_same_provider_and_cheaper(model: str, alternative: str) -> None:
    current, cheaper = resolve_pricing(model), resolve_pricing(alternative)
    assert current.priced and cheaper.priced
    assert current.provider == cheaper.provider
    assert cheaper["input"] < current["input"]
    assert cheaper["output"] < current["output"]


def test_downgrade_lookup_resolves_dated_names_and_overrides() -> None:
    assert cheaper_alternative("gpt-4o-2024-08-06") == "gpt-4o-mini"
    assert cheaper_alternative("openai/gpt-4o") == "gpt-4o-mini"
    assert cheaper_alternative("claude-opus-4-20250514") == "claude-sonnet-4"
    assert cheaper_alternative("gpt-4o-mini") is None
    assert cheaper_alternative("acme-llm-9000") is None
    pricing.set_alternative_overrides(lambda model: "gpt-4.1-nano" if model == "gpt-4o" else None)
    assert cheaper_alternative("gpt-4o") == "gpt-4.1-nano"
