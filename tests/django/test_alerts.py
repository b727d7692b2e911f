from __future__ import annotations

import threading
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import ClassVar

import pytest
from celery import shared_task
from django.core import mail
from django.core.mail import EmailMessage
from django.core.mail.backends import locmem
from django.test.utils import override_settings
from django.utils import timezone

from weckr_django import alerts, tasks
from weckr_django.ingest import ingest_records
from weckr_django.models import AlertLog, MonthlyUserSpend

from .helpers import expected_cost, make_plan, make_project, make_record

pytestmark = pytest.mark.django_db


def burst(project, user_id: str | None, tokens_each: int, count: int, prefix: str = "b") -> None:
    now = datetime.now(UTC)
    ingest_records(
        project,
        [
            make_record(
                f"{prefix}{i}",
                user_id=user_id,
                input_tokens=tokens_each,
                output_tokens=0,
                when=now - timedelta(seconds=i),
            )
            for i in range(count)
        ],
    )


def test_loop_alert_above_the_threshold_with_window_figures(django_capture_on_commit_callbacks):
    project = make_project(loop_token_threshold=10_000, alert_email="ops@example.com")
    burst(project, "u1", 3_000, 4)
    burst(project, "u2", 1_000, 2, prefix="small")
    with django_capture_on_commit_callbacks(execute=True):
        created = tasks.detect_loops(str(project.pk), ["u1", "u2"])
    alert = AlertLog.objects.get()
    assert created == [alert.pk]
    assert (alert.kind, alert.user_id) == (AlertLog.Kind.LOOP, "u1")
    assert alert.window_tokens == 12_000
    assert alert.window_seconds == 300
    assert alert.window_cost_usd and alert.window_cost_usd > 0
    assert alert.status == AlertLog.Status.SENT
    assert alert.channels == ["email"]
    assert len(mail.outbox) == 1
    assert "u1" in mail.outbox[0].subject


def test_loop_alert_respects_the_cooldown():
    project = make_project(loop_token_threshold=1_000, loop_cooldown_seconds=600)
    burst(project, "u1", 2_000, 1)
    assert len(tasks.detect_loops(str(project.pk), ["u1"])) == 1
    burst(project, "u1", 2_000, 1, prefix="again")
    assert tasks.detect_loops(str(project.pk), ["u1"]) == []
    AlertLog.objects.update(created_at=timezone.now() - timedelta(seconds=601))
    assert len(tasks.detect_loops(str(project.pk), ["u1"])) == 1


def test_old_usage_outside_the_window_does_not_count():
    project = make_project(loop_token_threshold=5_000, loop_window_seconds=60)
    long_ago = datetime.now(UTC) - timedelta(minutes=10)
    ingest_records(
        project, [make_record(f"old{i}", input_tokens=4_000, when=long_ago) for i in range(3)]
    )
    assert tasks.detect_loops(str(project.pk), ["u1"]) == []


def test_settings_provide_the_defaults():
    project = make_project()
    burst(project, "u1", 2_000, 1)
    with override_settings(WECKR={"LOOP_TOKEN_THRESHOLD": 1_500}):
        assert len(tasks.detect_loops(str(project.pk), ["u1"])) == 1


def test_ingest_schedules_loop_detection_after_commit(django_capture_on_commit_callbacks):
    project = make_project(loop_token_threshold=5_000)
    with django_capture_on_commit_callbacks(execute=True):
        burst(project, "u1", 3_000, 2)
    assert AlertLog.objects.filter(kind=AlertLog.Kind.LOOP, user_id="u1").count() == 1


def test_anonymous_usage_is_watched_too():
    project = make_project(loop_token_threshold=1_000)
    burst(project, None, 2_000, 1)
    tasks.detect_loops(str(project.pk), [""])
    assert AlertLog.objects.get().user_id is None


def test_cap_and_soft_cap_alerts_once_per_month(django_capture_on_commit_callbacks):
    project = make_project(alert_email="ops@example.com")
    make_plan(project, "pro", cap="0.01")
    with django_capture_on_commit_callbacks(execute=True):
        ingest_records(
            project, [make_record("e1", plan="pro", input_tokens=3_400, output_tokens=0)]
        )
    assert list(AlertLog.objects.values_list("kind", flat=True)) == [AlertLog.Kind.SOFT_CAP]
    with django_capture_on_commit_callbacks(execute=True):
        ingest_records(project, [make_record("e2", plan="pro", input_tokens=9_000)])
        ingest_records(project, [make_record("e3", plan="pro", input_tokens=9_000)])
    kinds = sorted(AlertLog.objects.values_list("kind", flat=True))
    assert kinds == sorted([AlertLog.Kind.SOFT_CAP, AlertLog.Kind.CAP_REACHED])
    assert len(mail.outbox) == 2


def test_margin_alert_once_the_monthly_margin_falls_below_the_threshold(
    django_capture_on_commit_callbacks,
):
    project = make_project(
        alert_email="ops@example.com",
        margin_alert_threshold_usd=Decimal("0.50"),
        loop_token_threshold=10_000_000,  # these calls are large, but no runaway loop
    )
    make_plan(project, "starter", price="1")
    # gpt-4o input is $2.50 per million tokens: 200,000 tokens cost $0.50.
    first = make_record("m1", plan="starter", input_tokens=200_000, output_tokens=0)
    assert expected_cost(first) == Decimal("0.5")
    with django_capture_on_commit_callbacks(execute=True):
        ingest_records(project, [first])
    assert not AlertLog.objects.exists()  # margin $0.50 is not below $0.50
    with django_capture_on_commit_callbacks(execute=True):
        ingest_records(
            project, [make_record("m2", plan="starter", input_tokens=4, output_tokens=0)]
        )
        ingest_records(
            project, [make_record("m3", plan="starter", input_tokens=9, output_tokens=0)]
        )
    alert = AlertLog.objects.get()
    assert (alert.kind, alert.user_id) == (AlertLog.Kind.MARGIN, "u1")
    assert alert.details["margin"] == "0.50"  # $0.49996... rounds to cents in the message
    assert MonthlyUserSpend.objects.get(user_key="u1").cost_usd > Decimal("0.5")
    assert len(mail.outbox) == 1


def test_slack_must_be_https():
    project = make_project(slack_webhook_url="http://hooks.slack.com/services/T/B/X")
    alert = alerts.send_test_alert(project)
    assert alert.status == AlertLog.Status.FAILED
    assert "https" in alert.error


def test_slack_host_must_be_allowed():
    project = make_project(
        slack_webhook_url="https://169.254.169.254/latest", alert_email="ops@example.com"
    )
    alert = alerts.send_test_alert(project)
    assert alert.status == AlertLog.Status.PARTIAL  # e-mail went out, Slack was refused
    assert "SLACK_ALLOWED_HOSTS" in alert.error
    assert alert.details["delivery"]["email"] == "sent"
    assert len(mail.outbox) == 1


def test_unreachable_slack_is_recorded_as_a_retryable_failure():
    project = make_project(slack_webhook_url="https://localhost/services/T/B/X")
    alert = AlertLog.objects.create(project=project, kind=AlertLog.Kind.TEST)
    with override_settings(WECKR={"SLACK_ALLOWED_HOSTS": ["localhost"]}):
        retry = alerts.deliver(alert)
    alert.refresh_from_db()
    assert retry
    assert alert.status == AlertLog.Status.FAILED
    assert alert.attempts == 1
    assert alert.error.startswith("slack: Slack: ")


def test_no_channel_is_recorded():
    alert = alerts.send_test_alert(make_project())
    assert alert.status == AlertLog.Status.NO_CHANNEL
    assert alert.channels == []


def test_dispatch_alert_task_sends_pending_alerts():
    project = make_project(alert_email="ops@example.com")
    alert = AlertLog.objects.create(project=project, kind=AlertLog.Kind.TEST)
    assert tasks.dispatch_alert.delay(alert.pk).get() == AlertLog.Status.SENT
    assert len(mail.outbox) == 1


class ThreadRecordingEmailBackend(locmem.EmailBackend):
    sent_on: ClassVar[list[int]] = []

    def send_messages(self, messages: Sequence[EmailMessage]) -> int:
        self.sent_on.append(threading.get_ident())
        return super().send_messages(messages)


@pytest.mark.django_db(transaction=True)
def test_without_a_broker_follow_up_work_runs_off_the_ingesting_thread():
    project = make_project(loop_token_threshold=1_000, alert_email="ops@example.com")
    ThreadRecordingEmailBackend.sent_on.clear()
    with override_settings(
        WECKR={"DELIVERY": "thread"},
        EMAIL_BACKEND=f"{__name__}.ThreadRecordingEmailBackend",
    ):
        burst(project, "u1", 2_000, 1)
        assert tasks.local_tasks.wait(timeout=10)
    alert = AlertLog.objects.get()
    assert (alert.kind, alert.status) == (AlertLog.Kind.LOOP, AlertLog.Status.SENT)
    assert len(mail.outbox) == 1
    assert len(ThreadRecordingEmailBackend.sent_on) == 1
    assert ThreadRecordingEmailBackend.sent_on[0] != threading.get_ident()


_release = threading.Event()


@shared_task(name="tests.block_local_runner")
def block_local_runner() -> None:
    _release.wait(10)


def test_follow_ups_in_one_batch_are_merged_per_project_in_order():
    blocker = tasks.TaskRun(block_local_runner, ())
    batch: list[tasks.LocalWork] = [
        tasks.FollowUp("p1", ("u2",)),
        blocker,
        tasks.FollowUp("p2", ("u9",)),
        tasks.FollowUp("p1", ("u1", "u2")),
    ]
    assert tasks.merge_follow_ups(batch) == [
        tasks.FollowUp("p1", ("u1", "u2")),
        blocker,
        tasks.FollowUp("p2", ("u9",)),
    ]


@pytest.mark.django_db(transaction=True)
def test_follow_up_work_waiting_on_the_local_thread_runs_once_per_user():
    project = make_project(loop_token_threshold=1_000)
    burst(project, "u1", 2_000, 1, prefix="x")
    burst(project, "u2", 2_000, 1, prefix="y")
    runner = tasks.LocalTaskRunner()
    _release.clear()
    runner.submit(block_local_runner, ())
    for user_keys in (["u1"], ["u2"], ["u1"]):
        runner.submit_follow_up(str(project.pk), user_keys)
    assert runner.pending == 4
    _release.set()
    assert runner.wait(timeout=10)
    assert runner.pending == 0
    alerts = AlertLog.objects.filter(kind=AlertLog.Kind.LOOP)
    assert set(alerts.values_list("user_id", flat=True)) == {"u1", "u2"}
    assert alerts.count() == 2
