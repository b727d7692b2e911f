"""A Model Context Protocol server over one project's numbers.

Every tool is read-only: ``get_spending_cap_url`` returns the settings page where a
person can apply a cap, and changes nothing. ``manage.py weckr_mcp`` serves it over
stdio; tests drive it through the SDK's in-memory client.

The tools are async (FastMCP would otherwise run them on the event loop, where the
ORM refuses to work) and reach the database through ``sync_to_async``.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any, Literal, ParamSpec, TypeVar
from urllib.parse import urlencode

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import close_old_connections, connection
from mcp.server.fastmcp import FastMCP
from mcp.types import ToolAnnotations

from weckr_django import reports
from weckr_django.models import Plan, Project
from weckr_django.recommendations import (
    model_recommendations_payload,
    money,
    pricing_recommendations_payload,
)

UserFilter = Literal["all", "unprofitable", "watch", "profitable"]
CapAction = Literal["block", "downgrade"]

DEFAULT_SITE_URL = "http://localhost:8000"
SETTINGS_PATH = "/weckr/settings/"
MAX_USERS = 500

_READ_ONLY = ToolAnnotations(readOnlyHint=True, destructiveHint=False, openWorldHint=False)
_P = ParamSpec("_P")
_R = TypeVar("_R")

INSTRUCTIONS = (
    "Weckr reports what a Django SaaS spends on LLM calls, per user, feature, model and "
    "plan, for the current calendar month in the project's timezone, against what each "
    "user pays. Money is in US dollars. The tools only read; get_spending_cap_url "
    "returns a link where a person can review and save a cap."
)


def site_url() -> str:
    """``WECKR["SITE_URL"]``, the base URL the dashboard is served under."""
    configured = (getattr(settings, "WECKR", None) or {}).get("SITE_URL")
    return str(configured or DEFAULT_SITE_URL).rstrip("/")


def _in_db_thread(function: Callable[_P, _R]) -> Callable[_P, Any]:
    """Run ``function`` through ``sync_to_async``, with connection upkeep like a request's."""

    def call(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        # Inside a transaction (a test case) the connection is not ours to recycle.
        upkeep = not connection.in_atomic_block
        if upkeep:
            close_old_connections()
        try:
            return function(*args, **kwargs)
        finally:
            if upkeep:
                close_old_connections()

    return sync_to_async(call, thread_sensitive=True)


def _project(project_id: uuid.UUID) -> Project:
    return Project.objects.get(pk=project_id)


def overview(project: Project) -> dict[str, Any]:
    summary = reports.month_summary(project)
    return {
        "project": project.name,
        "projectId": str(project.pk),
        "month": summary.month.strftime("%Y-%m"),
        "timezone": project.timezone,
        "costUsd": money(summary.cost_usd, Decimal("0.000001")),
        "revenueUsd": money(summary.revenue_usd),
        "marginUsd": money(summary.margin_usd, Decimal("0.000001")),
        "calls": summary.calls,
        "unprofitableUsers": summary.unprofitable_users,
        "unprofitableAccounts": summary.unprofitable_accounts,
        "combinedLossUsd": money(summary.combined_loss_usd, Decimal("0.000001")),
        "freeUsers": summary.free_users,
        "freeTierCostUsd": money(summary.free_cost_usd, Decimal("0.000001")),
        "topCostFeature": summary.top_cost_feature,
    }


def users(project: Project, user_filter: UserFilter, limit: int) -> dict[str, Any]:
    if not 1 <= limit <= MAX_USERS:
        raise ValueError(f"limit must be between 1 and {MAX_USERS}, not {limit}.")
    rows = [
        row
        for row in reports.user_margins(project)
        if user_filter == "all" or (not row.is_anonymous and row.status == user_filter)
    ]
    return {
        "filter": user_filter,
        "matching": len(rows),
        "users": [
            {
                "userId": row.label,
                "anonymous": row.is_anonymous,
                "planName": row.plan_name,
                "costUsd": money(row.cost_usd, Decimal("0.000001")),
                "revenueUsd": money(row.revenue_usd),
                "marginUsd": None
                if row.paid_by_account
                else money(row.margin_usd, Decimal("0.000001")),
                "calls": row.calls,
                "status": row.status,
                "accountIds": list(row.accounts),
                "accountCostSharePercent": money(row.account_share_percent),
            }
            for row in rows[:limit]
        ],
    }


def accounts(project: Project, account_filter: UserFilter, limit: int) -> dict[str, Any]:
    if not 1 <= limit <= MAX_USERS:
        raise ValueError(f"limit must be between 1 and {MAX_USERS}, not {limit}.")
    rows = [
        row
        for row in reports.account_margins(project)
        if account_filter == "all" or row.status == account_filter
    ]
    return {
        "filter": account_filter,
        "matching": len(rows),
        "accounts": [
            {
                "accountId": row.account_key,
                "planName": row.plan_name,
                "billing": row.billing,
                "seats": row.seats,
                "activeUsers": row.active_users,
                "costUsd": money(row.cost_usd, Decimal("0.000001")),
                "revenueUsd": money(row.revenue_usd),
                "marginUsd": money(row.margin_usd, Decimal("0.000001")),
                "calls": row.calls,
                "status": row.status,
                "users": [
                    {
                        "userId": user.label,
                        "costUsd": money(user.cost_usd, Decimal("0.000001")),
                        "costSharePercent": money(user.share_percent),
                    }
                    for user in reports.account_users(project, row.account_key)[:10]
                ],
            }
            for row in rows[:limit]
        ],
    }


def feature_breakdown(project: Project) -> dict[str, Any]:
    return {
        "features": [
            {
                "feature": item.feature,
                "costUsd": money(item.cost_usd, Decimal("0.000001")),
                "calls": item.calls,
                "avgCostUsd": money(item.average_cost_usd, Decimal("0.000001")),
                "sharePercent": money(item.share_percent),
            }
            for item in reports.feature_breakdown(project)
        ]
    }


def spending_cap_url(
    project: Project, plan_name: str, limit_usd: float, action: CapAction
) -> dict[str, Any]:
    plan = Plan.objects.filter(project=project, name=plan_name).first()
    if plan is None:
        known = ", ".join(Plan.objects.filter(project=project).values_list("name", flat=True))
        raise ValueError(f"No plan named {plan_name!r}. Plans: {known or 'none yet'}.")
    try:
        cap = Decimal(str(limit_usd)).quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)
    except InvalidOperation:
        raise ValueError(f"limit_usd must be a number, not {limit_usd!r}.") from None
    if not cap.is_finite() or cap < 0:
        raise ValueError(f"limit_usd must be zero or more, not {limit_usd!r}.")
    query = urlencode({"plan": plan.name, "cap": str(cap), "action": action})
    return {
        "url": f"{site_url()}{SETTINGS_PATH}?{query}",
        "plan": plan.name,
        "currentCapUsd": money(plan.monthly_cap_usd),
        "currentAction": plan.cap_action,
        "proposedCapUsd": float(cap),
        "proposedAction": action,
        "changed": False,
        "note": "Nothing was changed. Open the URL, review the cap and save it there.",
    }


def build_server(project: Project) -> FastMCP:
    """A FastMCP server whose tools answer for ``project`` (re-read on every call)."""
    project_id = project.pk
    server = FastMCP(name="weckr", instructions=INSTRUCTIONS)

    @_in_db_thread
    def run(function: Callable[..., dict[str, Any]], *args: Any) -> dict[str, Any]:
        return function(_project(project_id), *args)

    @server.tool(annotations=_READ_ONLY)
    async def get_overview() -> dict[str, Any]:
        """This month's AI cost, revenue, margin, calls and unprofitable users."""
        result: dict[str, Any] = await run(overview)
        return result

    @server.tool(annotations=_READ_ONLY)
    async def get_users(filter: UserFilter = "all", limit: int = 20) -> dict[str, Any]:
        """Users this month, worst margin first. ``filter`` keeps one margin status
        (calls made with no user appear only under "all"); ``limit`` is 1 to 500.
        Users of an account (B2B) have no margin of their own: their status is
        "paid_by_account" with their share of the account's cost; see get_accounts."""
        result: dict[str, Any] = await run(users, filter, limit)
        return result

    @server.tool(annotations=_READ_ONLY)
    async def get_accounts(filter: UserFilter = "all", limit: int = 20) -> dict[str, Any]:
        """Accounts (the customers who pay, B2B) this month, worst margin first: plan,
        billing and seats, revenue, AI cost of all their users, margin, status, and
        their costliest users with each one's share. ``filter`` keeps one margin
        status; ``limit`` is 1 to 500."""
        result: dict[str, Any] = await run(accounts, filter, limit)
        return result

    @server.tool(annotations=_READ_ONLY)
    async def get_feature_breakdown() -> dict[str, Any]:
        """This month's cost, calls and share of the total per feature, costliest first."""
        result: dict[str, Any] = await run(feature_breakdown)
        return result

    @server.tool(annotations=_READ_ONLY)
    async def get_model_recommendations() -> dict[str, Any]:
        """Cheaper same-provider models per feature, with this month's cost, the cost
        projected on the cheaper model and the saving over a full month."""
        result: dict[str, Any] = await run(model_recommendations_payload)
        return result

    @server.tool(annotations=_READ_ONLY)
    async def get_pricing_recommendations() -> dict[str, Any]:
        """Per plan: users, average and p90 AI cost per user, unprofitable users and their
        loss, and a price that keeps the p90 user's AI cost under the target share."""
        result: dict[str, Any] = await run(pricing_recommendations_payload)
        return result

    @server.tool(annotations=_READ_ONLY)
    async def get_spending_cap_url(
        plan: str, limit_usd: float, action: CapAction = "block"
    ) -> dict[str, Any]:
        """The settings page URL that pre-fills a monthly AI cap per user for ``plan``
        and what happens at the cap (block the call or use a cheaper model). Changes
        nothing: a person opens the URL and saves."""
        result: dict[str, Any] = await run(spending_cap_url, plan, limit_usd, action)
        return result

    return server
