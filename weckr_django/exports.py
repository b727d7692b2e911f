"""A month's users, accounts, features, models and agent runs as tables: the
dashboard's CSV downloads and the API's JSON exports read the same rows.

Columns are named for a spreadsheet (``snake_case``, units in the name); money keeps
the rollups' precision as text in CSV and as numbers in JSON.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from typing import Any

from weckr_django import reports
from weckr_django.dashboard import runs
from weckr_django.models import Project
from weckr_django.periods import BadMonth, parse_month

__all__ = ["TABLES", "BadMonth", "Table", "as_csv", "as_json", "parse_month"]

Row = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Table:
    """One kind of export: its columns, and its rows for a month."""

    columns: tuple[str, ...]
    rows: Callable[[Project, date], Iterator[Row]]


def _users(project: Project, month: date) -> Iterator[Row]:
    for row in reports.user_margins(project, month):
        yield {
            "user_id": None if row.is_anonymous else row.user_key,
            "plan": row.plan_name,
            "status": row.status,
            "revenue_usd": row.revenue_usd,
            "ai_cost_usd": row.cost_usd,
            "margin_usd": None if row.paid_by_account else row.margin_usd,
            "calls": row.calls,
            "accounts": " ".join(row.accounts),
            "account_cost_share_percent": row.account_share_percent,
        }


def _accounts(project: Project, month: date) -> Iterator[Row]:
    for row in reports.account_margins(project, month):
        yield {
            "account_id": row.account_key,
            "plan": row.plan_name,
            "billing": row.billing,
            "seats": row.seats,
            "active_users": row.active_users,
            "revenue_usd": row.revenue_usd,
            "ai_cost_usd": row.cost_usd,
            "margin_usd": row.margin_usd,
            "calls": row.calls,
            "status": row.status,
        }


def _features(project: Project, month: date) -> Iterator[Row]:
    for row in reports.feature_breakdown(project, month):
        yield {
            "feature": row.feature,
            "ai_cost_usd": row.cost_usd,
            "calls": row.calls,
            "average_cost_usd": row.average_cost_usd,
            "share_percent": row.share_percent,
        }


def _models(project: Project, month: date) -> Iterator[Row]:
    for row in reports.models_of(reports.feature_model_usage(project, month)):
        yield {
            "model": row.model,
            "provider": row.provider,
            "ai_cost_usd": row.cost_usd,
            "calls": row.calls,
            "unpriced_calls": row.unpriced_calls,
            "average_cost_usd": row.average_cost_usd,
            "share_percent": row.share_percent,
        }


def _runs(project: Project, month: date, page: int = 500) -> Iterator[Row]:
    rows = runs.run_rows(project, month)
    for start in range(0, rows.count(), page):
        for run in runs.describe_runs(project, list(rows[start : start + page])):
            yield {
                "run_id": run.run_id,
                "source": run.source,
                "agents": " ".join(run.agents),
                "user_id": run.user_id,
                "started_at": run.started.isoformat(),
                "ended_at": run.ended.isoformat(),
                "calls": run.calls,
                "tokens": run.tokens,
                "ai_cost_usd": run.cost_usd,
                "failed_calls": run.error_calls,
                "outcome": "stopped_by_loop_guard"
                if run.loop_stopped
                else "ended_in_error"
                if run.ended_in_error
                else "ok",
            }


TABLES: dict[str, Table] = {
    "users": Table(
        (
            "user_id",
            "plan",
            "status",
            "revenue_usd",
            "ai_cost_usd",
            "margin_usd",
            "calls",
            "accounts",
            "account_cost_share_percent",
        ),
        _users,
    ),
    "accounts": Table(
        (
            "account_id",
            "plan",
            "billing",
            "seats",
            "active_users",
            "revenue_usd",
            "ai_cost_usd",
            "margin_usd",
            "calls",
            "status",
        ),
        _accounts,
    ),
    "features": Table(
        ("feature", "ai_cost_usd", "calls", "average_cost_usd", "share_percent"), _features
    ),
    "models": Table(
        (
            "model",
            "provider",
            "ai_cost_usd",
            "calls",
            "unpriced_calls",
            "average_cost_usd",
            "share_percent",
        ),
        _models,
    ),
    "runs": Table(
        (
            "run_id",
            "source",
            "agents",
            "user_id",
            "started_at",
            "ended_at",
            "calls",
            "tokens",
            "ai_cost_usd",
            "failed_calls",
            "outcome",
        ),
        _runs,
    ),
}


def as_json(value: Any) -> Any:
    """A cell for JSON: money as a number."""
    return float(value) if isinstance(value, Decimal) else value


def as_csv(table: Table, rows: Iterator[Row]) -> Iterator[str]:
    """The table as CSV text, line by line (header first).
    Cells that a spreadsheet would run as a formula are quoted with a leading '."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)

    def line(values: list[Any]) -> str:
        buffer.seek(0)
        buffer.truncate()
        writer.writerow(values)
        return buffer.getvalue()

    yield line(list(table.columns))
    for row in rows:
        yield line([_cell(row[column]) for column in table.columns])


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value  # no formula from a user id or feature name
    return value
