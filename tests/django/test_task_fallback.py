"""Follow-up tasks when the broker cannot take them: run in this process instead."""

from __future__ import annotations

from typing import Any

import pytest
from celery import current_app
from django.test import override_settings
from kombu.exceptions import OperationalError

from weckr_django import tasks
from weckr_django.models import AlertLog

from .helpers import make_project


@pytest.mark.django_db(transaction=True)
def test_a_task_the_broker_refuses_runs_here(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    project = make_project()

    def broker_down(*args: Any, **kwargs: Any) -> None:
        raise OperationalError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")

    # Load the Celery app's configuration now, from the test settings: loaded inside
    # the override below, it would keep that broker for every later test.
    assert current_app.conf.task_always_eager
    monkeypatch.setitem(current_app.conf, "task_always_eager", False)
    # The alert it raises is sent by a task too: both find the broker down.
    monkeypatch.setattr(tasks.unknown_plan_refused, "apply_async", broker_down)
    monkeypatch.setattr(tasks.dispatch_alert, "apply_async", broker_down)
    with override_settings(
        CELERY_TASK_ALWAYS_EAGER=False, CELERY_BROKER_URL="redis://127.0.0.1:1/0"
    ):
        tasks.run_task(tasks.unknown_plan_refused, str(project.pk), "enterprise")
        assert tasks.local_tasks.wait(timeout=10)

    alert = AlertLog.objects.get(project=project)
    assert alert.kind == AlertLog.Kind.UNKNOWN_PLAN
    assert "running it in this process instead" in caplog.text
