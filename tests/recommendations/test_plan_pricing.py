from __future__ import annotations

import math
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from tests.recommendations.usage import MILLION, add_plan, make_project, record_calls
from weckr_core.pricing import resolve_pricing
from weckr_django.models import UsageEvent
from weckr_django.recommendations import (
    model_recommendations_payload,
    percentile_nearest_rank,
    plan_pricing_recommendations,
    pricing_recommendations_payload,
)

pytestmark = pytest.mark.django_db

NOW = datetime(2026, 11, 20, 12, tzinfo=UTC)
AT = datetime(2026, 11, 5, 9, tzinfo=UTC)
PROMPT, OUTPUT = 1_000_000, 1_000


def gpt4o_call_cost() -> Decimal:
    rates = resolve_pricing("gpt-4o")
    return (PROMPT * rates.input.base + OUTPUT * rates.output.base) / MILLION


def users_on_plan(project, plan: str, calls_per_user: list[int], *, prefix: str = "u") -> None:
    for number, calls in enumerate(calls_per_user, start=1):
        record_calls(
            project,
            calls,
            at=AT,
            user_id=f"{prefix}{number}",
            plan=plan,
            input_tokens=PROMPT,
            output_tokens=OUTPUT,
        )


def plan_named(project, name: str):
    (row,) = [p for p in plan_pricing_recommendations(project, now=NOW) if p.plan_name == name]
    return row


def test_worked_example_recommends_a_price_for_the_p90_user() -> None:
    project = make_project()
    add_plan(project, "pro", "20.00")
    # User n makes n calls: costs 1u, 2u, ..., 10u for u = one call; 55 calls in all.
    users_on_plan(project, "pro", list(range(1, 11)))
    # Anonymous calls on the plan neither count as users nor move the p90.
    record_calls(project, 30, at=AT, plan="pro", input_tokens=PROMPT, output_tokens=OUTPUT)

    row = plan_named(project, "pro")

    u = gpt4o_call_cost()
    # Nearest rank: ceil(0.9 * 10) = 9, so p90 is the 9th smallest cost, 9u.
    p90 = 9 * u
    recommended = Decimal(math.ceil(p90 / Decimal("0.30")))
    unprofitable = [n * u for n in range(1, 11) if n * u > 20]
    assert (row.users, row.calls, row.price_usd) == (10, 55, Decimal("20.00"))
    assert row.avg_cost_usd == 55 * u / 10
    assert row.p90_cost_usd == p90
    assert row.unprofitable_users == len(unprofitable) == 3  # users 8, 9 and 10
    assert row.loss_usd == sum(cost - 20 for cost in unprofitable)
    assert row.recommended_price_usd == recommended
    assert row.monthly_gain_usd == 10 * (recommended - 20)
    assert row.status == "raise_price"


def test_a_price_that_already_covers_the_target_is_ok() -> None:
    project = make_project(target_ai_cost_share=Decimal("0.10"))
    add_plan(project, "business", "999.00")
    users_on_plan(project, "business", [6] * 5)

    row = plan_named(project, "business")

    assert 6 * gpt4o_call_cost() / Decimal("0.10") < 999
    assert (row.status, row.recommended_price_usd, row.monthly_gain_usd) == ("ok", None, None)
    assert (row.unprofitable_users, row.loss_usd) == (0, 0)


@pytest.mark.parametrize(
    ("calls_per_user", "status"),
    [
        ([10] * 4, "insufficient_data"),
        ([6] * 5, "raise_price"),
        ([6, 6, 6, 6, 5], "insufficient_data"),
    ],
    ids=["4-users", "5-users-30-calls", "5-users-29-calls"],
)
def test_needs_five_users_and_thirty_calls(calls_per_user: list[int], status: str) -> None:
    project = make_project()
    add_plan(project, "pro", "5.00")
    users_on_plan(project, "pro", calls_per_user)

    row = plan_named(project, "pro")

    assert row.users == len(calls_per_user)
    assert row.calls == sum(calls_per_user)
    assert row.status == status
    assert (row.recommended_price_usd is None) == (status == "insufficient_data")


def test_plans_without_users_and_plans_known_only_from_clients() -> None:
    project = make_project()
    add_plan(project, "free", "0")
    for number in range(1, 6):
        record_calls(
            project,
            6,
            at=AT,
            user_id=f"t{number}",
            plan="team",
            plan_revenue_usd="500.00",
            input_tokens=1_000,
            output_tokens=10,
        )

    rows = plan_pricing_recommendations(project, now=NOW)

    assert [(r.plan_name, r.price_usd, r.users, r.status) for r in rows] == [
        ("free", Decimal("0.00"), 0, "free"),  # a $0 plan: the free tier, no price advice
        ("team", Decimal("500.00"), 5, "ok"),
    ]
    assert rows[0].avg_cost_usd is None and rows[0].p90_cost_usd is None


def test_month_follows_the_project_timezone() -> None:
    project = make_project(timezone="America/New_York")
    add_plan(project, "pro", "1.00")
    for number in range(1, 6):
        # 03:00 UTC on Dec 1st is Nov 30th in New York; on Nov 1st it is Oct 31st.
        for at in (datetime(2026, 12, 1, 3, tzinfo=UTC), datetime(2026, 11, 1, 3, tzinfo=UTC)):
            record_calls(project, 6, at=at, user_id=f"u{number}", plan="pro")

    (row,) = plan_pricing_recommendations(project, now=datetime(2026, 12, 1, 4, tzinfo=UTC))

    assert (row.users, row.calls) == (5, 30)


def test_nearest_rank_percentile() -> None:
    values = [Decimal(n) for n in (5, 1, 4, 2, 3)]
    # ceil(0.9 * 5) = 5: the largest of five; ceil(0.5 * 5) = 3: the median.
    assert percentile_nearest_rank(values, Decimal("0.9")) == 5
    assert percentile_nearest_rank(values, Decimal("0.5")) == 3
    with pytest.raises(ValueError, match="no values"):
        percentile_nearest_rank([], Decimal("0.9"))


def test_payload_is_camel_case() -> None:
    project = make_project()
    add_plan(project, "pro", "20.00")
    users_on_plan(project, "pro", list(range(1, 11)))
    row = plan_named(project, "pro")

    payload = pricing_recommendations_payload(project, now=NOW)

    assert payload == {
        "projectId": str(project.pk),
        "month": "2026-11",
        "targetAiCostShare": 0.3,
        "plans": [
            {
                "planName": "pro",
                "priceUsd": 20.0,
                "users": 10,
                "calls": 55,
                "avgCostUsd": float(round(row.avg_cost_usd, 6)),
                "p90CostUsd": float(round(row.p90_cost_usd, 6)),
                "unprofitableUsers": 3,
                "lossUsd": float(round(row.loss_usd, 2)),
                "recommendedPriceUsd": float(row.recommended_price_usd),
                "monthlyGainUsd": float(row.monthly_gain_usd),
                "status": "raise_price",
                "pricedPer": ["users"],
            }
        ],
    }


def test_reads_only_the_rollups() -> None:
    project = make_project()
    add_plan(project, "pro", "20.00")
    users_on_plan(project, "pro", [3] * 6)
    events_table = UsageEvent._meta.db_table

    with CaptureQueriesContext(connection) as queries:
        pricing_recommendations_payload(project, now=NOW)
        model_recommendations_payload(project, now=NOW)

    assert len(queries) <= 4
    assert not [q["sql"] for q in queries if events_table in q["sql"]]


def test_a_target_share_of_zero_is_refused() -> None:
    project = make_project(target_ai_cost_share=Decimal("0"))
    add_plan(project, "pro", "20.00")
    users_on_plan(project, "pro", [6] * 5)

    with pytest.raises(ValueError, match="target AI cost share must be above 0"):
        plan_pricing_recommendations(project, now=NOW)


def test_a_free_plan_is_a_cost_line_never_a_price_to_raise() -> None:
    project = make_project()
    add_plan(project, "free", "0")
    for number in range(1, 8):
        record_calls(project, 6, at=AT, user_id=f"f{number}", plan="free", input_tokens=50_000)

    [free] = plan_pricing_recommendations(project, now=NOW)

    assert (free.status, free.recommended_price_usd, free.monthly_gain_usd) == ("free", None, None)
    assert (free.users, free.unprofitable_users, free.loss_usd) == (7, 0, Decimal(0))
    assert free.total_cost_usd > 0
