"""Cost per agent run / crew kickoff in one month, read from the ``AgentRunUsage``
rollup; the details of one page of runs from ``UsageEvent`` through its (project,
run_id) index. Callers paginate.

The call a loop guard refuses has no row (the guard raises before the provider is
called); the integrations report the stop itself, which the Django backend keeps as
a "run stopped" alert. A run is marked *stopped* when such an alert names it (or one
of its rows carries a loop-error type), and *ended in error* when its last row failed.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal

from django.db.models import Q, QuerySet

from weckr_django.models import ANONYMOUS_KEY, AgentRunUsage, AlertLog, Project, UsageEvent

LOOP_ERROR_TYPES = ("WeckrLoopError", "CrewLoopError")


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


def run_rows(project: Project, month: date) -> QuerySet[AgentRunUsage]:
    """The runs with calls in ``month``, newest first: ready to paginate."""
    return AgentRunUsage.objects.filter(project=project, month=month).order_by(
        "-started_at", "run_id"
    )


def describe_runs(project: Project, rows: list[AgentRunUsage]) -> list[AgentRun]:
    """Add agent names, loop stops and the last call's status to one page of
    ``run_rows``: four queries."""
    run_ids = [row.run_id for row in rows]
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
            at_end |= Q(run_id=row.run_id, timestamp=row.ended_at)
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
    stopped.update(
        UsageEvent.objects.filter(
            project=project, run_id__in=run_ids, error_type__in=LOOP_ERROR_TYPES
        ).values_list("run_id", flat=True)
    )
    return [
        AgentRun(
            run_id=row.run_id,
            source=row.source,
            agents=sorted(agents[row.run_id]),
            user_id=None if row.user_key == ANONYMOUS_KEY else row.user_key,
            calls=row.calls,
            tokens=row.input_tokens + row.cache_creation_tokens + row.output_tokens,
            cost_usd=row.cost_usd,
            started=row.started_at,
            ended=row.ended_at,
            error_calls=row.error_calls,
            loop_stopped=row.run_id in stopped,
            last_status=last_status.get(row.run_id),
        )
        for row in rows
    ]
