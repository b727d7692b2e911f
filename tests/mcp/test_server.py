"""The MCP tools, called through the SDK's in-memory client session.

The client runs under ``async_to_sync`` from a plain test, so the tools' ``sync_to_async``
database calls come back to the test's thread and see its (rolled back) transaction.
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from django.db.models import Count, Sum
from django.test import override_settings
from django.utils import timezone
from mcp.shared.memory import create_connected_server_and_client_session
from mcp.types import CallToolResult, TextContent

from tests.recommendations.usage import add_plan, make_project, record_calls
from weckr_django.mcp_server import build_server
from weckr_django.models import Plan, Project, UsageEvent
from weckr_django.recommendations import (
    model_recommendations_payload,
    pricing_recommendations_payload,
)

pytestmark = pytest.mark.django_db

TOOLS = {
    "get_overview",
    "get_users",
    "get_accounts",
    "get_feature_breakdown",
    "get_model_recommendations",
    "get_pricing_recommendations",
    "get_spending_cap_url",
}


def call(project: Project, name: str, **arguments: Any) -> CallToolResult:
    async def session() -> CallToolResult:
        async with create_connected_server_and_client_session(build_server(project)) as client:
            return await client.call_tool(name, arguments)

    return async_to_sync(session)()


def structured(project: Project, name: str, **arguments: Any) -> dict[str, Any]:
    result = call(project, name, **arguments)
    assert not result.isError, result.content
    assert result.structuredContent is not None
    # The text content carries the same JSON for clients that ignore structured output.
    (text,) = result.content
    assert isinstance(text, TextContent)
    assert json.loads(text.text) == result.structuredContent
    return result.structuredContent


@pytest.fixture
def month() -> Project:
    """A small month: four users on two plans and some anonymous calls, all made now."""
    project = make_project()
    add_plan(project, "free", "0")
    pro = add_plan(project, "pro", "20.00")
    pro.monthly_cap_usd = Decimal("10")
    pro.save()
    now = timezone.now()
    big: dict[str, Any] = {"input_tokens": 1_000_000, "output_tokens": 100}
    record_calls(project, 10, at=now, user_id="alice", plan="pro", **big)
    record_calls(project, 2, at=now, user_id="bob", plan="pro", **big)
    record_calls(project, 6, at=now, user_id="dave", plan="pro", **big)
    record_calls(project, 1, at=now, user_id="carol", plan="free", feature="chat")
    record_calls(project, 3, at=now, feature="landing", model="gpt-4o-mini")
    return project


def events(project: Project):
    return UsageEvent.objects.filter(project=project)


def test_lists_the_seven_read_only_tools(month: Project) -> None:
    async def tools():
        async with create_connected_server_and_client_session(build_server(month)) as client:
            return (await client.list_tools()).tools

    listed = {tool.name: tool for tool in async_to_sync(tools)()}

    assert set(listed) == TOOLS
    assert all(tool.annotations and tool.annotations.readOnlyHint for tool in listed.values())
    users_schema = listed["get_users"].inputSchema["properties"]
    assert users_schema["filter"]["enum"] == ["all", "unprofitable", "watch", "profitable"]
    cap_schema = listed["get_spending_cap_url"].inputSchema
    assert set(cap_schema["required"]) == {"plan", "limit_usd"}


def test_overview_matches_the_events(month: Project) -> None:
    overview = structured(month, "get_overview")

    totals = events(month).aggregate(cost=Sum("cost_usd"), calls=Count("id"))
    # Revenue: alice, bob and dave pay 20 each on pro; carol is on the free plan.
    revenue = 3 * 20
    assert overview["calls"] == totals["calls"] == 22
    assert overview["costUsd"] == pytest.approx(float(totals["cost"]), abs=1e-6)
    assert overview["revenueUsd"] == revenue
    assert overview["marginUsd"] == pytest.approx(revenue - float(totals["cost"]), abs=1e-6)
    assert overview["topCostFeature"] == "summary"
    # alice (10 large calls) costs more than her 20; carol pays 0: the free tier.
    assert overview["unprofitableUsers"] == 1
    assert overview["freeUsers"] == 1
    assert overview["month"] == timezone.now().strftime("%Y-%m")


def test_users_worst_margin_first_with_filter_and_limit(month: Project) -> None:
    everyone = structured(month, "get_users")
    unprofitable = structured(month, "get_users", filter="unprofitable", limit=1)

    cost_by_user = {
        row["user_id"] or "(anonymous)": float(row["cost"])
        for row in events(month).values("user_id").annotate(cost=Sum("cost_usd"))
    }
    revenue = {"alice": 20, "bob": 20, "dave": 20, "carol": 0, "(anonymous)": 0}
    margins = {user: revenue[user] - cost for user, cost in cost_by_user.items()}
    assert [row["userId"] for row in everyone["users"]] == sorted(margins, key=margins.__getitem__)
    for row in everyone["users"]:
        assert row["costUsd"] == pytest.approx(cost_by_user[row["userId"]], abs=1e-6)
        assert row["marginUsd"] == pytest.approx(margins[row["userId"]], abs=1e-6)
    statuses = {row["userId"]: row["status"] for row in everyone["users"]}
    # dave's cost is at least 70% of his price: on watch; bob's is a quarter of it.
    assert (statuses["alice"], statuses["dave"], statuses["bob"]) == (
        "unprofitable",
        "watch",
        "profitable",
    )
    assert statuses["carol"] == "free"
    assert unprofitable["matching"] == 1
    assert [row["userId"] for row in unprofitable["users"]] == ["alice"]


def test_feature_breakdown_matches_the_events(month: Project) -> None:
    breakdown = structured(month, "get_feature_breakdown")

    rows = events(month).values("feature").annotate(cost=Sum("cost_usd"), calls=Count("id"))
    expected = {row["feature"]: (float(row["cost"]), row["calls"]) for row in rows}
    total = sum(cost for cost, _ in expected.values())
    assert [item["feature"] for item in breakdown["features"]] == ["summary", "chat", "landing"]
    for item in breakdown["features"]:
        cost, calls = expected[item["feature"]]
        assert item["calls"] == calls
        assert item["costUsd"] == pytest.approx(cost, abs=1e-6)
        assert item["sharePercent"] == pytest.approx(100 * cost / total, abs=0.01)


def test_recommendations_are_the_api_payloads(month: Project) -> None:
    models = structured(month, "get_model_recommendations")
    pricing = structured(month, "get_pricing_recommendations")

    assert models == model_recommendations_payload(month)
    (swap,) = models["recommendations"]
    assert (swap["feature"], swap["currentModel"], swap["calls"]) == ("summary", "gpt-4o", 18)
    assert pricing == pricing_recommendations_payload(month)
    users_per_plan = {plan["planName"]: plan["users"] for plan in pricing["plans"]}
    assert users_per_plan == {"free": 1, "pro": 3}


def test_spending_cap_url_changes_nothing(month: Project) -> None:
    result = structured(
        month, "get_spending_cap_url", plan="pro", limit_usd=12.5, action="downgrade"
    )

    assert result["url"] == (
        "http://localhost:8000/weckr/settings/?plan=pro&cap=12.50&action=downgrade"
    )
    assert (result["currentCapUsd"], result["currentAction"]) == (10.0, "block")
    assert (result["proposedCapUsd"], result["changed"]) == (12.5, False)
    plan = Plan.objects.get(project=month, name="pro")
    assert (plan.monthly_cap_usd, plan.cap_action) == (Decimal("10"), "block")


@override_settings(WECKR={"SITE_URL": "https://app.example.com/"})
def test_spending_cap_url_uses_the_site_url(month: Project) -> None:
    result = structured(month, "get_spending_cap_url", plan="free", limit_usd=0)

    assert (
        result["url"] == "https://app.example.com/weckr/settings/?plan=free&cap=0.00&action=block"
    )


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"plan": "gold", "limit_usd": 5}, "No plan named 'gold'. Plans: free, pro."),
        ({"plan": "pro", "limit_usd": -1}, "limit_usd must be zero or more"),
    ],
)
def test_spending_cap_url_rejects_bad_input(
    month: Project, arguments: dict[str, Any], message: str
) -> None:
    result = call(month, "get_spending_cap_url", **arguments)

    assert result.isError
    (text,) = result.content
    assert isinstance(text, TextContent)
    assert message in text.text


def test_bad_limit_is_a_tool_error(month: Project) -> None:
    result = call(month, "get_users", limit=0)

    assert result.isError
    assert "limit must be between 1 and 500" in result.content[0].text  # type: ignore[union-attr]


def test_tools_read_the_project_afresh(month: Project) -> None:
    server_project = Project.objects.get(pk=month.pk)
    Project.objects.filter(pk=month.pk).update(target_ai_cost_share=Decimal("0.5"))

    pricing = structured(server_project, "get_pricing_recommendations")

    assert pricing["targetAiCostShare"] == 0.5
