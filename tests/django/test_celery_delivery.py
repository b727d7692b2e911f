"""At-least-once delivery: Weckr's tasks are acknowledged after they run, and running
one again (what a broker does after its worker died) stores and alerts nothing twice."""

from __future__ import annotations

import os
import subprocess
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from celery import current_app
from django.db.models import Sum

from weckr_django import tasks
from weckr_django.models import AlertLog, DailyUsage, MonthlyUserSpend, UsageEvent

from .helpers import (
    PUBLISHED_TASK_NAMES,
    expected_cost,
    make_plan,
    make_project,
    make_record,
)

ROOT = Path(__file__).resolve().parents[2]


def test_every_weckr_task_is_acknowledged_after_it_runs() -> None:
    weckr_tasks = {
        name: task for name, task in current_app.tasks.items() if name.startswith("weckr_django.")
    }

    assert set(weckr_tasks) >= PUBLISHED_TASK_NAMES
    for task in weckr_tasks.values():
        assert (task.name, task.acks_late, task.reject_on_worker_lost) == (task.name, True, True)


@pytest.mark.django_db
def test_record_usage_delivered_twice_stores_each_event_once() -> None:
    project = make_project()
    records = [make_record(f"e{i}", user_id=f"u{i % 3}") for i in range(12)]
    events = [record.to_wire() for record in records]

    first = tasks.record_usage.apply(args=(events, str(project.pk))).get()
    again = tasks.record_usage.apply(args=(events, str(project.pk))).get()

    assert first == {"created": 12, "duplicates": 0, "invalid": 0}
    assert again == {"created": 0, "duplicates": 12, "invalid": 0}
    assert UsageEvent.objects.filter(project=project).count() == 12
    total = sum((expected_cost(record) for record in records), Decimal(0))
    monthly = MonthlyUserSpend.objects.filter(project=project)
    assert monthly.aggregate(cost=Sum("cost_usd"))["cost"] == total
    assert sum(row.calls for row in monthly) == 12
    assert DailyUsage.objects.filter(project=project).aggregate(calls=Sum("calls"))["calls"] == 12


@pytest.mark.django_db
def test_the_follow_up_tasks_delivered_twice_alert_once(
    django_capture_on_commit_callbacks: Any,
) -> None:
    project = make_project(loop_token_threshold=1_000, alert_email="ops@example.com")
    make_plan(project, "pro", cap="0.01")
    record = make_record("big", user_id="u1", plan="pro", input_tokens=50_000)
    tasks.record_usage.apply(args=([record.to_wire()], str(project.pk)))
    stop = {"run_id": "run-1", "reason": "loop", "source": "langchain", "user_id": "u1"}

    for _ in range(2):
        with django_capture_on_commit_callbacks(execute=True):
            tasks.detect_loops(str(project.pk), ["u1"])
            tasks.check_budgets(str(project.pk), ["u1"])
            tasks.record_run_stop(str(project.pk), stop)
            tasks.unknown_plan_refused(str(project.pk), "gold")

    kinds = sorted(AlertLog.objects.filter(project=project).values_list("kind", flat=True))
    assert kinds == sorted(
        [
            AlertLog.Kind.LOOP,
            AlertLog.Kind.CAP_REACHED,
            AlertLog.Kind.RUN_STOPPED,
            AlertLog.Kind.UNKNOWN_PLAN,
        ]
    )
    assert set(AlertLog.objects.values_list("status", flat=True)) == {AlertLog.Status.SENT}


def test_the_example_project_passes_the_delivery_checks(tmp_path: Path) -> None:
    env = {key: value for key, value in os.environ.items() if key != "DJANGO_SETTINGS_MODULE"}
    env["DATABASE_URL"] = f"sqlite:///{tmp_path / 'example.sqlite3'}"
    env["CELERY_BROKER_URL"] = "redis://127.0.0.1:6379/0"  # not connected to by check
    result = subprocess.run(
        [sys.executable, str(ROOT / "example_project" / "manage.py"), "check"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert result.returncode == 0, result.stderr
    assert "weckr.W005" not in result.stderr + result.stdout
    assert "weckr.W006" not in result.stderr + result.stdout
