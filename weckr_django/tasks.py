"""Celery tasks: ingest usage, detect runaway loops, check budgets, dispatch alerts.

With a broker the follow-up tasks are queued. With none (the embedded default) they
run in this process on one background thread, so an API request never waits on loop
detection, budget checks or a Slack webhook; with ``DELIVERY = "sync"`` (scripts and
tests) they run right away on the calling thread.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, Literal, TypedDict

from celery import Task, shared_task
from django.db import (
    DatabaseError,
    InterfaceError,
    OperationalError,
    close_old_connections,
    connections,
    transaction,
)
from django.db.models import F, Sum
from django.utils import timezone

from weckr_core.backends import RunStop
from weckr_core.records import UsageRecord
from weckr_django import alerts, reports
from weckr_django.conf import celery_broker_configured, weckr_settings
from weckr_django.ingest import ingest_records
from weckr_django.models import ANONYMOUS_KEY, AlertLog, MonthlyUserSpend, Project, UsageEvent
from weckr_django.periods import month_bounds, month_start
from weckr_django.plans import configured_plans, match_plan, unknown_plan_rule
from weckr_django.stores import delete_expired_reservations
from weckr_django.wire import WireError, parse_event

logger = logging.getLogger("weckr_django")

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
    events are unique per (project, eventId)."""
    project = Project.objects.filter(pk=project_id).first()
    if project is None:
        logger.error(
            "Weckr: %d usage event(s) for unknown project %s not recorded.", len(events), project_id
        )
        return {"created": 0, "duplicates": 0, "invalid": len(events)}
    records: list[UsageRecord] = []
    invalid = 0
    for index, payload in enumerate(events):
        try:
            records.append(parse_event(payload))
        except WireError as error:
            invalid += 1
            event_id = payload.get("eventId") if isinstance(payload, dict) else None
            logger.error(
                "Weckr: usage event %s (#%d of the batch) for project %s is invalid and was "
                "not recorded: %s",
                event_id,
                index,
                project_id,
                error.message,
            )
    result = ingest_records(project, records)
    return {"created": result.created, "duplicates": result.duplicates, "invalid": invalid}


def _window_settings(project: Project) -> tuple[int, int, int]:
    return (
        project.loop_window_seconds or weckr_settings.LOOP_WINDOW_SECONDS,
        project.loop_token_threshold or weckr_settings.LOOP_TOKEN_THRESHOLD,
        project.loop_cooldown_seconds or weckr_settings.LOOP_COOLDOWN_SECONDS,
    )


def _user_filter(user_key: str) -> dict[str, Any]:
    return {"user_id__isnull": True} if user_key == ANONYMOUS_KEY else {"user_id": user_key}


@shared_task(name="weckr_django.detect_loops", autoretry_for=_DB_ERRORS, max_retries=3)
def detect_loops(project_id: str, user_ids: Sequence[str]) -> list[int]:
    """Alert on users whose tokens in the sliding window pass the project's threshold.

    ``user_ids`` are rollup user keys ("" for calls made with no user). Returns the
    ids of the alerts created; a user alerted within the cooldown is not alerted again.
    """
    project = Project.objects.filter(pk=project_id).first()
    if project is None:
        return []
    window, threshold, cooldown = _window_settings(project)
    now = timezone.now()
    since = now - timedelta(seconds=window)
    created: list[int] = []
    for user_key in dict.fromkeys(user_ids):
        totals = UsageEvent.objects.filter(
            project=project, timestamp__gte=since, **_user_filter(user_key)
        ).aggregate(
            tokens=Sum(F("input_tokens") + F("cache_creation_tokens") + F("output_tokens")),
            cost=Sum("cost_usd"),
        )
        tokens = int(totals["tokens"] or 0)
        if tokens < threshold:
            continue
        alert_user = user_key or None
        with transaction.atomic():
            # Serialises alerting per project so two workers cannot both pass the cooldown.
            Project.objects.select_for_update().filter(pk=project.pk).first()
            recent = AlertLog.objects.filter(
                project=project,
                kind=AlertLog.Kind.LOOP,
                created_at__gte=now - timedelta(seconds=cooldown),
                **_user_filter(user_key),
            ).exists()
            if recent:
                continue
            alert = AlertLog.objects.create(
                project=project,
                kind=AlertLog.Kind.LOOP,
                user_id=alert_user,
                window_seconds=window,
                window_tokens=tokens,
                window_cost_usd=Decimal(totals["cost"] or 0),
                details={"threshold": threshold, "cooldown_seconds": cooldown},
            )
            transaction.on_commit(_dispatch_later(alert.pk), robust=True)
        created.append(alert.pk)
    return created


@shared_task(name="weckr_django.record_run_stop", autoretry_for=_DB_ERRORS, max_retries=3)
def record_run_stop(project_id: str, stop: dict[str, Any]) -> int | None:
    """Keep a loop-guard stop (``run_stop_payload``) as an alert and send it. Once per
    run: a redelivered task adds nothing."""
    project = Project.objects.filter(pk=project_id).first()
    if project is None:
        return None
    run_id = stop.get("run_id")
    with transaction.atomic():
        if run_id is not None:
            Project.objects.select_for_update().filter(pk=project.pk).first()
            if AlertLog.objects.filter(
                project=project, kind=AlertLog.Kind.RUN_STOPPED, details__run_id=run_id
            ).exists():
                return None
        alert = AlertLog.objects.create(
            project=project,
            kind=AlertLog.Kind.RUN_STOPPED,
            user_id=stop.get("user_id"),
            window_tokens=int(stop.get("tokens") or 0),
            window_cost_usd=Decimal(str(stop.get("cost_usd") or 0)),
            details={
                key: stop.get(key)
                for key in ("run_id", "reason", "source", "llm_calls", "plan", "feature", "agent")
            },
        )
        transaction.on_commit(_dispatch_later(alert.pk), robust=True)
    return alert.pk


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


@shared_task(name="weckr_django.check_budgets", autoretry_for=_DB_ERRORS, max_retries=3)
def check_budgets(project_id: str, user_ids: Sequence[str]) -> list[int]:
    """Soft-cap, cap-reached and margin alerts, each at most once per user per month,
    and one alert per plan name per month for calls on a plan Weckr does not know.
    Also deletes the project's cap reservations that stopped counting."""
    project = Project.objects.filter(pk=project_id).first()
    if project is None:
        return []
    month = month_start(project)
    month_begins, _ = month_bounds(project, month)
    keys = [key for key in dict.fromkeys(user_ids) if key != ANONYMOUS_KEY]
    rows = MonthlyUserSpend.objects.filter(project=project, month=month, user_key__in=keys)
    created: list[int] = []
    unknown: set[str | None] = set()
    for row in rows:
        match = match_plan(project, row.plan_name)
        if not match.known:
            unknown.add(row.plan_name)
        terms = match.terms
        if terms is None:
            continue
        spend = Decimal(row.cost_usd)
        wanted: list[tuple[str, dict[str, Any]]] = []
        cap = terms.monthly_cap_usd
        if cap is not None and cap > 0:
            info = {"plan": terms.name, "spend": f"{spend:.4f}", "cap": f"{cap:.2f}"}
            if spend >= cap:
                wanted.append((AlertLog.Kind.CAP_REACHED, info))
            elif terms.soft_alert_percent and spend * 100 >= cap * terms.soft_alert_percent:
                wanted.append((AlertLog.Kind.SOFT_CAP, info))
        threshold = project.margin_alert_threshold_usd
        if threshold is not None and match.known:
            revenue = terms.monthly_price_usd
            margin = revenue - spend
            if margin < threshold:
                wanted.append(
                    (
                        AlertLog.Kind.MARGIN,
                        {
                            "plan": terms.name,
                            "revenue": f"{revenue:.2f}",
                            "spend": f"{spend:.4f}",
                            "margin": f"{margin:.2f}",
                            "threshold": f"{threshold:.2f}",
                        },
                    )
                )
        for kind, details in wanted:
            alert_id = _alert_once(
                project, kind, month_begins, details, user_id=row.user_key, per_user=True
            )
            if alert_id is not None:
                created.append(alert_id)
    if unknown and configured_plans(project):
        created.extend(_unknown_plan_alerts(project, month_begins, unknown))
    # Housekeeping, here rather than in a task of its own: holds that stopped counting.
    delete_expired_reservations(project)
    return created


def _unknown_plan_alerts(
    project: Project, month_begins: datetime, plan_names: set[str | None]
) -> list[int]:
    created = []
    known = [terms.name for terms in configured_plans(project).values()]
    usage = {item.plan_name: item for item in reports.unknown_plan_usage(project, known)}
    for name in sorted(plan_names, key=lambda name: name or ""):
        item = usage.get(name)
        if item is None:
            continue
        details = {
            "plan": item.label,
            "users": item.users,
            "calls": item.calls,
            "cost": f"{item.cost_usd:.4f}",
            "rule": unknown_plan_rule(),
        }
        alert_id = _alert_once(project, AlertLog.Kind.UNKNOWN_PLAN, month_begins, details)
        if alert_id is not None:
            created.append(alert_id)
    return created


@shared_task(name="weckr_django.unknown_plan_refused", autoretry_for=_DB_ERRORS, max_retries=3)
def unknown_plan_refused(project_id: str, plan_name: str | None) -> int | None:
    """Calls on ``plan_name``, which the project does not have, are being refused:
    one alert per plan name and month (the banner reads it too)."""
    project = Project.objects.filter(pk=project_id).first()
    if project is None:
        return None
    month_begins, _ = month_bounds(project, month_start(project))
    label = reports.NO_PLAN_LABEL if plan_name is None else plan_name
    details = {"plan": label, "refused": True, "rule": unknown_plan_rule()}
    return _alert_once(project, AlertLog.Kind.UNKNOWN_PLAN, month_begins, details)


def _alert_once(
    project: Project,
    kind: str,
    month_begins: datetime,
    details: dict[str, Any],
    *,
    user_id: str | None = None,
    per_user: bool = False,
) -> int | None:
    """Create and dispatch an alert unless one of its kind exists this month (for the
    same user, or for the same plan name); the id of the new alert."""
    with transaction.atomic():
        Project.objects.select_for_update().filter(pk=project.pk).first()
        earlier = AlertLog.objects.filter(project=project, kind=kind, created_at__gte=month_begins)
        if per_user:
            earlier = earlier.filter(user_id=user_id)
        else:
            earlier = earlier.filter(details__plan=details["plan"])
        if earlier.exists():
            return None
        alert = AlertLog.objects.create(
            project=project, kind=kind, user_id=user_id, details=details
        )
        transaction.on_commit(_dispatch_later(alert.pk), robust=True)
    return alert.pk


@shared_task(
    bind=True, name="weckr_django.dispatch_alert", autoretry_for=_DB_ERRORS, max_retries=10
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


def _dispatch_later(alert_id: int) -> Callable[[], None]:
    return lambda: run_task(dispatch_alert, alert_id)


def run_task(task: Task[Any, Any], *args: Any) -> None:
    """Queue ``task`` when a broker is configured; otherwise run it in this process
    (see the module docstring), logging rather than raising its errors."""
    route = _task_route()
    if route == "broker":
        task.delay(*args)
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


class LocalTaskRunner:
    """One daemon thread that runs tasks in order when there is no broker.

    Follow-up work after ingest is merged per project while it waits: a burst of
    ingests queues one loop-detection and budget pass over all the users it touched,
    so the queue cannot outgrow the thread under sustained load.
    """

    def __init__(self) -> None:
        # A None task stands for the merged follow-up work of one project.
        self._queue: queue.SimpleQueue[tuple[Task[Any, Any] | None, tuple[Any, ...]]] = (
            queue.SimpleQueue()
        )
        self._follow_ups: dict[str, set[str]] = {}
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._pending = 0
        self._thread: threading.Thread | None = None

    def submit(self, task: Task[Any, Any] | None, args: tuple[Any, ...]) -> None:
        with self._lock:
            self._pending += 1
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name="weckr-local-tasks", daemon=True
                )
                self._thread.start()
        self._queue.put((task, args))

    def submit_follow_up(self, project_id: str, user_keys: Sequence[str]) -> None:
        with self._lock:
            waiting = self._follow_ups.get(project_id)
            if waiting is not None:
                waiting.update(user_keys)
                return
            self._follow_ups[project_id] = set(user_keys)
        self.submit(None, (project_id,))

    @property
    def pending(self) -> int:
        """Queued and running items (a project's merged follow-up counts once)."""
        with self._lock:
            return self._pending

    def wait(self, timeout: float = 5.0) -> bool:
        """Wait until every submitted task has run; False when time ran out."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while self._pending:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._idle.wait(remaining)
        return True

    def _run(self) -> None:
        while True:
            task, args = self._queue.get()
            try:
                # A connection broken since the last task (a restarted server) is
                # replaced, as Django does at the start of each request.
                close_old_connections()
                if task is None:
                    (project_id,) = args
                    with self._lock:
                        user_keys = sorted(self._follow_ups.pop(project_id))
                    _run_here(detect_loops, (project_id, user_keys))
                    _run_here(check_budgets, (project_id, user_keys))
                else:
                    _run_here(task, args)
            finally:
                with self._lock:
                    self._pending -= 1
                    idle = self._pending == 0
                    if idle:
                        self._idle.notify_all()
                if idle:
                    # Give this thread's connections back while there is nothing to do.
                    connections.close_all()


local_tasks = LocalTaskRunner()


def schedule_after_ingest(project_id: str, user_keys: list[str]) -> None:
    """Follow-up work after new usage is committed: loop detection, budget alerts."""
    if _task_route() == "local":
        local_tasks.submit_follow_up(project_id, user_keys)
        return
    run_task(detect_loops, project_id, user_keys)
    run_task(check_budgets, project_id, user_keys)
