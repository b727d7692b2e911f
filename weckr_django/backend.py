"""``DjangoBackend``: caps from this database, usage recorded off the caller's thread.

Installed as the process default by the app at start-up, so ``weckr_core`` clients
and the LangChain / CrewAI handlers inside a Django process need no HTTP hop.

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
import logging
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from typing import Final, TypeVar

from asgiref.sync import sync_to_async
from django.core.exceptions import ImproperlyConfigured
from django.db import InterfaceError, OperationalError, close_old_connections, connection

import weckr_core
from weckr_core.backends import lifecycle
from weckr_core.backends.base import ALLOW, CapDecision, RunStop
from weckr_core.pricing import preload_prices
from weckr_core.records import UsageRecord
from weckr_django.conf import Delivery, effective_delivery, weckr_settings
from weckr_django.models import Project

logger = logging.getLogger("weckr_django")

DEFAULT_PROJECT_NAME: Final = "Default"
MAX_BATCH: Final = 500
_MAX_CACHED_DECISIONS: Final = 10_000
_BROKER_RETRY_DELAYS: Final = (0.5, 2.0, 5.0)
_DB_RETRY_DELAYS: Final = (0.5, 2.0, 5.0)

T = TypeVar("T")
_DecisionKey = tuple[str, str, str]


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


def _outside_event_loop(function: Callable[[], T]) -> T:
    """Run ``function`` (which queries the database) here, or, when called on an event
    loop's thread where Django forbids queries, on a helper thread."""
    global _db_executor
    if not _in_event_loop():
        return function()
    with _db_executor_lock:
        if _db_executor is None:
            _db_executor = concurrent.futures.ThreadPoolExecutor(
                max_workers=2, thread_name_prefix="weckr-db"
            )
        executor = _db_executor
    return executor.submit(_with_fresh_connection, function).result()


def _with_fresh_connection(function: Callable[[], T]) -> T:
    # Helper threads follow CONN_MAX_AGE like request threads do.
    close_old_connections()
    try:
        return function()
    finally:
        close_old_connections()


class DjangoBackend:
    """Backend reading caps from and recording usage into this Django database.

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
        self._project_key: object = None
        self._decisions: dict[_DecisionKey, tuple[float, CapDecision]] = {}
        self._max_queue = max_queue
        self._init_queue()
        lifecycle.watch(self)

    def _init_queue(self) -> None:
        self._lock = threading.Lock()
        self._has_work = threading.Condition(self._lock)
        self._progress = threading.Condition(self._lock)
        self._queue: deque[tuple[int, UsageRecord]] = deque()
        self._next_seq = 0
        self._in_flight_from: int | None = None
        self._worker: threading.Thread | None = None

    # -- project ---------------------------------------------------------------

    def project(self) -> Project:
        key = (self._project_setting, weckr_settings.DEFAULT_PROJECT)
        project = self._project
        if project is None or self._project_key != key:
            project = resolve_default_project(self._project_setting)
            self._project, self._project_key = project, key
        return project

    def _forget_project(self) -> None:
        self._project = None

    # -- caps --------------------------------------------------------------------

    def check(self, user_id: str | None, plan: str | None, model: str) -> CapDecision:
        if user_id is None or not plan:
            return ALLOW
        key = (user_id, plan, model)
        cached = self._fresh_decision(key)
        if cached is not None:
            return cached
        from weckr_django.caps import decide

        try:
            decision = _outside_event_loop(lambda: decide(self.project(), user_id, plan, model))
        except ImproperlyConfigured:
            raise
        except Exception:
            # An outage must not take the product down: allow, and do not cache it.
            logger.exception("Weckr: cap check for user %s failed; allowing the call.", user_id)
            self._forget_project()
            return ALLOW
        ttl = weckr_settings.CAP_CACHE_SECONDS
        if ttl > 0:
            if len(self._decisions) >= _MAX_CACHED_DECISIONS:
                self._decisions.clear()
            self._decisions[key] = (time.monotonic() + ttl, decision)
        return decision

    async def acheck(self, user_id: str | None, plan: str | None, model: str) -> CapDecision:
        """``check`` for the async paths: a cached decision at once, else the query
        through ``sync_to_async``, so the event loop goes on meanwhile."""
        if user_id is None or not plan:
            return ALLOW
        cached = self._fresh_decision((user_id, plan, model))
        if cached is not None:
            return cached
        return await sync_to_async(self.check)(user_id, plan, model)

    def _fresh_decision(self, key: tuple[str, str, str]) -> CapDecision | None:
        if weckr_settings.CAP_CACHE_SECONDS <= 0:
            return None
        cached = self._decisions.get(key)
        return cached[1] if cached is not None and cached[0] > time.monotonic() else None

    def forget_decisions(self, user_ids: Sequence[str | None] | None = None) -> None:
        """Drop cached decisions (of ``user_ids``, or all)."""
        if user_ids is None:
            self._decisions.clear()
            return
        wanted = set(user_ids)
        for key in [key for key in list(self._decisions) if key[0] in wanted]:
            self._decisions.pop(key, None)

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
            return
        with self._lock:
            if len(self._queue) >= self._max_queue:
                _, dropped = self._queue.popleft()
                logger.error(
                    "Weckr: the usage queue is full (%d); event %s was not recorded.",
                    self._max_queue,
                    dropped.event_id,
                )
            self._queue.append((self._next_seq, record))
            self._next_seq += 1
            self._start_worker()
            self._has_work.notify()

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
            target = self._next_seq
            while self._pending_before(target):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._progress.wait(remaining)
        return True

    def _pending_before(self, seq: int) -> bool:
        if self._in_flight_from is not None and self._in_flight_from < seq:
            return True
        return bool(self._queue) and self._queue[0][0] < seq

    def _start_worker(self) -> None:
        # Called with the lock held. After a fork the parent's thread is gone.
        if self._worker is None or not self._worker.is_alive():
            # The worker prices records: import the price database here, not there
            # (see weckr_core.pricing.preload_prices).
            preload_prices()
            self._worker = threading.Thread(
                target=self._run, name="weckr-django-recorder", daemon=True
            )
            self._worker.start()

    def _run(self) -> None:
        try:
            while True:
                with self._lock:
                    while not self._queue:
                        # Idle: give the connection back before sleeping.
                        self._release_connection()
                        self._has_work.wait()
                    count = min(len(self._queue), MAX_BATCH)
                    batch = [self._queue.popleft() for _ in range(count)]
                    self._in_flight_from = batch[0][0]
                records = [record for _, record in batch]
                try:
                    self._deliver(records)
                except Exception:  # a bug here must not stop delivery for good
                    logger.exception(
                        "Weckr: %d usage event(s) were not recorded: %s",
                        len(records),
                        ", ".join(record.event_id for record in records),
                    )
                finally:
                    with self._lock:
                        self._in_flight_from = None
                        self._progress.notify_all()
        finally:
            self._release_connection()

    @staticmethod
    def _release_connection() -> None:
        try:
            close_old_connections()
            connection.close()
        except Exception:
            logger.debug("Weckr: closing the recorder's connection failed.", exc_info=True)

    def _deliver(self, records: list[UsageRecord]) -> None:
        if self.delivery() == "celery":
            self._send_to_celery(records)
        else:
            self._ingest(records)

    def _send_to_celery(self, records: list[UsageRecord]) -> None:
        from weckr_django.tasks import record_usage

        project_id = str(self.project().pk)
        payloads = [record.to_wire() for record in records]
        for attempt, delay in enumerate((*_BROKER_RETRY_DELAYS, None)):
            try:
                record_usage.delay(payloads, project_id)
                return
            except Exception:
                if delay is None:
                    raise
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
        except Exception:
            if len(records) == 1:
                self._forget_project()
                raise
            # One bad row must not lose the batch: ingest one by one, reporting each failure.
            for record in records:
                try:
                    ingest_records(project, [record])
                except Exception:
                    logger.exception("Weckr: usage event %s was not recorded.", record.event_id)
        self.forget_decisions([record.user_id for record in records])

    def _ingest_retrying(self, project: Project, records: list[UsageRecord]) -> None:
        """Ingest, riding out a short database outage (idempotent, so safe to repeat)."""
        from weckr_django.ingest import ingest_records

        on_caller_thread = threading.current_thread() is not self._worker
        for attempt, delay in enumerate((*_DB_RETRY_DELAYS, None)):
            try:
                ingest_records(project, records)
                return
            except (OperationalError, InterfaceError):
                if delay is None or on_caller_thread:
                    raise
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
        self._decisions = {}
        self._project = None


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
