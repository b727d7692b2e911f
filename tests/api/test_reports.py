from __future__ import annotations

import calendar
from decimal import Decimal
from typing import Any

import pytest
from django.utils import timezone

from tests.api.conftest import Api, add_plan, event, expected_cost
from weckr_django.models import Project
from weckr_django.periods import local_day


def send(api: Api, *events: dict[str, Any]) -> Decimal:
    body = api.post("log/batch", {"events": list(events)}).json()
    assert body["rejected"] == []
    return sum((expected_cost(item) for item in events), Decimal(0))


def traffic(api: Api) -> dict[str, Any]:
    """Users in every state; returns their costs and the revenue each should get."""
    project = api.project
    add_plan(project, "free", "0")
    add_plan(project, "pro", "29")
    watch_events = [event(userId="watcher", planName="micro", inputTokens=200_000)]
    watch_cost = sum(expected_cost(item) for item in watch_events)
    # Priced so that the cost is about 80% of the revenue: "watch".
    micro = add_plan(project, "micro", str((watch_cost / Decimal("0.8")).quantize(Decimal("0.01"))))
    costs = {
        # The client reports 10/month but the plan table says 29: the table wins, once.
        "payer": send(api, *[event(userId="payer", planRevenueUsd=10) for _ in range(3)]),
        "freeloader": send(
            api,
            event(userId="freeloader", planName="free", planRevenueUsd=0, feature="agent"),
            event(
                userId="freeloader",
                planName="free",
                model="o3",
                reasoningTokens=200,
                outputTokens=900,
                feature="agent",
            ),
        ),
        "watcher": send(api, *watch_events),
        # Not in the plan table: the price the client reported is used.
        "legacy": send(api, event(userId="legacy", planName="legacy", planRevenueUsd=15)),
        "(anonymous)": send(api, event(userId=None, planName=None, planRevenueUsd=None)),
    }
    revenue = {
        "payer": Decimal(29),
        "freeloader": Decimal(0),
        "watcher": micro.monthly_price_usd,
        "legacy": Decimal(15),
        "(anonymous)": Decimal(0),
    }
    return {"costs": costs, "revenue": revenue}


def test_users_have_monthly_margins_worst_first(api: Api) -> None:
    data = traffic(api)

    response = api.get(f"users/{api.project.pk}")

    assert response.status_code == 200
    users = {row["userId"]: row for row in response.json()["users"]}
    assert set(users) == set(data["costs"])
    for user_id, cost in data["costs"].items():
        row = users[user_id]
        assert row["totalCostUsd"] == pytest.approx(float(cost))
        assert row["planRevenueUsd"] == pytest.approx(float(data["revenue"][user_id]))
        assert row["marginUsd"] == pytest.approx(float(data["revenue"][user_id] - cost))
    assert users["payer"]["requestCount"] == 3
    assert users["payer"]["status"] == "profitable"
    assert users["watcher"]["status"] == "watch"
    # Pays nothing: a cost of the free tier, not an unprofitable customer.
    assert users["freeloader"]["status"] == "free"
    assert {row["accountIds"] == [] for row in users.values()} == {True}
    margins = [row["marginUsd"] for row in response.json()["users"]]
    assert margins == sorted(margins)


def test_stats_for_the_current_month(api: Api) -> None:
    data = traffic(api)
    costs, revenue = data["costs"], data["revenue"]

    response = api.get(f"stats/{api.project.pk}")

    assert response.status_code == 200
    stats = response.json()
    total_cost = sum(costs.values())
    total_revenue = sum(revenue.values())
    assert stats["totalCostUsd"] == pytest.approx(float(total_cost))
    assert stats["totalRevenueUsd"] == pytest.approx(float(total_revenue))
    assert stats["totalMarginUsd"] == pytest.approx(float(total_revenue - total_cost))
    assert stats["requestCount"] == 8
    # The anonymous row loses money too, but it is not a user; the freeloader on the
    # $0 plan is the free tier's cost, not a customer losing money.
    assert stats["unprofitableUsers"] == 0
    assert stats["combinedLossUsd"] == 0
    assert stats["freeUsers"] == 1
    assert stats["freeTierCostUsd"] == pytest.approx(float(costs["freeloader"]))

    features = stats["featureBreakdown"]
    assert [item["feature"] for item in features] == ["summary", "agent"] or [
        item["feature"] for item in features
    ] == ["agent", "summary"]
    assert stats["topCostFeature"] == features[0]["feature"]
    assert sum(item["pctOfTotal"] for item in features) == pytest.approx(100, abs=0.02)
    agent = next(item for item in features if item["feature"] == "agent")
    assert agent["totalCostUsd"] == pytest.approx(float(costs["freeloader"]))
    assert agent["requestCount"] == 2
    assert agent["avgCostUsd"] == pytest.approx(float(costs["freeloader"] / 2))

    days = stats["last30Days"]
    today = local_day(api.project, timezone.now())
    assert len(days) == 30
    assert days[-1]["date"] == today.isoformat()
    assert days[-1]["cost"] == pytest.approx(float(total_cost))
    days_in_month = calendar.monthrange(today.year, today.month)[1]
    assert days[-1]["revenue"] == pytest.approx(float(total_revenue) / days_in_month)
    assert all(day["cost"] == 0 for day in days[:-1])


def test_an_empty_project_has_zero_figures(api: Api) -> None:
    stats = api.get(f"stats/{api.project.pk}").json()

    assert stats["totalCostUsd"] == 0
    assert stats["requestCount"] == 0
    assert stats["topCostFeature"] is None
    assert stats["featureBreakdown"] == []
    assert [day["revenue"] for day in stats["last30Days"]] == [0] * 30
    assert api.get(f"users/{api.project.pk}").json() == {"users": []}


def test_months_follow_the_project_timezone(api: Api) -> None:
    Project.objects.filter(pk=api.project.pk).update(timezone="Pacific/Kiritimati")
    api.project.refresh_from_db()
    send(api, event(userId="tz"))

    days = api.get(f"stats/{api.project.pk}").json()["last30Days"]

    assert days[-1]["date"] == local_day(api.project, timezone.now()).isoformat()
    assert days[-1]["cost"] > 0
