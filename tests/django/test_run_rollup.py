"""The per-run rollup the Agents page reads: equal to the events it adds up, however
they arrive, and built for the events stored before it existed."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from django.db.models import Count, F, Max, Min, Q, Sum

from weckr_django import ingest
from weckr_django.ingest import ingest_records
from weckr_django.models import AgentRunUsage, Project, UsageEvent
from weckr_django.periods import month_bounds

from .helpers import make_project, make_record

# Midnight in New York (EDT) on 1 April: the project's March ends four hours into
# April in UTC, so a run around it spans two of the project's months.
NEW_YORK_MARCH_END = datetime(2026, 4, 1, 4, 0, tzinfo=UTC)


def run_records(run_id: str, start: datetime, calls: int, **fields: Any) -> list[Any]:
    return [
        make_record(
            f"{run_id}-{start:%H%M}-{step}",
            when=start + timedelta(minutes=step),
            run_id=run_id,
            output_tokens=100 + step,
            **fields,
        )
        for step in range(calls)
    ]


def runs_from_events(project: Project, month: date) -> dict[str, dict[str, Any]]:
    """What the Agents page showed before the rollup: the month's events grouped by run."""
    start, end = month_bounds(project, month)
    rows = (
        UsageEvent.objects.filter(
            project=project, run_id__isnull=False, timestamp__gte=start, timestamp__lt=end
        )
        .values("run_id")
        .annotate(
            user=Max("user_id"),
            source_name=Max("source"),
            n=Count("id"),
            errors=Count("id", filter=Q(status="error")),
            tokens=Sum(F("input_tokens") + F("output_tokens")),
            cost=Sum("cost_usd"),
            started=Min("timestamp"),
            ended=Max("timestamp"),
        )
    )
    return {row.pop("run_id"): row for row in rows}


def runs_from_rollup(project: Project, month: date) -> dict[str, dict[str, Any]]:
    return {
        run.run_id: {
            "user": run.user_key or None,
            "source_name": run.source,
            "n": run.calls,
            "errors": run.error_calls,
            "tokens": run.input_tokens + run.output_tokens,
            "cost": run.cost_usd,
            "started": run.started_at,
            "ended": run.ended_at,
        }
        for run in AgentRunUsage.objects.filter(project=project, month=month)
    }


@pytest.fixture(params=["upsert", "row by row"])
def upsert_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Both ways ingest updates rollups: one upsert statement, or the row-by-row
    fallback for a SQLite older than 3.35."""
    if request.param == "row by row":
        monkeypatch.setattr(ingest, "_supports_returning_upsert", lambda connection: False)
    return str(request.param)


@pytest.mark.django_db
def test_runs_add_up_across_batches_out_of_order_and_across_months(upsert_path: str) -> None:
    project = make_project(timezone="America/New_York")
    late = run_records("run-a", NEW_YORK_MARCH_END - timedelta(minutes=5), 10, user_id="bob")
    early = run_records("run-a", NEW_YORK_MARCH_END - timedelta(minutes=40), 3, user_id="alice")
    other = run_records("run-b", NEW_YORK_MARCH_END - timedelta(hours=2), 4, source="langchain")
    other[-1] = make_record(
        "run-b-failed",
        when=NEW_YORK_MARCH_END - timedelta(hours=1),
        run_id="run-b",
        source="crewai",
        status="error",
        error_type="TimeoutError",
    )
    plain = make_record("not-a-run", when=NEW_YORK_MARCH_END - timedelta(minutes=1))

    # The first and last calls of run-a first, the ones between them after (their
    # first call is later and their last earlier than the row's), a batch repeated.
    ingest_records(project, [*early, *late[6:]])
    ingest_records(project, [*late[:6], plain])
    ingest_records(project, other)
    ingest_records(project, late)

    for month in (date(2026, 3, 1), date(2026, 4, 1)):
        expected = runs_from_events(project, month)
        assert runs_from_rollup(project, month) == expected
    march = runs_from_rollup(project, date(2026, 3, 1))
    assert set(march) == {"run-a", "run-b"}
    assert march["run-a"]["n"] == 3 + 5  # five of the later calls fall in March
    assert march["run-a"]["user"] == "bob"  # as Max(user_id) over the events
    assert march["run-b"]["source_name"] == "langchain"
    assert march["run-b"]["errors"] == 1
    assert march["run-a"]["started"] == early[0].timestamp
    assert set(runs_from_rollup(project, date(2026, 4, 1))) == {"run-a"}


@pytest.mark.django_db(transaction=True)
def test_the_migration_adds_up_the_runs_stored_before_it() -> None:
    project = make_project(timezone="America/New_York")
    ingest_records(
        project,
        [
            *run_records("run-a", NEW_YORK_MARCH_END - timedelta(minutes=5), 10, user_id="bob"),
            *run_records("run-b", NEW_YORK_MARCH_END - timedelta(days=3), 4, source="crewai"),
            make_record("not-a-run", when=NEW_YORK_MARCH_END),
        ],
    )
    expected = {
        month: runs_from_events(project, month) for month in (date(2026, 3, 1), date(2026, 4, 1))
    }
    executor = MigrationExecutor(connection)
    executor.migrate([("weckr_django", "0004_fewer_rollup_indexes")])
    executor.loader.build_graph()
    executor.migrate(executor.loader.graph.leaf_nodes())  # through 0005, which adds them up

    for month, runs in expected.items():
        assert runs_from_rollup(project, month) == runs
    assert AgentRunUsage.objects.filter(project=project).count() == 3
