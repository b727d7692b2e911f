"""Celery tasks: ingest usage, detect runaway loops, check budgets, dispatch alerts.

The alert tasks are thin wrappers over ``alert_rules``; their ``name=``s are a wire
contract with running workers and do not change.

With a broker the follow-up tasks are queued. With none (the embedded default) they
run in this process on one background thread, so an API request never waits on loop
detection, budget checks or a Slack webhook; with ``DELIVERY = "sync"`` (scripts and
tests) they run right away on the calling thread.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal, TypedDict

from celery import Task, shared_task
from django.core.exceptions import ValidationError
from django.db import (
    DatabaseError,
    InterfaceError,
    OperationalError,
    close_old_connections,
    connections,
)

from weckr_core.backends import RunStop
from weckr_core.batching import BatchWorker
from weckr_django import alert_rules, alerts
from weckr_django.conf import celery_broker_configured, weckr_settings
from weckr_django.ingest import ingest_payloads
from weckr_django.models import AlertLog, Project
from weckr_django.stores import delete_expired_reservations

logger = logging.getLogger("weckr_django")

# Celery's retries when publishing (its default waits long for a broker that is down):
# whoever publishes retries, spools or runs the task here instead.
PUBLISH_RETRY: Final = {"max_retries": 1, "interval_start": 0, "interval_step": 0.2}
_DB_ERRORS = (OperationalError, InterfaceError)
ALERT_MAX_RETRIES = 5


class RecordUsageResult(TypedDict):
    created: int
    duplicates: int
    invalid: int


@shared_task(
    name="weckr_django.record_usage",
    acks_late=True,
    reject_on_worker_lost=True,
    autoretry_for=_DB_ERRORS,
    retry_backoff=2,
    retry_backoff_max=300,
    retry_jitter=True,
    max_retries=20,
)
def record_usage(events: list[dict[str, Any]], project_id: str) -> RecordUsageResult:
    """Ingest wire-format events for ``project_id``. Redelivery never double counts:
    events are unique per (project, eventId). The valid events are stored and each
    invalid one is logged with its id and reason; the task succeeds either way (a
    retry cannot make a bad event good). Database outages are retried."""
    if not isinstance(events, list):
        logger.error("Weckr: a record_usage message for project %s holds no list.", project_id)
        return {"created": 0, "duplicates": 0, "invalid": 1}
    project = _project(project_id)
    if project is None:
        logger.error(
            "Weckr: %d usage event(s) for unknown project %s not recorded.", len(events), project_id
        )
        return {"created": 0, "duplicates": 0, "invalid": len(events)}
    result = ingest_payloads(project, events)
    for rejection in result.rejected:
        logger.error(
            "Weckr: usage event %s (#%d of the batch) for project %s is invalid and was "
            "not recorded: %s",
            rejection.event_id,
            rejection.index,
            project_id,
            rejection.error,
        )
    return {
        "created": result.created,
        "duplicates": result.duplicates,
        "invalid": len(result.rejected),
    }


def _project(project_id: str) -> Project | None:
    try:
        return Project.objects.filter(pk=project_id).first()
    except ValidationError:  # not a UUID: no such project
        return None


def _ids(created: list[AlertLog]) -> list[int]:
    return [alert.pk for alert in created]


@shared_task(
    name="weckr_django.detect_loops",
    # Redelivery is safe: a user alerted within the cooldown is not alerted again.
    acks_late=True,
    reject_on_worker_lost=True,
    autoretry_for=_DB_ERRORS,
    max_retries=3,
)
def detect_loops(project_id: str, user_ids: Sequence[str]) -> list[int]:
    """``alert_rules.loop_alerts`` for rollup user keys ("" for calls made with no
    user); the ids of the alerts created."""
    project = _project(project_id)
    if project is None:
        return []
    return _ids(alert_rules.loop_alerts(project, user_ids, send=send_alert))


@shared_task(
    name="weckr_django.record_run_stop",
    # Redelivery is safe: one alert per run id.
    acks_late=True,
    reject_on_worker_lost=True,
    autoretry_for=_DB_ERRORS,
    max_retries=3,
)
def record_run_stop(project_id: str, stop: dict[str, Any]) -> int | None:
    """``alert_rules.run_stop_alert`` for a ``run_stop_payload``: once per run, so a
    redelivered task adds nothing."""
    project = _project(project_id)
    if project is None:
        return None
    alert = alert_rules.run_stop_alert(project, stop, send=send_alert)
    return None if alert is None else alert.pk


def run_stop_payload(stop: RunStop) -> dict[str, Any]:
    """``stop`` as the JSON-able argument of ``record_run_stop``."""
    return {
        "run_id": stop.run_id,
        "reason": stop.reason,
        "source": stop.source,
        "llm_calls": stop.llm_calls,
        "tokens": stop.tokens,
        "cost_usd": str(stop.cost_usd),
        "user_id": stop.user_id,
        "plan": stop.plan,
        "feature": stop.feature,
        "agent": stop.agent,
    }


@shared_task(
    name="weckr_django.check_budgets",
    # Redelivery is safe: each alert once per user (or plan) and month.
    acks_late=True,
    reject_on_worker_lost=True,
    autoretry_for=_DB_ERRORS,
    max_retries=3,
)
def check_budgets(
    project_id: str, user_ids: Sequence[str], account_ids: Sequence[str] = ()
) -> list[int]:
    """``alert_rules.budget_alerts`` (cap, soft cap, margin, unknown plans) for the
    users, ``alert_rules.account_budget_alerts`` for the accounts; the ids of the
    alerts created. Also deletes the project's cap reservations that stopped
    counting. (``account_ids`` is optional: tasks queued before accounts had none.)"""
    project = _project(project_id)
    if project is None:
        return []
    created = alert_rules.budget_alerts(project, user_ids, send=send_alert)
    created += alert_rules.account_budget_alerts(project, account_ids, send=send_alert)
    # Housekeeping, here rather than in a task of its own: holds that stopped counting.
    delete_expired_reservations(project)
    return _ids(created)


@shared_task(
    name="weckr_django.unknown_plan_refused",
    # Redelivery is safe: one alert per plan name and month.
    acks_late=True,
    reject_on_worker_lost=True,
    autoretry_for=_DB_ERRORS,
    max_retries=3,
)
def unknown_plan_refused(project_id: str, plan_name: str | None) -> int | None:
    """``alert_rules.unknown_plan_refused_alert``: one alert per plan name and month."""
    project = _project(project_id)
    if project is None:
        return None
    alert = alert_rules.unknown_plan_refused_alert(project, plan_name, send=send_alert)
    return None if alert is None else alert.pk


@shared_task(
    bind=True,
    name="weckr_django.dispatch_alert",
    # Redelivery is safe: a channel is marked sent as soon as it is, then skipped. A
    # worker killed mid-send repeats that one message; acking early would lose it.
    acks_late=True,
    reject_on_worker_lost=True,
    autoretry_for=_DB_ERRORS,
    max_retries=10,
)
def dispatch_alert(self: Task[Any, Any], alert_id: int) -> str:
    """Send one alert on its project's channels; retried with backoff on failures
    another attempt can fix. Returns the final status."""
    alert = AlertLog.objects.select_related("project").filter(pk=alert_id).first()
    if alert is None:
        return "missing"
    retry = alerts.deliver(alert)
    in_worker = not (self.request.called_directly or self.request.is_eager)
    if retry and in_worker and self.request.retries < ALERT_MAX_RETRIES:
        raise self.retry(countdown=min(3600, 30 * 2**self.request.retries))
    return str(alert.status)


def send_alert(alert_id: int) -> None:
    """Send a committed alert: queued, or run in this process (``run_task``)."""
    run_task(dispatch_alert, alert_id)


def run_task(task: Task[Any, Any], *args: Any) -> None:
    """Queue ``task`` when a broker is configured; otherwise run it in this process
    (see the module docstring), logging rather than raising its errors."""
    route = _task_route()
    if route == "broker":
        try:
            task.apply_async(args, ignore_result=True, retry_policy=PUBLISH_RETRY)
        except Exception as error:
            # The broker is away: the work is not lost, it runs in this process.
            logger.warning(
                "Weckr: could not queue %s (%s); running it in this process instead.",
                task.name,
                error,
            )
            local_tasks.submit(task, args)
    elif route == "here":
        _run_here(task, args)
    else:
        local_tasks.submit(task, args)


def _task_route() -> Literal["broker", "here", "local"]:
    """Where follow-up tasks run: the broker's workers, the calling thread
    (``DELIVERY = "sync"``), or this process's background thread."""
    if celery_broker_configured():
        return "broker"
    return "here" if weckr_settings.DELIVERY == "sync" else "local"


def _run_here(task: Task[Any, Any], args: tuple[Any, ...]) -> None:
    try:
        task.apply(args=args, throw=True)
    except DatabaseError:
        logger.exception("Weckr: %s failed (database error).", task.name)
    except Exception:
        logger.exception("Weckr: %s failed.", task.name)


@dataclass(frozen=True, slots=True)
class TaskRun:
    """A task to run on the local thread."""

    task: Task[Any, Any]
    args: tuple[Any, ...]


@dataclass(frozen=True, slots=True)
class FollowUp:
    """Loop detection and budget alerts for the users (and accounts) whose usage
    was just stored."""

    project_id: str
    user_keys: tuple[str, ...]
    account_keys: tuple[str, ...] = ()


LocalWork = TaskRun | FollowUp


def merge_follow_ups(batch: Sequence[LocalWork]) -> list[LocalWork]:
    """``batch`` in order, each project's follow-ups merged into its first one: a
    burst of ingests gets one pass over all the users it touched."""
    merged: list[LocalWork] = []
    users: dict[str, set[str]] = {}
    accounts: dict[str, set[str]] = {}
    for work in batch:
        if isinstance(work, TaskRun):
            merged.append(work)
        elif work.project_id in users:
            users[work.project_id].update(work.user_keys)
            accounts[work.project_id].update(work.account_keys)
        else:
            users[work.project_id] = set(work.user_keys)
            accounts[work.project_id] = set(work.account_keys)
            merged.append(work)
    return [
        FollowUp(
            work.project_id,
            tuple(sorted(users[work.project_id])),
            tuple(sorted(accounts[work.project_id])),
        )
        if isinstance(work, FollowUp)
        else work
        for work in merged
    ]


#: How long the local runner collects follow-ups before one pass over their users.
FOLLOW_UP_LINGER_SECONDS = 1.0


class LocalTaskRunner:
    """One daemon thread that runs tasks in order when there is no broker, taking
    what is queued in batches (follow-ups merged per project, ``merge_follow_ups``),
    so the queue cannot outgrow the thread under sustained load. With a broker it
    only coalesces follow-ups, and queues each merged one."""

    def __init__(self) -> None:
        self._worker: BatchWorker[LocalWork] = BatchWorker(
            self._run_batch,
            name="weckr-local-tasks",
            # Follow-ups wait up to a second, so a stream of small ingests gets one
            # pass over the users of that second; other tasks (alerts) go at once.
            linger=FOLLOW_UP_LINGER_SECONDS,
            urgent=lambda work: isinstance(work, TaskRun),
            on_drop=_log_dropped_work,
            # Give this thread's connections back while there is nothing to do.
            on_idle=connections.close_all,
        )

    def submit(self, task: Task[Any, Any], args: tuple[Any, ...]) -> None:
        self._worker.put(TaskRun(task, args))

    def submit_follow_up(
        self, project_id: str, user_keys: Sequence[str], account_keys: Sequence[str] = ()
    ) -> None:
        self._worker.put(FollowUp(project_id, tuple(user_keys), tuple(account_keys)))

    @property
    def pending(self) -> int:
        """Submitted and not run yet."""
        return self._worker.pending

    def wait(self, timeout: float = 5.0) -> bool:
        """Wait until every submitted task has run, and the tasks those submitted
        (an alert's sending); False when time ran out."""
        deadline = time.monotonic() + timeout
        while self._worker.pending:
            if not self._worker.flush(deadline - time.monotonic()):
                return False
        return True

    @staticmethod
    def _run_batch(batch: list[LocalWork]) -> None:
        for work in merge_follow_ups(batch):
            # A connection broken since the last task (a restarted server) is
            # replaced, as Django does at the start of each request.
            close_old_connections()
            if isinstance(work, TaskRun):
                _run_here(work.task, work.args)
            elif _task_route() == "broker":
                user_keys, account_keys = list(work.user_keys), list(work.account_keys)
                run_task(detect_loops, work.project_id, user_keys)
                run_task(check_budgets, work.project_id, user_keys, account_keys)
            else:
                user_keys, account_keys = list(work.user_keys), list(work.account_keys)
                _run_here(detect_loops, (work.project_id, user_keys))
                _run_here(check_budgets, (work.project_id, user_keys, account_keys))


def _log_dropped_work(dropped: list[LocalWork]) -> None:
    logger.error(
        "Weckr: the local task queue is full; %d task(s) were not run: %s",
        len(dropped),
        ", ".join(
            work.task.name if isinstance(work, TaskRun) else f"follow-up of {work.project_id}"
            for work in dropped
        ),
    )


local_tasks = LocalTaskRunner()


def schedule_after_ingest(
    project_id: str, user_keys: list[str], account_keys: Sequence[str] = ()
) -> None:
    """Follow-up work after new usage is committed: loop detection, budget alerts.

    Coalesced in this process (``LocalTaskRunner``): the ingests of up to a second
    get one pass per project over all the users they touched, run on the runner's
    thread, or queued as one ``detect_loops`` and one ``check_budgets`` task when a
    broker is configured. With ``DELIVERY = "sync"`` it runs at once, here."""
    if _task_route() == "here":
        run_task(detect_loops, project_id, user_keys)
        run_task(check_budgets, project_id, user_keys, list(account_keys))
        return
    local_tasks.submit_follow_up(project_id, user_keys, account_keys)


def on_usage_ingested(
    sender: object,
    *,
    project_id: str,
    user_keys: list[str],
    account_keys: Sequence[str] = (),
    **_: Any,
) -> None:
    """``signals.usage_ingested`` receiver (connected in ``apps``): schedule the
    follow-up work."""
    schedule_after_ingest(project_id, user_keys, account_keys)
