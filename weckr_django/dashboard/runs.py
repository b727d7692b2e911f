"""Cost per agent run / crew kickoff, read from ``UsageEvent`` through its
(project, run_id) index and bounded to one month; callers paginate.

The call a loop guard refuses has no row (the guard raises before the provider is
called); the integrations report the stop itself, which the Django backend keeps as
a "run stopped" alert. A run is marked *stopped* when such an alert names it (or one
of its rows carries a loop-error type), and *ended in error* when its last row failed.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.models import Count, DateTimeField, F, Func, Max, Min, Q, QuerySet, Sum
from django.db.models.sql.compiler import SQLCompiler

if TYPE_CHECKING:
    from django.db.models.sql.compiler import _AsSqlType

from weckr_django.models import AlertLog, Project, UsageEvent
from weckr_django.periods import month_bounds

LOOP_ERROR_TYPES = ("WeckrLoopError", "CrewLoopError")


class _NotIndexed(Func):
    """The column as is; on SQLite written ``+column`` so the planner does not pick
    the (project, timestamp) index over a whole month when (project, run_id) reaches
    the few rows that belong to runs."""

    template = "%(expressions)s"

    def as_sqlite(
        self, compiler: SQLCompiler, connection: BaseDatabaseWrapper, **extra_context: Any
    ) -> _AsSqlType:
        return self.as_sql(compiler, connection, template="+%(expressions)s", **extra_context)


@dataclass(frozen=True, slots=True)
class AgentRun:
    run_id: str
    source: str
    agents: list[str]
    user_id: str | None
    calls: int
    tokens: int
    cost_usd: Decimal
    started: datetime
    ended: datetime
    error_calls: int
    loop_stopped: bool
    last_status: str | None

    @property
    def ended_in_error(self) -> bool:
        return self.last_status == UsageEvent.Status.ERROR


def run_rows(project: Project, month: date) -> QuerySet[UsageEvent, dict[str, Any]]:
    """One dict per run with events in ``month``, newest first: ready to paginate."""
    start, end = month_bounds(project, month)
    rows: QuerySet[UsageEvent, dict[str, Any]] = (
        UsageEvent.objects.alias(at=_NotIndexed("timestamp", output_field=DateTimeField()))
        .filter(project=project, run_id__isnull=False, at__gte=start, at__lt=end)
        .values("run_id")
        .annotate(
            source_name=Max("source"),
            user=Max("user_id"),
            call_count=Count("id"),
            token_count=Sum(F("input_tokens") + F("cache_creation_tokens") + F("output_tokens")),
            cost=Sum("cost_usd"),
            started=Min("timestamp"),
            ended=Max("timestamp"),
            errors=Count("id", filter=Q(status=UsageEvent.Status.ERROR)),
            loop_errors=Count("id", filter=Q(error_type__in=LOOP_ERROR_TYPES)),
        )
        .order_by("-started", "run_id")
    )
    return rows


def describe_runs(project: Project, rows: list[dict[str, Any]]) -> list[AgentRun]:
    """Add agent names and the last call's status to one page of ``run_rows``: two queries."""
    run_ids = [row["run_id"] for row in rows]
    agents: dict[str, set[str]] = {run_id: set() for run_id in run_ids}
    for run_id, agent in (
        UsageEvent.objects.filter(project=project, run_id__in=run_ids, agent__isnull=False)
        .values_list("run_id", "agent")
        .distinct()
        .order_by()
    ):
        agents[run_id].add(agent)
    last_status: dict[str, str] = {}
    if rows:
        at_end = Q()
        for row in rows:
            at_end |= Q(run_id=row["run_id"], timestamp=row["ended"])
        for run_id, status in (
            UsageEvent.objects.filter(project=project)
            .filter(at_end)
            .values_list("run_id", "status")
            .order_by()
        ):
            # Calls ending at the same instant: a failure among them counts.
            if last_status.get(run_id) != UsageEvent.Status.ERROR:
                last_status[run_id] = status
    stopped = set(
        AlertLog.objects.filter(
            project=project, kind=AlertLog.Kind.RUN_STOPPED, details__run_id__in=run_ids
        ).values_list("details__run_id", flat=True)
    )
    return [
        AgentRun(
            run_id=row["run_id"],
            source=row["source_name"] or "",
            agents=sorted(agents[row["run_id"]]),
            user_id=row["user"],
            calls=row["call_count"],
            tokens=row["token_count"] or 0,
            cost_usd=row["cost"] or Decimal(0),
            started=row["started"],
            ended=row["ended"],
            error_calls=row["errors"],
            loop_stopped=row["loop_errors"] > 0 or row["run_id"] in stopped,
            last_status=last_status.get(row["run_id"]),
        )
        for row in rows
    ]
