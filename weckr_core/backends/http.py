"""Client of the Weckr wire protocol, for processes that run outside Django.

``reserve`` asks ``POST /api/v1/reserve`` before a call on a capped plan, and
``release`` drops a hold with ``DELETE /api/v1/reserve/<id>``; a server without
reservations (the published weckr-sdk's protocol) is asked ``GET /api/v1/check``
instead, cached. ``record`` queues the event; one background thread sends the queue
in batches to ``POST /api/v1/log/batch`` (or one by one to ``POST /api/v1/log``)
over a keep-alive ``httpx.Client``, retrying transient failures. The ``x-api-key``
header and the event payload are those of weckr-sdk.
"""

from __future__ import annotations

import asyncio
import enum
import json
import logging
import math
import os
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any, Final, get_args
from urllib.parse import quote, urlencode

import httpx

from weckr_core.backends import lifecycle
from weckr_core.backends.base import (
    ALLOW,
    Backend,
    CapAction,
    CapDecision,
    CapRequest,
    Reservation,
)
from weckr_core.backends.lifecycle import ATEXIT_FLUSH_SECONDS
from weckr_core.batching import BatchWorker
from weckr_core.caps import KnownRefusals
from weckr_core.errors import CapKind, WeckrConfigError
from weckr_core.pricing import preload_prices, price_record
from weckr_core.records import UsageRecord
from weckr_core.spool import DEFAULT_MAX_EVENTS, Spool

DEFAULT_LOG_ENDPOINT: Final = "https://app.useweckr.com/api/v1/log"
DEFAULT_CHECK_ENDPOINT: Final = "https://app.useweckr.com/api/v1/check"
SERVER_MAX_BATCH_SIZE: Final = 500
# weckr_django refuses request bodies over 1 MiB (413); batches stay under this.
MAX_BATCH_BYTES: Final = 900_000
MAX_RETRY_AFTER_SECONDS: Final = 30.0
# After a failed cap decision, calls fail open without asking for this long.
SERVER_DOWN_SECONDS: Final = 2.0
# With a spool, how often the sender tries again what the server did not take.
SPOOL_RETRY_SECONDS: Final = 2.0
_MAX_CACHED_DECISIONS: Final = 10_000
_REASONS: Final = get_args(CapKind)

logger = logging.getLogger("weckr")

ErrorHandler = Callable[[BaseException], None]
_DecisionKey = tuple[str | None, str | None, str, str]  # user, account, plan, model
_UncappedKey = tuple[str | None, bool, bool]  # plan, names a user, names an account
_Event = tuple[str, bytes]  # event id, its JSON


def _uncapped_key(request: CapRequest) -> _UncappedKey:
    return (request.plan, bool(request.user_id), bool(request.account_id))


@dataclass(frozen=True, slots=True)
class _Release:
    """A hold to drop: the ``DELETE`` URL of its reservation."""

    url: str


class _Drain:
    """Asks the sender to send the spool now (``flush``)."""


_DRAIN: Final = _Drain()
_Work = UsageRecord | _Release | _Drain


def _is_urgent(item: _Work) -> bool:
    return not isinstance(item, UsageRecord) or item.reservation_id is not None


@dataclass(slots=True)
class _Health:
    """Counters for ``health()``, written by the sender thread."""

    retries: int = 0
    dropped: int = 0
    last_error: str | None = None
    last_status: int | None = None  # the HTTP status of the last failure, if any
    last_cause: BaseException | None = None  # its exception, if any
    last_attempts: int = 0  # attempts made for the last body not delivered
    retry_after: float = 0.0  # the server's last Retry-After, in seconds


class WeckrBackendError(Exception):
    """What ``on_error`` receives: a cap check or reservation that failed (the call
    was allowed), a hold not released, or usage events the server did not take
    (``event_ids``). The underlying exception, if any, is in ``__cause__``."""

    def __init__(
        self, message: str, *, status_code: int | None = None, event_ids: Sequence[str] = ()
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.event_ids = tuple(event_ids)


class _Unset(enum.Enum):
    TOKEN = enum.auto()


class _PendingCheck:
    """One in-flight ``/check`` request that concurrent callers of the same key share."""

    __slots__ = ("decision", "done", "error")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.decision = ALLOW
        self.error: WeckrConfigError | None = None


class HttpBackend(Backend):
    """Backend that talks to a Weckr server (weckr_django or app.useweckr.com).

    Cap decisions fail open on outages (5xx, 429, network errors, timeouts, bad
    JSON; reported through ``on_error``) and fail closed on a wrong (401) or revoked
    (403) key by raising ``WeckrConfigError``. ``reserve_endpoint`` defaults to
    ``endpoint`` with ``/log`` replaced by ``/reserve``; None, or a server answering
    404 or 405 there, decides with ``check`` alone.

    Usage events are never dropped silently: events the server rejects, events still
    failing after ``max_retries`` and events pushed out of a full queue are reported
    through ``on_error`` (or logged to the ``weckr`` logger when there is no handler).
    A batch goes out when ``max_batch_size`` events are queued, ``linger_seconds``
    after its first event was queued, or at once when ``flush`` is waiting or the
    queue holds the event of a reserved call: until that event arrives, the
    reservation (the call's worst-case estimate) keeps holding the user's budget.
    Batches are split to stay under the server's body limit. ``batch_endpoint``
    defaults to ``endpoint + "/batch"``; None sends events one by one (a server
    answering 404 there is switched to that too). Retry ``i`` waits
    ``backoff_seconds[i]`` (the last value repeats).
    ``close()``, or leaving a ``with`` block, flushes and releases the connections;
    at interpreter exit pending events get ``ATEXIT_FLUSH_SECONDS`` to go out.
    """

    def __init__(
        self,
        api_key: str,
        endpoint: str = DEFAULT_LOG_ENDPOINT,
        check_endpoint: str = DEFAULT_CHECK_ENDPOINT,
        *,
        batch_endpoint: str | _Unset | None = _Unset.TOKEN,
        cache_ttl_seconds: float = 5.0,
        check_timeout_seconds: float = 3.0,
        send_timeout_seconds: float = 10.0,
        max_batch_size: int = SERVER_MAX_BATCH_SIZE,
        max_queue: int = 10_000,
        max_retries: int = 3,
        backoff_seconds: Sequence[float] = (0.5, 2.0, 8.0),
        linger_seconds: float = 0.5,
        on_error: ErrorHandler | None = None,
        reserve_endpoint: str | _Unset | None = _Unset.TOKEN,
        spool: str | os.PathLike[str] | None = None,
        spool_max_events: int = DEFAULT_MAX_EVENTS,
    ) -> None:
        if not api_key:
            raise WeckrConfigError("invalid_api_key", "Weckr: HttpBackend needs an API key.")
        if not 1 <= max_batch_size <= SERVER_MAX_BATCH_SIZE:
            raise ValueError(f"max_batch_size must be between 1 and {SERVER_MAX_BATCH_SIZE}")
        if max_queue < 1 or max_retries < 0:
            raise ValueError("max_queue must be at least 1 and max_retries at least 0")
        if linger_seconds < 0:
            raise ValueError("linger_seconds must be >= 0")
        if not backoff_seconds or min(backoff_seconds) < 0:
            raise ValueError("backoff_seconds must be a non-empty sequence of delays >= 0")
        self.endpoint = endpoint
        self.check_endpoint = check_endpoint
        self.batch_endpoint = (
            endpoint.rstrip("/") + "/batch" if batch_endpoint is _Unset.TOKEN else batch_endpoint
        )
        self.reserve_endpoint = (
            _default_reserve_endpoint(endpoint, check_endpoint)
            if reserve_endpoint is _Unset.TOKEN
            else reserve_endpoint
        )
        self._headers = {"x-api-key": api_key, "user-agent": "weckr-core"}
        self._cache_ttl = cache_ttl_seconds
        self._check_timeout = check_timeout_seconds
        self._send_timeout = send_timeout_seconds
        self._max_batch_size = max_batch_size
        self._max_queue = max_queue
        self._max_retries = max_retries
        self._backoff = tuple(backoff_seconds)
        self._linger = linger_seconds
        self._on_error = on_error
        # Events written here before each send, kept until delivered (see spool.py).
        self._spool = None if spool is None else Spool(spool, max_events=spool_max_events)
        self._health = _Health()
        # Plain data, kept by a forked child: (decision, expiry) per check key, and
        # the expiry of "this plan has no cap" per plan name.
        self._decisions: dict[_DecisionKey, tuple[CapDecision, float]] = {}
        # Plans the server caps nothing on, for calls naming a user, an account or
        # both (a plan may cap accounts only, or users only).
        self._uncapped_plans: dict[_UncappedKey, float] = {}
        # The sender prices events; importing the price database there would race
        # with SDKs that read sys.modules without the import lock on other threads.
        preload_prices()
        self._init_state()
        lifecycle.watch(self)

    def _init_state(self) -> None:
        # Everything that must not cross a fork: locks, the thread, connections, queue.
        self._check_lock = threading.Lock()
        self._pending_checks: dict[_DecisionKey, _PendingCheck] = {}
        self._refusals = KnownRefusals()  # fail open, except for users refused lately
        self._down_until = 0.0  # no decision is asked for until then
        self._in_outage = False  # the outage was reported
        self._api_client: httpx.Client | None = None

        # Events and releases, sent by one thread; reserved calls' events and
        # releases go without lingering (until an event arrives, its reservation
        # keeps holding the user's budget).
        self._sender: BatchWorker[_Work] = BatchWorker(
            self._send,
            name="weckr-sender",
            max_batch=self._max_batch_size,
            # With a spool, events go to disk at once (a kill -9 loses only what
            # was queued during the send in progress); batches form meanwhile.
            linger=self._linger if self._spool is None else 0.0,
            max_queue=self._max_queue,
            urgent=_is_urgent,
            on_drop=self._report_dropped,
            # With a spool, what the server did not take is tried again while idle.
            on_idle=None if self._spool is None else self._drain_when_due,
            idle_every=None if self._spool is None else SPOOL_RETRY_SECONDS,
        )
        self._send_client: httpx.Client | None = None  # the sender thread's own
        self._drain_after = 0.0  # monotonic time before which the spool is left alone
        self._drain_failures = 0  # failed drains in a row
        self._stopping = threading.Event()  # ends retries' waits when closing

    def _after_fork_in_child(self) -> None:
        # The parent keeps delivering its own queue and owns the sockets.
        self._init_state()

    # -- cap decisions -----------------------------------------------------------

    def reserve(self, request: CapRequest) -> CapDecision:
        """``POST`` the call to ``reserve_endpoint``: the server decides and, for a
        capped plan, holds the call's worst-case cost until its event arrives."""
        decision = self._decided_without_asking(request)
        if decision is not None:
            return decision
        url = self.reserve_endpoint
        if url is None:
            return self.check(request.user_id, request.plan, request.model, request.account_id)
        if self._server_down():
            return self._while_down(request)
        body = {
            "userId": request.user_id,
            "accountId": request.account_id,
            "planName": request.plan,
            "model": request.model,
            "provider": request.provider,
            "inputTokens": request.prompt_tokens(),
            "maxOutputTokens": request.max_output_tokens,
        }
        response = self._ask("cap reservation", "POST", url, json=body)
        if response is None:
            return self._while_down(request)
        if response.status_code in (404, 405):
            self._use_check_only(url, response.status_code)
            return self.check(request.user_id, request.plan, request.model, request.account_id)
        decision = self._read_decision("cap reservation", response, request)
        if decision is None:
            return self._while_down(request)
        self._refusals.note(request.user_id, request.account_id, request.plan, decision)
        if decision.allowed and decision.cap is None and decision.reason is None:
            self._remember_uncapped(_uncapped_key(request))
        return decision

    async def areserve(self, request: CapRequest) -> CapDecision:
        """``reserve`` for the async paths: a decision known without asking at once,
        else the request on a worker thread, so the event loop goes on meanwhile."""
        decision = self._decided_without_asking(request)
        if decision is not None:
            return decision
        return await asyncio.to_thread(self.reserve, request)

    def settle(self, reservation: Reservation, record: UsageRecord) -> None:
        """Nothing to do here: the record carries ``reservation_id``, and the server
        settles the hold when it stores the event."""

    def release(self, reservation: Reservation) -> None:
        """Drop the hold of a call that was never made: ``DELETE`` it (with the
        ``userId`` it was for), from the sender thread, as this may be called on an
        event loop. Failures are reported; the hold then lasts until it expires."""
        endpoint = self.reserve_endpoint
        if endpoint is None:
            return
        url = f"{endpoint.rstrip('/')}/{quote(reservation.id, safe='')}"
        holders = {"userId": reservation.user_id, "accountId": reservation.account_id}
        query = {name: value for name, value in holders.items() if value is not None}
        if query:
            url += "?" + urlencode(query)
        if not self._sender.put(_Release(url)):
            self._report(f"Weckr: backend is closed; reservation {reservation.id} not released.")

    def check(
        self, user_id: str | None, plan: str | None, model: str, account_id: str | None = None
    ) -> CapDecision:
        request = CapRequest(user_id, plan, model, account_id=account_id)
        if not request.capped or not plan:
            return ALLOW
        key = (user_id, account_id, plan, model)
        # A fresh decision is read without the lock (a dict read is atomic, and the
        # entries are immutable tuples); misses take it.
        entry = self._decisions.get(key)
        if entry is not None and entry[1] > time.monotonic():
            return entry[0]
        with self._check_lock:
            cached = self._fresh_decision(key)
            if cached is not None:
                return cached
            pending = self._pending_checks.get(key)
            leader = pending is None
            if pending is None:
                pending = self._pending_checks[key] = _PendingCheck()
        if not leader:
            pending.done.wait()
            if pending.error is not None:
                raise WeckrConfigError(pending.error.code, str(pending.error))
            return pending.decision

        decision: CapDecision | None = None
        try:
            if not self._server_down():
                decision = self._fetch_check(request)
        except WeckrConfigError as error:
            pending.error = error
            raise
        finally:
            with self._check_lock:
                del self._pending_checks[key]
                if decision is not None:
                    self._cache_decision(key, decision)
            if decision is not None:
                self._refusals.note(user_id, account_id, plan, decision)
            pending.decision = decision or self._while_down(request)
            pending.done.set()
        return pending.decision

    def _server_down(self) -> bool:
        """A decision failed a moment ago: calls do not wait for the server again
        until ``SERVER_DOWN_SECONDS`` have passed."""
        return time.monotonic() < self._down_until

    def _while_down(self, request: CapRequest) -> CapDecision:
        """Fail open, except for a user or account the cap refused lately."""
        return self._refusals.recall(request.user_id, request.account_id, request.plan) or ALLOW

    def _server_failed(
        self,
        message: str,
        cause: BaseException | None = None,
        *,
        status_code: int | None = None,
    ) -> None:
        """Report the first failure of an outage (not one per call), and stop
        asking for ``SERVER_DOWN_SECONDS``."""
        if not self._in_outage:
            self._in_outage = True
            self._report(message, cause, status_code=status_code)
        self._down_until = time.monotonic() + SERVER_DOWN_SECONDS

    def _decided_without_asking(self, request: CapRequest) -> CapDecision | None:
        """The decision when no request is needed: no user or account, a plan known
        to have no cap, or (without reservations) a cached check. None otherwise."""
        if not request.capped:
            return ALLOW
        expiry = self._uncapped_plans.get(_uncapped_key(request))
        if expiry is not None and expiry > time.monotonic():
            return ALLOW
        if self.reserve_endpoint is None:
            if not request.plan:
                return ALLOW
            return self._fresh_decision(
                (request.user_id, request.account_id, request.plan, request.model)
            )
        return None

    def _fresh_decision(self, key: _DecisionKey) -> CapDecision | None:
        cached = self._decisions.get(key)
        return cached[0] if cached is not None and cached[1] > time.monotonic() else None

    def _cache_decision(self, key: _DecisionKey, decision: CapDecision) -> None:
        # Called with self._check_lock held. Lock-free readers see the old dict or
        # the new one.
        now = time.monotonic()
        if len(self._decisions) >= _MAX_CACHED_DECISIONS:
            self._decisions = {k: v for k, v in self._decisions.items() if v[1] > now}
        self._decisions[key] = (decision, now + self._cache_ttl)

    def _remember_uncapped(self, key: _UncappedKey) -> None:
        now = time.monotonic()
        with self._check_lock:
            if len(self._uncapped_plans) >= _MAX_CACHED_DECISIONS:
                self._uncapped_plans = {k: v for k, v in self._uncapped_plans.items() if v > now}
            self._uncapped_plans[key] = now + self._cache_ttl

    def _use_check_only(self, url: str, status: int) -> None:
        with self._check_lock:
            if self.reserve_endpoint != url:
                return  # another thread switched already
            self.reserve_endpoint = None
        logger.warning(
            "Weckr: %s answered HTTP %s: the server has no reservations; deciding with "
            "cached cap checks (%s) instead.",
            url,
            status,
            self.check_endpoint,
        )

    def _fetch_check(self, request: CapRequest) -> CapDecision | None:
        """The server's decision; None (reported) when the check failed and the call
        is allowed without caching. Raises ``WeckrConfigError`` on 401 and 403."""
        wanted = {
            "userId": request.user_id,
            "accountId": request.account_id,
            "planName": request.plan,
            "model": request.model,
        }
        params = {name: value for name, value in wanted.items() if value}
        response = self._ask("cap check", "GET", self.check_endpoint, params=params)
        return None if response is None else self._read_decision("cap check", response)

    def _ask(self, what: str, method: str, url: str, **options: Any) -> httpx.Response | None:
        """The server's answer; None (reported) when there is none. Raises
        ``WeckrConfigError`` on 401 and 403."""
        try:
            response = self._api().request(method, url, **options)
        except Exception as error:  # network errors, timeouts, a closed client: fail open
            self._server_failed(
                f"Weckr: {what} failed ({_describe(error)}); allowing calls.", error
            )
            return None
        status = response.status_code
        if status in (401, 403):
            raise WeckrConfigError(
                "invalid_api_key" if status == 401 else "forbidden",
                f"Weckr: {what} rejected with HTTP {status}: the API key is "
                f"{'unknown' if status == 401 else 'revoked'}. "
                f"Server said: {_server_message(response)}",
            )
        return response

    def _read_decision(
        self, what: str, response: httpx.Response, request: CapRequest | None = None
    ) -> CapDecision | None:
        status = response.status_code
        if not response.is_success:
            message = (
                f"Weckr: {what} failed with HTTP {status} ({_server_message(response)}); "
                "allowing calls."
            )
            if status == 429 or status >= 500:
                self._server_failed(message, status_code=status)
            else:  # a request the server refuses: not an outage, said each time
                self._report(message, status_code=status)
            return None
        try:
            decision = _parse_decision(response.json(), request)
        except ValueError as error:
            self._server_failed(
                f"Weckr: unreadable {what} response ({error}); allowing calls.", error
            )
            return None
        self._down_until = 0.0
        self._in_outage = False
        return decision

    def _api(self) -> httpx.Client:
        """The client of the callers' threads (decisions), shared by them."""
        with self._check_lock:
            if self._api_client is None:
                self._api_client = httpx.Client(headers=self._headers, timeout=self._check_timeout)
            return self._api_client

    # -- usage events ------------------------------------------------------------

    def record(self, record: UsageRecord) -> None:
        if not self._sender.put(record):
            self._report(
                f"Weckr: backend is closed; event {record.event_id} not sent.",
                event_ids=[record.event_id],
            )

    def flush(self, timeout: float = 5.0) -> bool:
        """Send what is queued at once; with a spool, until the spool is empty too.
        False when time ran out."""
        deadline = time.monotonic() + timeout
        if not self._sender.flush(timeout):
            return False
        if self._spool is None:
            return True
        while self._spool.stats().events:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            self._drain_after = 0.0
            if not (self._sender.put(_DRAIN) and self._sender.flush(remaining)):
                return False
            if self._spool.stats().events:
                time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))
        return True

    def health(self) -> dict[str, Any]:
        """Where delivery stands: events queued in memory, spooled on disk (and the
        age of the oldest), retries, events dropped, and the last error."""
        spooled = None if self._spool is None else self._spool.stats()
        return {
            # In memory only (with a spool, what has not reached the disk yet).
            "queued": self._sender.pending,
            "spooled": None if spooled is None else spooled.events,
            "oldest_spooled_seconds": None if spooled is None else spooled.oldest_age_seconds,
            "retries": self._health.retries,
            "dropped": self._health.dropped,
            "last_error": self._health.last_error,
        }

    def close(self, timeout: float = ATEXIT_FLUSH_SECONDS) -> None:
        """Flush for up to ``timeout`` seconds, then stop the sender and release the
        connections. Events not delivered by then are reported as not sent."""
        deadline = time.monotonic() + timeout
        self._sender.flush(timeout)
        self._stopping.set()
        leftovers = self._sender.close(max(0.0, deadline - time.monotonic()))
        lifecycle.unwatch(self)
        records = [item for item in leftovers if isinstance(item, UsageRecord)]
        unreleased = sum(isinstance(item, _Release) for item in leftovers)
        if records and self._spool is not None:
            # Kept on disk: the next process to open the spool sends them.
            self._spool_events(self._encode(records))
            records = []
        events = [record.event_id for record in records]
        if self._spool is not None:
            left = self._spool.stats().events
            if left:
                logger.warning(
                    "Weckr: %d event(s) stay in the spool %s until a backend opens it again.",
                    left,
                    self._spool.path,
                )
            self._spool.close()
        if events:
            self._report(
                f"Weckr: backend closed with {len(events)} event(s) not sent.",
                event_ids=events,
            )
        if unreleased:
            self._report(
                f"Weckr: backend closed with {unreleased} reservation(s) not released; "
                "they hold budget until the server expires them."
            )
        with self._check_lock:
            client, self._api_client = self._api_client, None
        for opened in (client, self._send_client):
            if opened is not None:
                opened.close()

    def __enter__(self) -> HttpBackend:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- the sender thread ---------------------------------------------------------

    def _send(self, batch: list[_Work]) -> None:
        """Send one batch of the queue: releases first, then the events (through the
        spool when there is one)."""
        client = self._client()
        records = [item for item in batch if isinstance(item, UsageRecord)]
        try:
            for item in batch:
                if isinstance(item, _Release):
                    self._send_release(client, item.url)
            if self._spool is not None:
                self._spool_events(self._encode(records))
                # One batch: the next events go to disk before the drain goes on
                # (it does when the queue runs dry, ``on_idle``).
                self._drain_when_due(batches=1)
            elif records:
                undelivered = self._send_events(client, self._encode(records))
                if undelivered:
                    why = "backend closed" if self._stopping.is_set() else "giving up"
                    self._report(
                        f"Weckr: {len(undelivered)} event(s) not delivered after "
                        f"{self._health.last_attempts} attempt(s), last "
                        f"{self._health.last_error}; {why}.",
                        self._health.last_cause,
                        status_code=self._health.last_status,
                        event_ids=undelivered,
                    )
        except Exception as error:  # a bug here must not stop delivery, nor lose events
            self._report(
                f"Weckr: unexpected error sending {len(records)} event(s).",
                error,
                event_ids=[record.event_id for record in records],
            )

    def _client(self) -> httpx.Client:
        client = self._send_client
        if client is None:
            client = self._send_client = httpx.Client(
                headers=self._headers, timeout=self._send_timeout
            )
        return client

    def _spool_events(self, events: list[_Event]) -> None:
        assert self._spool is not None
        refused = self._spool.put(events)
        if refused:
            self._health.dropped += len(refused)
            self._report(
                f"Weckr: the spool {self._spool.path} is full ({self._spool.max_events} "
                f"events); {len(refused)} new event(s) not kept.",
                event_ids=refused,
            )

    def _drain_when_due(self, batches: int = sys.maxsize) -> None:
        """Send the spool's events, oldest first, ``batches`` batches at most, until
        it is empty or the server stops taking them (then again after a backoff)."""
        spool = self._spool
        if spool is None or time.monotonic() < self._drain_after:
            return
        client = self._client()
        for _ in range(batches):
            claimed, undelivered = spool.deliver_oldest(
                self._max_batch_size,
                lambda events: self._send_events(
                    client, [(event.event_id, event.body) for event in events]
                ),
            )
            if not claimed:
                return
            if not undelivered:
                self._drain_failures = 0
            else:
                self._health.retries += len(undelivered)
                # Backing off further with each failed drain, up to the last delay.
                self._drain_failures += 1
                delay = self._backoff[min(self._drain_failures - 1, len(self._backoff) - 1)]
                self._drain_after = time.monotonic() + max(delay, self._health.retry_after)
                first_tries = [
                    e.event_id for e in claimed if e.attempts == 1 and e.event_id in undelivered
                ]
                if first_tries:  # each event said once, not on every retry
                    self._report(
                        f"Weckr: {len(first_tries)} event(s) not delivered now "
                        f"({self._health.last_error}); kept in the spool, sent when the "
                        "server is back.",
                        self._health.last_cause,
                        status_code=self._health.last_status,
                        event_ids=first_tries,
                    )
                return

    def _report_dropped(self, dropped: list[_Work]) -> None:
        events = [item.event_id for item in dropped if isinstance(item, UsageRecord)]
        self._health.dropped += len(events)
        self._report(
            f"Weckr: send queue full ({self._max_queue} events); dropped the "
            f"{len(dropped)} oldest event(s) or release(s).",
            event_ids=events,
        )

    def _send_release(self, client: httpx.Client, url: str) -> None:
        cause: httpx.TransportError | None = None
        status: int | None = None
        try:
            response = client.delete(url, timeout=self._check_timeout)
        except httpx.TransportError as error:
            cause, failure = error, _describe(error)
        else:
            if response.is_success or response.status_code == 404:  # 404: gone already
                return
            status = response.status_code
            failure = f"HTTP {status}"
        self._report(
            f"Weckr: could not release {url} ({failure}); the hold lasts until the "
            "server expires it.",
            cause,
            status_code=status,
        )

    def _encode(self, records: list[UsageRecord]) -> list[_Event]:
        """The records as wire events, priced; a record that cannot be is reported."""
        events: list[_Event] = []
        for record in records:
            wire = record.to_wire()
            if record.cost_usd is None:
                # Priced here, without writing to the caller's record from this thread.
                try:
                    wire["costUsd"] = float(price_record(record).usd)
                except Exception as error:  # the server prices it anyway
                    self._report(
                        f"Weckr: could not price event {record.event_id}; sending it unpriced.",
                        error,
                        event_ids=[record.event_id],
                    )
            try:
                events.append((record.event_id, json.dumps(wire, allow_nan=False).encode()))
            except (TypeError, ValueError) as error:
                self._report(
                    f"Weckr: event {record.event_id} cannot be sent as JSON ({error}).",
                    error,
                    event_ids=[record.event_id],
                )
        return events

    def _send_events(self, client: httpx.Client, events: list[_Event]) -> list[str]:
        """Sends the events (in batches when the server has a batch endpoint).
        Returns the ids of those not delivered for now (the server unreachable or
        answering 429 / 5xx after the retries); rejected ones are reported."""
        batch_endpoint = self.batch_endpoint
        if len(events) > 1 and batch_endpoint is not None:
            undelivered = self._send_batch(client, batch_endpoint, events)
            if undelivered is not None:
                return undelivered
        return [event_id for event in events for event_id in self._send_one(client, event)]

    def _send_one(self, client: httpx.Client, event: _Event) -> list[str]:
        event_id, body = event
        response = self._post(client, self.endpoint, body)
        if response is None:
            return [event_id]
        if not response.is_success:
            self._report(
                f"Weckr: server rejected event {event_id} with HTTP {response.status_code}: "
                f"{_server_message(response)}",
                status_code=response.status_code,
                event_ids=[event_id],
            )
        return []

    def _send_batch(self, client: httpx.Client, url: str, events: list[_Event]) -> list[str] | None:
        """Sends one batch, split in halves while its body is over ``MAX_BATCH_BYTES``
        or the server answers 413; the ids not delivered for now. None when the
        server has no batch endpoint (the caller sends the events singly)."""
        body = b'{"events":[' + b",".join(body for _, body in events) + b"]}"
        if len(body) > MAX_BATCH_BYTES and len(events) > 1:
            return self._send_halves(client, url, events)
        event_ids = [event_id for event_id, _ in events]
        response = self._post(client, url, body)
        if response is None:
            return event_ids
        status = response.status_code
        if status in (404, 405):
            logger.info("Weckr: %s answered HTTP %s; sending events one by one.", url, status)
            self.batch_endpoint = None
            return None
        if status == 413 and len(events) > 1:
            return self._send_halves(client, url, events)
        if not response.is_success:
            self._report(
                f"Weckr: server rejected a batch of {len(events)} event(s) with HTTP {status}: "
                f"{_server_message(response)}",
                status_code=status,
                event_ids=event_ids,
            )
            return []
        self._report_rejected_events(response, event_ids)
        return []

    def _send_halves(
        self, client: httpx.Client, url: str, events: list[_Event]
    ) -> list[str] | None:
        middle = len(events) // 2
        first = self._send_batch(client, url, events[:middle])
        if first is None:
            # No batch endpoint after all: the caller sends every event singly, and
            # none of the first half went out.
            return None
        rest = events[middle:]
        second = None if self.batch_endpoint is None else self._send_batch(client, url, rest)
        if second is None:
            second = [event_id for event in rest for event_id in self._send_one(client, event)]
        return first + second

    def _report_rejected_events(self, response: httpx.Response, event_ids: list[str]) -> None:
        """Reports the events a 2xx batch answer lists under ``rejected``."""
        try:
            body = response.json()
        except ValueError:
            body = None
        rejected = body.get("rejected") if isinstance(body, dict) else None
        for item in rejected if isinstance(rejected, list) else ():
            if not isinstance(item, dict):
                continue
            index = item.get("index")
            event_id = item.get("eventId") or (
                event_ids[index] if isinstance(index, int) and 0 <= index < len(event_ids) else None
            )
            reason = _error_text(item) or "no reason given"
            self._report(
                f"Weckr: server rejected event {event_id}: {reason}",
                status_code=response.status_code,
                event_ids=[event_id] if isinstance(event_id, str) else [],
            )

    def _post(self, client: httpx.Client, url: str, body: bytes) -> httpx.Response | None:
        """POSTs a JSON body with bounded retries on 429, 5xx, network errors and
        timeouts (waiting at least the server's Retry-After); with a spool, once (the
        spool is the retry). Returns the final response, or None when the body was
        not delivered (why is in ``health()["last_error"]``)."""
        retries = 0 if self._spool is not None else self._max_retries
        attempt = 0
        while True:
            delay = self._backoff[min(attempt, len(self._backoff) - 1)]
            retry_after = 0.0
            cause: BaseException | None = None
            status: int | None = None
            try:
                response = client.post(url, content=body, headers=_JSON_CONTENT)
            except httpx.TransportError as error:
                cause, failure = error, _describe(error)
            else:
                if not _is_retryable(response.status_code):
                    return response
                status = response.status_code
                failure = f"HTTP {status}"
                retry_after = _retry_after(response)
            health = self._health
            health.last_error, health.last_status, health.last_cause = failure, status, cause
            health.retry_after = retry_after
            if attempt >= retries or self._stopping.wait(max(delay, retry_after)):
                health.last_attempts = attempt + 1
                return None
            self._health.retries += 1
            attempt += 1

    def _report(
        self,
        message: str,
        cause: BaseException | None = None,
        *,
        status_code: int | None = None,
        event_ids: Sequence[str] = (),
    ) -> None:
        error = WeckrBackendError(message, status_code=status_code, event_ids=event_ids)
        error.__cause__ = cause
        if self._on_error is None:
            logger.warning("%s", message)
            return
        try:
            self._on_error(error)
        except Exception:
            logger.exception("Weckr: the on_error handler raised.")


_JSON_CONTENT: Final = {"content-type": "application/json"}


def _default_reserve_endpoint(endpoint: str, check_endpoint: str) -> str | None:
    """``endpoint`` with ``/log`` replaced by ``/reserve``, else ``check_endpoint``
    with ``/check`` replaced; None when neither ends so."""
    for url, tail in ((endpoint, "/log"), (check_endpoint, "/check")):
        base = url.rstrip("/")
        if base.endswith(tail):
            return base.removesuffix(tail) + "/reserve"
    return None


def _is_retryable(status: int) -> bool:
    return status == 429 or status >= 500


def _retry_after(response: httpx.Response) -> float:
    """The Retry-After header in seconds (the HTTP-date form is ignored), capped."""
    try:
        seconds = float(response.headers.get("retry-after", 0))
    except ValueError:
        return 0.0
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_SECONDS) if math.isfinite(seconds) else 0.0


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__


def _server_message(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        body = None
    return (_error_text(body) if isinstance(body, dict) else None) or (
        response.text.strip()[:300] or "(no body)"
    )


def _error_text(body: dict[str, Any]) -> str | None:
    """The message of a weckr_django error body ``{"error", "field"}`` (or DRF's ``detail``)."""
    message = body.get("error") or body.get("detail")
    if not isinstance(message, str):
        return None
    field = body.get("field")
    return f"{message} (field: {field})" if isinstance(field, str) and field else message


def _parse_decision(body: Any, request: CapRequest | None = None) -> CapDecision:
    """A ``/check`` or ``/reserve`` answer (weckr-sdk's servers send no ``inFlight``,
    ``plan``, ``reason``, ``accountId`` or ``reservation``) for ``request``;
    ValueError when it is not one."""
    if not isinstance(body, dict):
        raise ValueError("expected a JSON object")
    allowed = body.get("allowed", True)
    if not isinstance(allowed, bool):
        raise ValueError(f"'allowed' is not a boolean: {allowed!r}")
    alternative = body.get("alternativeModel")
    action: CapAction
    if allowed:
        action, alternative = "allow", None
    elif body.get("action") == "downgrade" and isinstance(alternative, str) and alternative:
        action = "downgrade"
    else:
        action, alternative = "block", None
    plan, reason, account_id = body.get("plan"), body.get("reason"), body.get("accountId")
    return CapDecision(
        action,
        alternative,
        current_spend=_decimal(body.get("currentSpend")),
        cap=_decimal(body.get("cap")),
        reservation=_parse_reservation(body.get("reservation"), request),
        in_flight=_decimal(body.get("inFlight")),
        plan=plan if isinstance(plan, str) else None,
        reason=reason if reason in _REASONS else None,
        account_id=account_id if isinstance(account_id, str) else None,
    )


def _parse_reservation(value: Any, request: CapRequest | None) -> Reservation | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ValueError(f"not a reservation: {value!r}")
    reservation_id, model = value.get("id"), value.get("model")
    amount = _decimal(value.get("amountUsd"))
    if not (isinstance(reservation_id, str) and isinstance(model, str) and amount is not None):
        raise ValueError(f"not a reservation: {value!r}")
    if request is None:
        return Reservation(reservation_id, amount, model)
    return Reservation(reservation_id, amount, model, request.user_id, request.account_id)


def _decimal(value: Any) -> Decimal | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"not a number: {value!r}")
    try:
        number = Decimal(str(value))
    except InvalidOperation:
        raise ValueError(f"not a number: {value!r}") from None
    if not number.is_finite():
        raise ValueError(f"not a finite number: {value!r}")
    return number
