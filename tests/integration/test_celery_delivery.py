"""Against real PostgreSQL, Redis and a Celery worker subprocess (see conftest.py)."""

from __future__ import annotations

import subprocess
import sys
from decimal import Decimal

import pytest
from django.db.models import Count, Max, Min, Sum

from weckr_django.backend import DjangoBackend
from weckr_django.models import (
    AgentRunUsage,
    DailyUsage,
    MonthlyAccountSpend,
    MonthlyUserSpend,
    Project,
    UsageEvent,
)
from weckr_django.tasks import record_usage

from ..django.helpers import expected_cost, make_record
from .conftest import ROOT, CeleryWorker, subprocess_env, wait_until
from .ingest_process import EVENTS

pytestmark = pytest.mark.django_db(transaction=True)


def assert_rollups_match_events(project: Project) -> None:
    by_user = {
        row["user_id"] or "": row
        for row in UsageEvent.objects.filter(project=project)
        .values("user_id")
        .annotate(calls=Count("id"), cost=Sum("cost_usd"), tokens=Sum("input_tokens"))
    }
    monthly = {row.user_key: row for row in MonthlyUserSpend.objects.filter(project=project)}
    assert set(monthly) == set(by_user)
    for user, expected in by_user.items():
        assert monthly[user].calls == expected["calls"]
        assert monthly[user].cost_usd == expected["cost"]
        assert monthly[user].input_tokens == expected["tokens"]
    daily = DailyUsage.objects.filter(project=project).aggregate(
        calls=Sum("calls"), cost=Sum("cost_usd")
    )
    events = UsageEvent.objects.filter(project=project)
    assert daily["calls"] == events.count()
    assert daily["cost"] == events.aggregate(cost=Sum("cost_usd"))["cost"]
    runs = {
        row["run_id"]: (row["calls"], row["cost"], row["started"], row["ended"])
        for row in events.exclude(run_id=None)
        .values("run_id")
        .annotate(
            calls=Count("id"),
            cost=Sum("cost_usd"),
            started=Min("timestamp"),
            ended=Max("timestamp"),
        )
    }
    accounts = {
        row["account_id"]: (row["calls"], row["cost"])
        for row in events.exclude(account_id=None)
        .values("account_id")
        .annotate(calls=Count("id"), cost=Sum("cost_usd"))
    }
    assert accounts == {  # an account's rows of every month, added up
        row["account_key"]: (row["calls"], row["cost"])
        for row in MonthlyAccountSpend.objects.filter(project=project)
        .values("account_key")
        .annotate(calls=Sum("calls"), cost=Sum("cost_usd"))
    }
    assert runs == {  # a run's rows of every month it spans, added up
        row["run_id"]: (row["calls"], row["cost"], row["started"], row["ended"])
        for row in AgentRunUsage.objects.filter(project=project)
        .values("run_id")
        .annotate(
            calls=Sum("calls"),
            cost=Sum("cost_usd"),
            started=Min("started_at"),
            ended=Max("ended_at"),
        )
    }


def test_a_task_delivered_twice_lands_once(celery_worker: CeleryWorker):
    project = Project.objects.create(name="Acme")
    records = [make_record(f"e{i}", user_id=f"u{i % 3}") for i in range(25)]
    payloads = [record.to_wire() for record in records]
    celery_worker.start()
    first = record_usage.apply_async(args=(payloads, str(project.pk)))
    # The same message again, same task id: what a broker redelivery looks like.
    second = record_usage.apply_async(args=(payloads, str(project.pk)), task_id=first.id)
    assert first.get(timeout=60) in (
        {"created": 25, "duplicates": 0, "invalid": 0},
        {"created": 0, "duplicates": 25, "invalid": 0},
    )
    third = record_usage.apply_async(args=(payloads, str(project.pk)))
    assert third.get(timeout=60) == {"created": 0, "duplicates": 25, "invalid": 0}
    assert second.id == first.id
    assert UsageEvent.objects.filter(project=project).count() == 25
    total = sum((expected_cost(record) for record in records), Decimal(0))
    spend = MonthlyUserSpend.objects.filter(project=project).aggregate(s=Sum("cost_usd"))["s"]
    assert spend == total
    assert_rollups_match_events(project)


def test_usage_recorded_while_the_worker_is_down_lands_when_it_starts(
    celery_worker: CeleryWorker,
):
    project = Project.objects.create(name="Acme")
    backend = DjangoBackend(delivery="celery")
    for i in range(60):
        backend.record(make_record(f"offline-{i}", user_id=f"u{i % 4}"))
    assert backend.flush(30)  # handed to the broker
    assert not UsageEvent.objects.filter(project=project).exists()

    celery_worker.start()
    assert wait_until(lambda: UsageEvent.objects.filter(project=project).count() == 60)
    assert wait_until(
        lambda: sum(row.calls for row in MonthlyUserSpend.objects.filter(project=project)) == 60
    )
    assert_rollups_match_events(project)


def test_invalid_events_are_counted_and_logged_not_dropped_silently(
    celery_worker: CeleryWorker,
):
    project = Project.objects.create(name="Acme")
    good = make_record("good").to_wire()
    bad = {**make_record("bad").to_wire(), "inputTokens": -1}
    celery_worker.start()
    result = record_usage.apply_async(args=([good, bad], str(project.pk)))
    assert result.get(timeout=60) == {"created": 1, "duplicates": 0, "invalid": 1}
    assert wait_until(
        lambda: any("inputTokens must not be negative" in line for line in celery_worker.log)
    )


@pytest.mark.parametrize("batch_size", [40, 240], ids=["values", "copy-through-staging"])
def test_concurrent_ingest_from_two_processes_keeps_rollups_exact(batch_size: int) -> None:
    project = Project.objects.create(name="Acme")
    processes = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.integration.ingest_process",
                str(project.pk),
                str(seed),
                str(batch_size),
            ],
            cwd=ROOT,
            env=subprocess_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for seed in (1, 2)
    ]
    outputs = [process.communicate(timeout=300) for process in processes]
    for process, (_out, err) in zip(processes, outputs, strict=True):
        assert process.returncode == 0, err
    created = sum(int(out.strip().rsplit("=", 1)[1]) for out, _ in outputs)
    shared, own_each = EVENTS // 2, EVENTS // 2
    assert created == shared + 2 * own_each
    assert UsageEvent.objects.filter(project=project).count() == created
    assert_rollups_match_events(project)


def test_follow_ups_of_a_burst_of_ingests_are_queued_once_per_project() -> None:
    """Thirty single-event ingests within the runner's linger: one ``detect_loops``
    and one ``check_budgets`` message for all thirty users, not sixty messages."""
    import base64
    import json

    import redis

    from tests import settings_integration as settings
    from weckr_django import tasks
    from weckr_django.ingest import ingest_records

    project = Project.objects.create(name="Acme")
    queue = settings.CELERY_TASK_DEFAULT_QUEUE
    key = f"{settings.CELERY_BROKER_TRANSPORT_OPTIONS['global_keyprefix']}{queue}"
    broker = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    broker.delete(key)
    try:
        for i in range(30):
            ingest_records(project, [make_record(f"burst-{i}", user_id=f"u{i}")])
        assert tasks.local_tasks.wait(timeout=10)
        messages = [json.loads(raw) for raw in broker.lrange(key, 0, -1)]
    finally:
        broker.delete(key)
    published = sorted(
        (
            message["headers"]["task"],
            sorted(json.loads(base64.b64decode(message["body"]))[0][1]),
        )
        for message in messages
    )
    users = sorted(f"u{i}" for i in range(30))
    assert published == [
        ("weckr_django.check_budgets", users),
        ("weckr_django.detect_loops", users),
    ]
