"""``DjangoBackend``: reservations against caps in this database (or the Redis cap
store), usage recorded off the caller's thread.

Installed as the process default by the app at start-up, so ``weckr_core`` clients
and the LangChain / CrewAI integrations inside a Django process need no HTTP hop.
Reserving and settling are ``weckr_django.caps``; this class adds the project, the
event-loop safety and the fail-open / fail-closed rule.

Delivery (``WECKR["DELIVERY"]``):

- ``celery``: one background thread hands batches to the ``record_usage`` task;
- ``thread``: the background thread ingests into the database itself;
- ``auto`` (default): ``celery`` when a broker is configured, else ``thread``;
- ``sync``: ingest on the caller's thread, for tests and scripts.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final, TypeVar

from asgiref.sync import sync_to_async
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import (
    DEFAULT_DB_ALIAS,
    InterfaceError,
    OperationalError,
    close_old_connections,
    connection,
    connections,
)

import weckr_core
from weckr_core.backends import lifecycle
from weckr_core.backends.base import (
    ALLOW,
    Backend,
    CapAction,
    CapDecision,
    CapRequest,
    Reservation,
    RunStop,
)
from weckr_core.batching import BatchWorker
from weckr_core.caps import KnownRefusals
from weckr_core.pricing import preload_prices
from weckr_core.records import UsageRecord
from weckr_core.spool import Spool, SpooledEvent
from weckr_django.conf import Delivery, effective_delivery, weckr_settings
from weckr_django.models import Project

logger = logging.getLogger("weckr_django")

DEFAULT_PROJECT_NAME: Final = "Default"
MAX_BATCH: Final = 500
RECORDER_THREAD: Final = "weckr-django-recorder"
SPOOL_RETRY_SECONDS: Final = 5.0
SPOOL_FILE_NAME: Final = "weckr-spool.sqlite3"
PROJECT_REFRESH_SECONDS: Final = 60.0
_BROKER_RETRY_DELAYS: Final = (0.5, 2.0, 5.0)
_DB_RETRY_DELAYS: Final = (0.5, 2.0, 5.0)

T = TypeVar("T")


def resolve_default_project(reference: str | None = None, *, create: bool = True) -> Project:
    """The project in-process usage belongs to.

    ``reference`` or ``WECKR["DEFAULT_PROJECT"]`` (an id or a name), else the only
    project, else a new project named "Default" when there is none, so the embedded
    setup works with nothing configured. Raises ``ImproperlyConfigured`` when it cannot tell.
    """
    configured = reference or weckr_settings.DEFAULT_PROJECT
    setting = "the DjangoBackend project" if reference else "WECKR['DEFAULT_PROJECT']"
    if configured is not None:
        found: Project | None = None
        with contextlib.suppress(ValueError):
            found = Project.objects.filter(pk=uuid.UUID(configured)).first()
        if found is None:
            matches = list(Project.objects.filter(name=configured)[:2])
            if len(matches) > 1:
                raise ImproperlyConfigured(
                    f"{setting} = {configured!r} matches several projects; use the project id."
                )
            found = matches[0] if matches else None
        if found is None:
            raise ImproperlyConfigured(
                f"{setting} = {configured!r} names no project. Create it in "
                "the admin or with `manage.py weckr_project create`."
            )
        return found
    projects = list(Project.objects.order_by("created_at")[:2])
    if len(projects) == 1:
        return projects[0]
    if not projects:
        if not create:
            raise ImproperlyConfigured("There is no Weckr project yet.")
        project, _ = Project.objects.get_or_create(name=DEFAULT_PROJECT_NAME)
        return project
    default = Project.objects.filter(name=DEFAULT_PROJECT_NAME).order_by("created_at").first()
    if default is not None:
        return default
    raise ImproperlyConfigured(
        "Several Weckr projects exist and WECKR['DEFAULT_PROJECT'] is not set: set it to the "
        "id or name of the project that usage inside this Django process belongs to."
    )


def _in_event_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


_db_executor: concurrent.futures.ThreadPoolExecutor | None = None
_db_executor_lock = threading.Lock()


def _executor() -> concurrent.futures.ThreadPoolExecutor:
    global _db_executor
    with _db_executor_lock:
        if _db_executor is None:
            _db_executor = concurrent.futures.ThreadPoolExecutor(
                max_workers=2, thread_name_prefix="weckr-db"
            )
        return _db_executor


def _outside_event_loop(function: Callable[[], T]) -> T:
    """Run ``function`` (which queries the database) here, or, when called on an event
    loop's thread where Django forbids queries, on a helper thread."""
    if not _in_event_loop():
        return function()
    return _executor().submit(_with_fresh_connection, function).result()


_last_set_up_error = 0.0


def _log_set_up_error(error: ImproperlyConfigured) -> None:
    """Say what is wrong with the set-up, once a minute rather than on every call."""
    global _last_set_up_error
    now = time.monotonic()
    if now - _last_set_up_error >= 60:
        _last_set_up_error = now
        logger.error(
            "Weckr: %s Caps are not enforced and usage is not recorded until this is fixed.",
            error,
        )


def _drop_broken_connections() -> None:
    """After a database error, replace this thread's broken connections, as Django
    does between requests: a thread outside the request cycle (a Celery worker's,
    CrewAI's or LangChain's executor threads, a script's) would otherwise keep a dead
    connection, and every later cap check would fail. A connection inside a
    transaction is left to the code that opened the transaction."""
    for opened in connections.all(initialized_only=True):
        if not opened.in_atomic_block:
            opened.close_if_unusable_or_obsolete()


def _with_fresh_connection(function: Callable[[], T]) -> T:
    # Helper threads follow CONN_MAX_AGE like request threads do.
    close_old_connections()
    try:
        return function()
    finally:
        close_old_connections()


class DjangoBackend(Backend):
    """Backend reserving against caps in, and recording usage into, this Django database.

    ``project`` pins the project (an id or a name); by default it is resolved as
    ``resolve_default_project`` says. ``delivery`` overrides ``WECKR["DELIVERY"]``.
    """

    def __init__(
        self,
        *,
        project: str | None = None,
        delivery: Delivery | None = None,
        max_queue: int = 100_000,
    ) -> None:
        self._project_setting = project
        self._delivery = delivery
        self._project: Project | None = None
        self._last_project: Project | None = None  # kept through an outage
        self._project_key: object = None
        self._project_expires = 0.0
        self._max_queue = max_queue
        self._opened_spool: Spool | None = None
        self._refusals = KnownRefusals()
        self._outage_logged_at: float | None = None
        # For health(), written by the recorder thread.
        self._retries = 0
        self._dropped = 0
        self._last_error: str | None = None
        self._init_queue()
        lifecycle.watch(self)

    def _init_queue(self) -> None:
        self._lock = threading.Lock()
        # Records for "thread" and "celery" delivery, delivered in batches by one
        # thread, which gives its database connection back whenever it runs dry and
        # then sends what the spool holds (what the database or broker refused).
        self._recorder: BatchWorker[UsageRecord] = BatchWorker(
            self._deliver,
            name=RECORDER_THREAD,
            max_batch=MAX_BATCH,
            max_queue=self._max_queue,
            on_drop=self._log_dropped,
            on_idle=self._when_idle,
            idle_every=SPOOL_RETRY_SECONDS,
        )
        self._spool_drain_after = 0.0
        # Settles handed to a helper thread from an event loop, not done yet.
        self._handed_off: set[concurrent.futures.Future[None]] = set()

    # -- project ---------------------------------------------------------------

    def project(self) -> Project:
        """The project, read again every ``PROJECT_REFRESH_SECONDS`` so that settings
        edited in the admin (such as its default output tokens) reach this process."""
        key = (self._project_setting, weckr_settings.DEFAULT_PROJECT)
        project = self._project
        now = time.monotonic()
        if project is None or self._project_key != key or now >= self._project_expires:
            try:
                project = resolve_default_project(self._project_setting)
            except (OperationalError, InterfaceError):
                # The database is away: the project read last (same setting) still
                # names where usage goes; Celery delivery needs nothing more.
                if self._last_project is None or self._project_key != key:
                    raise
                return self._last_project
            self._project = self._last_project = project
            self._project_key = key
            self._project_expires = now + PROJECT_REFRESH_SECONDS
        return project

    def forget_project(self) -> None:
        """Read the project again on next use (after a database outage, or in tests
        whose database is emptied between them)."""
        self._project = None

    # -- caps --------------------------------------------------------------------

    def reserve(self, request: CapRequest) -> CapDecision:
        if not request.capped:
            return ALLOW
        from weckr_django import caps

        return self._deciding(lambda: caps.reserve(self.project(), request), request)

    async def areserve(self, request: CapRequest) -> CapDecision:
        """``reserve`` through ``sync_to_async``, so the event loop goes on meanwhile."""
        if not request.capped:
            return ALLOW
        return await sync_to_async(self.reserve)(request)

    def check(
        self, user_id: str | None, plan: str | None, model: str, account_id: str | None = None
    ) -> CapDecision:
        request = CapRequest(user_id, plan, model, account_id=account_id)
        if not request.capped:
            return ALLOW
        from weckr_django import caps

        return self._deciding(
            lambda: caps.decide(self.project(), user_id, plan, model, account_id), request
        )

    def _deciding(self, decide: Callable[[], CapDecision], request: CapRequest) -> CapDecision:
        """``decide()`` off the event loop. A set-up mistake or an outage allows the
        call (refuses it with ``CAP_FAIL_CLOSED``), loudly, rather than failing the
        view; a user or account the cap refused lately stays refused meanwhile."""
        user_id, account_id, plan = request.user_id, request.account_id, request.plan
        decision: CapDecision | None = None
        try:
            decision = _outside_event_loop(decide)
        except ImproperlyConfigured as error:
            _log_set_up_error(error)
        except Exception as error:
            self._log_outage(user_id or f"(account {account_id})", error)
            self.forget_project()
            _drop_broken_connections()
        if decision is not None and decision.reason != "cap_store_unavailable":
            self._refusals.note(user_id, account_id, plan, decision)
            self._outage_logged_at = None
            return decision
        if decision is None:  # decided here by CAP_FAIL_CLOSED, as the store does
            action: CapAction = "block" if weckr_settings.CAP_FAIL_CLOSED else "allow"
            decision = CapDecision(action, reason="cap_store_unavailable")
        if decision.allowed:
            return self._refusals.recall(user_id, account_id, plan) or decision
        return decision

    def _log_outage(self, user_id: str, error: Exception) -> None:
        """The first failure of an outage with its traceback, then a line a minute."""
        now = time.monotonic()
        last = self._outage_logged_at
        if last is None:
            logger.error("Weckr: cap check for user %s failed.", user_id, exc_info=error)
        elif now - last >= 60:
            logger.error("Weckr: cap checks are still failing: %s", error)
        else:
            return
        self._outage_logged_at = now

    def settle(self, reservation: Reservation, record: UsageRecord) -> None:
        from weckr_django import caps

        self._off_caller(lambda: caps.settle(self.project(), reservation, record))

    def release(self, reservation: Reservation) -> None:
        from weckr_django import caps

        self._off_caller(
            lambda: caps.release(
                self.project(), reservation.id, reservation.user_id, reservation.account_id
            )
        )

    def _off_caller(self, function: Callable[[], None]) -> None:
        """Run ``function`` (which writes to the database) now; on an event loop's
        thread, on a helper thread without waiting for it."""
        if not _in_event_loop():
            function()
            return
        future = _executor().submit(_with_fresh_connection, function)
        with self._lock:
            self._handed_off.add(future)
        future.add_done_callback(self._handed_off_done)

    def _handed_off_done(self, future: concurrent.futures.Future[None]) -> None:
        with self._lock:
            self._handed_off.discard(future)
        error = future.exception()
        if error is not None:
            logger.error("Weckr: updating a cap reservation failed: %s", error, exc_info=error)

    # -- recording ---------------------------------------------------------------

    def delivery(self) -> Delivery:
        mode = self._delivery or weckr_settings.DELIVERY
        return effective_delivery() if mode == "auto" else mode

    def record(self, record: UsageRecord) -> None:
        if self.delivery() == "sync":
            try:
                _outside_event_loop(lambda: self._ingest([record]))
            except Exception:
                # Recording must never break the caller's LLM call; say what was lost.
                logger.exception("Weckr: usage event %s was not recorded.", record.event_id)
                _drop_broken_connections()
            return
        if not self._recorder.pending:
            # The recorder thread prices records: import the price database here,
            # not there (see weckr_core.pricing.preload_prices).
            preload_prices()
        self._recorder.put(record)

    def record_run_stop(self, stop: RunStop) -> None:
        """Keep a loop-guard stop as an alert on the project's channels (off the
        caller's thread unless delivery is "sync")."""
        from weckr_django import tasks

        payload = tasks.run_stop_payload(stop)
        _outside_event_loop(
            lambda: tasks.run_task(tasks.record_run_stop, str(self.project().pk), payload)
        )

    def flush(self, timeout: float = 5.0) -> bool:
        deadline = time.monotonic() + timeout
        with self._lock:
            handed_off = list(self._handed_off)
        if not self._recorder.flush(timeout):
            return False
        _, not_done = concurrent.futures.wait(
            handed_off, timeout=max(0.0, deadline - time.monotonic())
        )
        return not not_done

    def _spool(self, *, create: bool = True) -> Spool | None:
        """The spool ``WECKR["SPOOL"]`` names, opened on first use; with ``create``
        False, None while its file does not exist (nothing was ever spooled)."""
        path = spool_path()
        if path is None or (not create and not path.exists()):
            return None
        spool = self._opened_spool
        if spool is None or spool.path != path:
            spool = self._opened_spool = Spool(path)
        return spool

    def health(self) -> dict[str, Any]:
        """See ``Backend.health``: ``queued`` counts the events waiting for the
        recorder thread ("thread" and "celery" delivery); ``retries`` the batches
        tried again; ``dropped`` the events lost to a full queue or spool."""
        spool = self._spool(create=False)
        stats = None if spool is None else spool.stats()
        return {
            "queued": self._recorder.pending,
            "spooled": None if stats is None else stats.events,
            "oldest_spooled_seconds": None if stats is None else stats.oldest_age_seconds,
            "retries": self._retries,
            "dropped": self._dropped,
            "last_error": self._last_error,
        }

    @staticmethod
    def _release_connection() -> None:
        try:
            close_old_connections()
            connection.close()
        except Exception:
            logger.debug("Weckr: closing the recorder's connection failed.", exc_info=True)

    def _log_dropped(self, records: list[UsageRecord]) -> None:
        self._dropped += len(records)
        logger.error(
            "Weckr: the usage queue is full; %d event(s) were not recorded: %s",
            len(records),
            ", ".join(record.event_id for record in records),
        )

    def _deliver(self, records: list[UsageRecord]) -> None:
        """One batch of the recorder thread. What the database or the broker cannot
        take now goes to the spool; without one, it is logged by id."""
        try:
            self._deliver_now(records)
        except Exception as error:
            self._last_error = f"{type(error).__name__}: {error}"
            spool = self._spool()
            if spool is None or not _unavailable(error, self.delivery()):
                logger.exception(
                    "Weckr: %d usage event(s) were not recorded: %s",
                    len(records),
                    ", ".join(record.event_id for record in records),
                )
                return
            refused = set(spool.put([(r.event_id, _wire_json(r)) for r in records]))
            kept = len(records) - len(refused)
            logger.warning(
                "Weckr: %d usage event(s) kept in the spool %s until the %s is back: %s",
                kept,
                spool.path,
                "broker" if self.delivery() == "celery" else "database",
                error,
            )
            if refused:
                self._dropped += len(refused)
                logger.error(
                    "Weckr: the spool is full; %d event(s) were not recorded: %s",
                    len(refused),
                    ", ".join(sorted(refused)),
                )
            self._spool_drain_after = time.monotonic() + SPOOL_RETRY_SECONDS

    def _deliver_now(self, records: list[UsageRecord]) -> None:
        if self.delivery() == "celery":
            self._send_to_celery(records)
        else:
            self._ingest(records)

    def _when_idle(self) -> None:
        self._release_connection()
        if time.monotonic() >= self._spool_drain_after:
            self._drain_spool()

    def _drain_spool(self) -> None:
        """Deliver what the spool holds, oldest first, until it is empty or delivery
        fails again (then again ``SPOOL_RETRY_SECONDS`` later)."""
        spool = self._spool(create=False)
        if spool is None:
            return
        while True:
            try:
                claimed, _ = spool.deliver_oldest(MAX_BATCH, self._deliver_spooled)
            except Exception as error:
                self._retries += 1
                self._last_error = f"{type(error).__name__}: {error}"
                self._spool_drain_after = time.monotonic() + SPOOL_RETRY_SECONDS
                logger.warning("Weckr: the spool's events are not delivered yet: %s", error)
                self._release_connection()
                return
            if not claimed:
                return

    def _deliver_spooled(self, events: list[SpooledEvent]) -> list[str]:
        """Deliver spooled events whole (raises when the database or broker is still
        away); an event that cannot be read is logged and dropped."""
        from weckr_django.wire import parse_event

        records = []
        for event in events:
            try:
                records.append(parse_event(json.loads(event.body)))
            except Exception:  # written by us from a valid record: not expected
                logger.exception("Weckr: spooled event %s is unreadable.", event.event_id)
        self._deliver_now(records)
        return []  # all delivered

    def _send_to_celery(self, records: list[UsageRecord]) -> None:
        from weckr_django.tasks import PUBLISH_RETRY, record_usage

        project_id = str(self.project().pk)
        payloads = [record.to_wire() for record in records]
        for attempt, delay in enumerate((*_BROKER_RETRY_DELAYS, None)):
            try:
                # No result is awaited (subscribing to one waits ~20 s for a Redis
                # that is down), and Celery's retries are short: ours, then the
                # spool, take over.
                record_usage.apply_async(
                    (payloads, project_id), ignore_result=True, retry_policy=PUBLISH_RETRY
                )
                return
            except Exception:
                if delay is None:
                    raise
                self._retries += 1
                logger.warning(
                    "Weckr: queueing %d usage event(s) failed (attempt %d); retrying.",
                    len(records),
                    attempt + 1,
                    exc_info=True,
                )
                time.sleep(delay)

    def _ingest(self, records: list[UsageRecord]) -> None:
        from weckr_django.ingest import ingest_records

        records = _validated(records)
        if not records:
            return
        project = self.project()
        try:
            self._ingest_retrying(project, records)
        except (OperationalError, InterfaceError):
            raise  # the database is away: the batch is kept whole (spool) or reported
        except Exception:
            if len(records) == 1:
                self.forget_project()
                raise
            # One bad row must not lose the batch: ingest one by one, reporting each failure.
            for record in records:
                try:
                    ingest_records(project, [record])
                except Exception:
                    logger.exception("Weckr: usage event %s was not recorded.", record.event_id)

    def _ingest_retrying(self, project: Project, records: list[UsageRecord]) -> None:
        """Ingest, riding out a short database outage (idempotent, so safe to repeat)."""
        from weckr_django.ingest import ingest_records

        on_caller_thread = threading.current_thread().name != RECORDER_THREAD
        for attempt, delay in enumerate((*_DB_RETRY_DELAYS, None)):
            try:
                ingest_records(project, records)
                return
            except (OperationalError, InterfaceError):
                if delay is None or on_caller_thread:
                    raise
                self._retries += 1
                logger.warning(
                    "Weckr: database unavailable recording %d event(s) (attempt %d); retrying.",
                    len(records),
                    attempt + 1,
                    exc_info=True,
                )
                close_old_connections()
                connection.close()
                time.sleep(delay)

    def _after_fork_in_child(self) -> None:
        self._init_queue()
        self._project = None


def spool_path() -> Path | None:
    """``WECKR["SPOOL"]`` as a path. "auto": beside the default database when that is
    a SQLite file, else in ``settings.BASE_DIR`` when the app can write there, else
    no spool."""
    setting = weckr_settings.SPOOL
    if setting is None:
        return None
    if setting != "auto":
        return Path(setting)
    database = connections[DEFAULT_DB_ALIAS].settings_dict
    name = str(database.get("NAME") or "")
    if database.get("ENGINE", "").endswith("sqlite3") and name and "memory" not in name:
        return Path(name).resolve().parent / SPOOL_FILE_NAME
    base = getattr(settings, "BASE_DIR", None)
    if base is not None and os.access(base, os.W_OK):
        return Path(base) / SPOOL_FILE_NAME
    return None


def _unavailable(error: BaseException, delivery: Delivery) -> bool:
    """The database (or, with Celery, the broker) could not be reached: worth
    keeping the events for later, rather than a bad event."""
    if delivery == "celery":
        return True  # the broker refused after retries
    return isinstance(error, OperationalError | InterfaceError)


def _wire_json(record: UsageRecord) -> bytes:
    return json.dumps(record.to_wire()).encode()


def _validated(records: list[UsageRecord]) -> list[UsageRecord]:
    """The records that pass the server's wire rules (opaque user ids, sane token
    counts), the same rules the Celery path and the HTTP API apply. The rest are logged."""
    from weckr_django.wire import WireError, parse_event

    valid = []
    for record in records:
        try:
            valid.append(parse_event(record.to_wire()))
        except WireError as error:
            logger.error(
                "Weckr: usage event %s was not recorded: %s", record.event_id, error.message
            )
    return valid


def install_default_backend() -> DjangoBackend | None:
    """Make a ``DjangoBackend`` the process default unless another backend was
    configured explicitly. Queries nothing."""
    previous = weckr_core.configure(None)
    if previous is not None and not isinstance(previous, DjangoBackend):
        weckr_core.configure(previous)
        return None
    backend = previous if isinstance(previous, DjangoBackend) else DjangoBackend()
    weckr_core.configure(backend)
    return backend
