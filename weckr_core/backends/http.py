"""Client of the Weckr wire protocol, for processes that run outside Django.

``check`` asks ``GET /api/v1/check`` (cached per user, plan and model). ``record``
queues the event; batches go to ``POST /api/v1/log/batch`` (or one by one to
``POST /api/v1/log``) over one keep-alive connection, transient failures retried.
Endpoints, the ``x-api-key`` header and the payload are those of the published
weckr-sdk.

Who sends: while the process records usage, the recording threads send each due
batch themselves without waiting on the network (``Lane``: the request goes out as
the socket takes it and the answer is read on a later call), because a background
thread that wakes up to send while they run Python costs them far more (see
``weckr_core/backends/lane.py``). The background sender thread connects, retries
what failed, serves ``flush`` and sends what is left once traffic stops; while the
recording threads keep up it wakes every few seconds at most.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import math
import threading
import time
import urllib.request
from collections import deque
from collections.abc import Callable, Sequence
from decimal import Decimal, InvalidOperation
from typing import Any, Final

import httpx

from weckr_core.backends import lifecycle
from weckr_core.backends.base import ALLOW, CapDecision
from weckr_core.backends.encoding import (
    cost_usd,
    encode_batch,
    encode_event,
    encode_plain,
    encode_plain_call,
)
from weckr_core.backends.lane import Lane
from weckr_core.backends.lifecycle import ATEXIT_FLUSH_SECONDS
from weckr_core.errors import WeckrConfigError
from weckr_core.pricing import preload_prices
from weckr_core.records import PendingRecord, UsageRecord

DEFAULT_LOG_ENDPOINT: Final = "https://app.useweckr.com/api/v1/log"
DEFAULT_CHECK_ENDPOINT: Final = "https://app.useweckr.com/api/v1/check"
SERVER_MAX_BATCH_SIZE: Final = 500
# weckr_django refuses request bodies over 1 MiB (413); batches stay under this.
MAX_BATCH_BYTES: Final = 900_000
MAX_RETRY_AFTER_SECONDS: Final = 30.0
# How long, at most, the sender leaves a partial batch to the recording threads
# before sending it itself (it starts at twice the linger and doubles while they
# keep delivering): its wake-ups are what a busy process pays for.
MAX_SENDER_PATIENCE_SECONDS: Final = 5.0
_MAX_CACHED_DECISIONS: Final = 10_000

logger = logging.getLogger("weckr")

ErrorHandler = Callable[[BaseException], None]
_DecisionKey = tuple[str, str, str]
_Event = tuple[str, str]  # event id, JSON text
# What became of a request already made for a batch: its answer, or the error.
_Outcome = httpx.Response | httpx.TransportError
# A queued event: a record, or a call the client left to be built (see ``_encode``).
_Queued = UsageRecord | PendingRecord


class WeckrBackendError(Exception):
    """What ``on_error`` receives: a cap check that failed (the call was allowed),
    or usage events the server did not take (``event_ids``). The underlying
    exception, if any, is in ``__cause__``."""

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


class _Batch:
    """Events taken from the queue, from when they leave it until they are settled:
    delivered, or reported as not delivered."""

    __slots__ = ("events", "first_seq", "outcome", "started")

    def __init__(self, first_seq: int, events: list[_Event]) -> None:
        self.first_seq = first_seq
        self.events = events
        self.outcome: _Outcome | None = None  # of the request made on a recording thread
        self.started = time.monotonic()


class HttpBackend:
    """Backend that talks to a Weckr server (weckr_django or app.useweckr.com).

    Cap checks fail open on outages (5xx, 429, network errors, timeouts, bad JSON;
    reported through ``on_error``) and fail closed on a wrong (401) or revoked (403)
    key by raising ``WeckrConfigError``. Usage events are never dropped silently:
    events the server rejects, events still failing after ``max_retries`` and events
    pushed out of a full queue are reported through ``on_error`` (or logged to the
    ``weckr`` logger when there is no handler).

    A batch goes out when ``max_batch_size`` events are queued or ``linger_seconds``
    after its first event was queued, whichever comes first (``flush`` sends at
    once), so under load one POST carries hundreds of events; batches are split to
    stay under the server's body limit. ``batch_endpoint`` defaults to
    ``endpoint + "/batch"``; None sends events one by one (a server answering 404
    there is switched to that too). Retry ``i`` waits
    ``backoff_seconds[i]`` (the last value repeats). ``close()``, or leaving a
    ``with`` block, flushes and releases the connections; at interpreter exit
    pending events get ``ATEXIT_FLUSH_SECONDS`` to go out.

    With ``deliver_inline`` (the default), a thread whose ``record`` makes a batch
    due sends it without waiting (see the module's docstring); each such call
    costs that thread the batch's JSON, a few microseconds per event. False leaves
    every send to the sender thread. Through an HTTP proxy (``HTTPS_PROXY`` and the
    like) the sender thread sends everything, through httpx.
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
        deliver_inline: bool = True,
        on_error: ErrorHandler | None = None,
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
        self._headers = {"x-api-key": api_key, "user-agent": "weckr-core"}
        self._cache_ttl = cache_ttl_seconds
        self._check_timeout = check_timeout_seconds
        self._send_timeout = send_timeout_seconds
        self._max_batch_size = max_batch_size
        self._max_queue = max_queue
        self._max_retries = max_retries
        self._backoff = tuple(backoff_seconds)
        self._linger = linger_seconds
        self._deliver_inline = deliver_inline
        self._on_error = on_error
        # Batches are priced on whichever thread sends them; importing the price
        # database there would race with SDKs that read sys.modules without the
        # import lock on other threads.
        preload_prices()
        self._init_state()
        lifecycle.watch(self)

    def _init_state(self) -> None:
        # Everything that must not cross a fork: locks, threads, connections, queue.
        self._check_lock = threading.Lock()
        self._decisions: dict[_DecisionKey, tuple[CapDecision, float]] = {}
        self._pending_checks: dict[_DecisionKey, _PendingCheck] = {}
        self._check_client: httpx.Client | None = None

        self._lock = threading.Lock()
        self._has_work = threading.Condition(self._lock)
        self._progress = threading.Condition(self._lock)
        # Sequence numbers are contiguous, so the queue holds the records alone (one
        # object fewer per call for the garbage collector): see _head_seq.
        self._queue: deque[_Queued] = deque()
        self._last_seq = 0
        self._oldest_at = 0.0  # when the oldest queued event was queued (about)
        self._in_flight: list[int] = []  # first sequence numbers of unsettled batches
        self._handoffs: deque[_Batch] = deque()  # for the sender: retry, split, report
        self._sender: threading.Thread | None = None
        self._sender_asleep = False  # waiting without a timeout: record() wakes it
        self._dropped: list[str] = []  # ids of events pushed out of the full queue
        self._stopping = threading.Event()
        self._closed = False
        self._flushing = 0  # callers waiting in flush(): the sender does not linger
        # The log connection: one thread at a time (the sender, or a recording thread
        # that found it free), in this order: _lane_lock, then _lock.
        self._lane_lock = threading.Lock()
        self._lane = self._new_lane()
        self._lane_batch: _Batch | None = None  # sent on a recording thread, answer unread
        self._inline_sends = 0  # batches sent on recording threads so far

    @property
    def delivers_inline(self) -> bool:
        """True when threads that call ``record`` send due batches themselves (see
        ``deliver_inline``); False when the sender thread sends everything."""
        return self._lane is not None

    def _after_fork_in_child(self) -> None:
        # The parent keeps delivering its own queue and owns the sockets.
        decisions, closed = self._decisions, self._closed
        self._init_state()
        self._decisions, self._closed = decisions, closed

    def _new_lane(self) -> Lane | None:
        """The connection recording threads may send on; None when only the sender
        thread sends (turned off, behind a proxy, or endpoints on two origins)."""
        if not self._deliver_inline:
            return None
        try:
            lane = Lane(self.endpoint)
        except ValueError:
            return None
        if self.batch_endpoint is not None and not lane.serves(self.batch_endpoint):
            return None
        # httpx (the sender's client) takes its proxy from the same variables.
        proxies = urllib.request.getproxies_environment()
        if (proxies.get(lane.scheme) or proxies.get("all")) and not urllib.request.proxy_bypass(
            lane.host
        ):
            return None
        return lane

    # -- cap checks --------------------------------------------------------------

    def check(self, user_id: str | None, plan: str | None, model: str) -> CapDecision:
        if not user_id or not plan:
            return ALLOW
        key = (user_id, plan, model)
        # Once per LLM call: a fresh decision is read without the lock (a dict read is
        # atomic, and the entries are immutable tuples); misses take it.
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
            decision = self._fetch_decision(user_id, plan, model)
        except WeckrConfigError as error:
            pending.error = error
            raise
        finally:
            with self._check_lock:
                del self._pending_checks[key]
                if decision is not None:
                    self._cache_decision(key, decision)
            pending.decision = decision if decision is not None else ALLOW
            pending.done.set()
        return pending.decision

    async def acheck(self, user_id: str | None, plan: str | None, model: str) -> CapDecision:
        """``check`` for the async paths: a cached decision at once, else the request
        on a worker thread, so the event loop goes on meanwhile."""
        if not user_id or not plan:
            return ALLOW
        with self._check_lock:
            cached = self._fresh_decision((user_id, plan, model))
        if cached is not None:
            return cached
        return await asyncio.to_thread(self.check, user_id, plan, model)

    def _fresh_decision(self, key: _DecisionKey) -> CapDecision | None:
        # Called with self._check_lock held.
        cached = self._decisions.get(key)
        return cached[0] if cached is not None and cached[1] > time.monotonic() else None

    def _cache_decision(self, key: _DecisionKey, decision: CapDecision) -> None:
        now = time.monotonic()
        if len(self._decisions) >= _MAX_CACHED_DECISIONS:
            self._decisions = {k: v for k, v in self._decisions.items() if v[1] > now}
        self._decisions[key] = (decision, now + self._cache_ttl)

    def _fetch_decision(self, user_id: str, plan: str, model: str) -> CapDecision | None:
        """The server's decision; None (reported) when the check failed and the call
        is allowed without caching. Raises ``WeckrConfigError`` on 401 and 403."""
        params = {"userId": user_id, "planName": plan}
        if model:
            params["model"] = model
        try:
            response = self._get_check_client().get(self.check_endpoint, params=params)
        except Exception as error:  # network errors, timeouts, a closed client: fail open
            self._report(f"Weckr: cap check failed ({_describe(error)}); allowing the call.", error)
            return None
        status = response.status_code
        if status in (401, 403):
            raise WeckrConfigError(
                "invalid_api_key" if status == 401 else "forbidden",
                f"Weckr: cap check rejected with HTTP {status}: the API key is "
                f"{'unknown' if status == 401 else 'revoked'}. "
                f"Server said: {_server_message(response)}",
            )
        if not response.is_success:
            self._report(
                f"Weckr: cap check failed with HTTP {status} ({_server_message(response)}); "
                "allowing the call.",
                status_code=status,
            )
            return None
        try:
            return _parse_decision(response.json())
        except ValueError as error:
            self._report(
                f"Weckr: unreadable cap check response ({error}); allowing the call.", error
            )
            return None

    def _get_check_client(self) -> httpx.Client:
        with self._check_lock:
            if self._check_client is None:
                self._check_client = httpx.Client(
                    headers=self._headers, timeout=self._check_timeout
                )
            return self._check_client

    # -- usage events ------------------------------------------------------------

    def record(self, record: _Queued) -> None:
        now = time.monotonic()
        due = False
        with self._lock:
            closed = self._closed
            if not closed:
                if len(self._queue) >= self._max_queue:
                    # Reported by the sender, one error per burst rather than per event.
                    self._dropped.append(self._queue.popleft().event_id)
                self._last_seq += 1
                self._queue.append(record)
                if self._sender is None:
                    self._start_sender()
                queued = len(self._queue)
                if queued == 1:
                    self._oldest_at = now
                    if self._sender_asleep:
                        self._sender_asleep = False
                        self._has_work.notify()
                if self._lane is not None:
                    due = queued >= self._max_batch_size or now - self._oldest_at >= self._linger
                elif queued >= self._max_batch_size:
                    self._has_work.notify()  # the sender lingers for a full batch
        if closed:
            self._report(
                f"Weckr: backend is closed; event {record.event_id} not sent.",
                event_ids=[record.event_id],
            )
        elif due:
            self._send_inline()

    # A call the client leaves unbuilt is queued as it is: its record is built when
    # its batch is encoded, with the rest of the batch, on the thread that sends it.
    record_pending = record

    def flush(self, timeout: float = 5.0) -> bool:
        deadline = time.monotonic() + timeout
        with self._lock:
            target = self._last_seq
            self._flushing += 1
            self._has_work.notify()
            try:
                while not self._done_through(target):
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return False
                    self._progress.wait(remaining)
            finally:
                self._flushing -= 1
        return True

    def close(self, timeout: float = ATEXIT_FLUSH_SECONDS) -> None:
        """Flush for up to ``timeout`` seconds, then stop the sender and release the
        connections. Events not delivered by then are reported as not sent."""
        deadline = time.monotonic() + timeout
        self.flush(timeout)
        with self._lock:
            self._closed = True
            leftovers = [record.event_id for record in self._queue]
            leftovers += [event_id for batch in self._handoffs for event_id, _ in batch.events]
            self._queue.clear()
            self._handoffs.clear()
            self._has_work.notify_all()
            self._progress.notify_all()
            sender = self._sender
        self._stopping.set()
        lifecycle.unwatch(self)
        self._report_dropped()
        if leftovers:
            self._report(
                f"Weckr: backend closed with {len(leftovers)} event(s) not sent.",
                event_ids=leftovers,
            )
        if sender is not None and sender is not threading.current_thread():
            sender.join(max(0.0, deadline - time.monotonic()))
        self._close_lane(max(0.0, deadline - time.monotonic()))
        with self._check_lock:
            client, self._check_client = self._check_client, None
        if client is not None:
            client.close()

    def __enter__(self) -> HttpBackend:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _done_through(self, seq: int) -> bool:
        """True when every event up to sequence number ``seq`` is delivered or given up."""
        return all(first > seq for first in self._in_flight) and (
            not self._queue or self._head_seq() > seq
        )

    def _head_seq(self) -> int:
        """The sequence number of the oldest queued event; called with self._lock held."""
        return self._last_seq - len(self._queue) + 1

    def _take_batch(self, now: float) -> tuple[int, list[_Queued]]:
        """The oldest queued events, up to a batch; called with self._lock held."""
        first_seq = self._head_seq()
        count = min(len(self._queue), self._max_batch_size)
        taken = [self._queue.popleft() for _ in range(count)]
        self._in_flight.append(first_seq)
        self._oldest_at = now  # of what is left: not older than now
        return first_seq, taken

    def _settled(self, batch: _Batch | int) -> None:
        first_seq = batch if isinstance(batch, int) else batch.first_seq
        with self._lock:
            self._in_flight.remove(first_seq)
            self._progress.notify_all()

    def _hand_off(self, batch: _Batch) -> None:
        """Give a batch to the sender thread, which retries, splits or reports it."""
        with self._lock:
            self._handoffs.append(batch)
            self._sender_asleep = False
            self._has_work.notify()

    # -- sending on the recording threads -----------------------------------------------

    def _send_inline(self) -> None:
        """Called by ``record`` when a batch is due: on this thread, without waiting,
        read the answer to the batch sent before, then send the next. Does nothing
        while another thread uses the connection."""
        if not self._lane_lock.acquire(blocking=False):
            return
        try:
            if self._lane_batch is None or self._read_inline_answer(block=False):
                self._start_inline_batch()
        except Exception as error:  # a bug here must not reach the caller's LLM call
            self._report("Weckr: unexpected error sending usage events.", error)
        finally:
            self._lane_lock.release()

    def _read_inline_answer(self, *, block: bool) -> bool:
        """Settle the batch sent on a recording thread if its answer is in (waiting
        for it with ``block``); False while it is not. Needs self._lane_lock."""
        batch, lane = self._lane_batch, self._lane
        assert batch is not None and lane is not None
        outcome: _Outcome | None
        try:
            outcome = lane.finish() if block else lane.advance()
        except httpx.TransportError as error:
            outcome = error
        if outcome is None:
            return False
        self._lane_batch = None
        if isinstance(outcome, httpx.Response) and outcome.is_success:
            try:
                if len(batch.events) > 1:
                    event_ids = [event_id for event_id, _ in batch.events]
                    self._report_rejected_events(outcome, event_ids)
            finally:
                self._settled(batch)
        else:
            batch.outcome = outcome  # the sender takes it from there, as if it had sent it
            self._hand_off(batch)
        return True

    def _start_inline_batch(self) -> None:
        lane = self._lane
        assert lane is not None and self._lane_batch is None
        now = time.monotonic()
        with self._lock:
            queued = len(self._queue)
            if not queued or (
                queued < self._max_batch_size and now - self._oldest_at < self._linger
            ):
                return
            first_seq, records = self._take_batch(now)
        try:
            events = self._encode(records)
        except Exception as error:  # taken from the queue: reported, not lost silently
            self._report_unexpected(error, [record.event_id for record in records])
            self._settled(first_seq)
            return
        batch = _Batch(first_seq, events)
        if not batch.events:
            self._settled(batch)
            return
        try:
            request = self._inline_request(batch.events)
            if request is None or not lane.usable():
                self._hand_off(batch)  # the sender connects, or splits the batch
                return
            target, body = request
            headers = self._inline_headers(lane, len(body))
            lane.begin(b"POST", target, headers, body, self._send_timeout)
        except BaseException:
            self._hand_off(batch)  # taken from the queue: not to be lost
            raise
        self._lane_batch = batch
        self._inline_sends += 1
        self._read_inline_answer(block=False)

    def _inline_request(self, events: list[_Event]) -> tuple[bytes, bytes] | None:
        """Target and body of the one request the sender would make first for
        ``events``; None when it would take more (splits, or one POST per event)."""
        if len(events) == 1:
            return httpx.URL(self.endpoint).raw_path, events[0][1].encode()
        if self.batch_endpoint is None:
            return None
        body = encode_batch([text for _, text in events])
        if len(body) > MAX_BATCH_BYTES:
            return None
        return httpx.URL(self.batch_endpoint).raw_path, body

    def _inline_headers(self, lane: Lane, length: int) -> list[tuple[bytes, bytes]]:
        default_port = 443 if lane.scheme == "https" else 80
        host = lane.host if lane.port == default_port else f"{lane.host}:{lane.port}"
        return [
            (b"host", host.encode("idna")),
            *((name.encode(), value.encode()) for name, value in self._headers.items()),
            (b"content-type", b"application/json"),
            (b"content-length", str(length).encode()),
        ]

    def _close_lane(self, timeout: float) -> None:
        if not self._lane_lock.acquire(timeout=timeout):
            return  # the sender is on it, and closes it (its client's transport) when done
        try:
            batch, self._lane_batch = self._lane_batch, None
            if self._lane is not None:
                self._lane.close()
        finally:
            self._lane_lock.release()
        if batch is not None:
            self._report(
                f"Weckr: backend closed before the server answered for {len(batch.events)} "
                "event(s); they may not have been delivered.",
                event_ids=[event_id for event_id, _ in batch.events],
            )
            self._settled(batch)

    # -- the sender thread ----------------------------------------------------------------

    def _start_sender(self) -> None:
        # Called with self._lock held, when ``_sender`` is None: the sender clears it
        # when it ends, and a forked child starts with none.
        self._sender = threading.Thread(target=self._run, name="weckr-sender", daemon=True)
        try:
            self._sender.start()
        except RuntimeError:  # interpreter shutting down: the event stays queued
            self._sender = None
            logger.warning("Weckr: could not start the sender thread.", exc_info=True)

    def _run(self) -> None:
        try:
            self._send_until_closed()
        finally:
            with self._lock:
                if self._sender is threading.current_thread():
                    self._sender = None

    def _send_until_closed(self) -> None:
        lane = self._lane
        transport: httpx.BaseTransport | None = lane
        with httpx.Client(
            headers=self._headers, timeout=self._send_timeout, transport=transport
        ) as client:
            if lane is not None:
                # Ready for the recording threads' first batch; on failure the first
                # send connects again, and reports.
                with self._lane_lock, contextlib.suppress(httpx.TransportError):
                    lane.connect(self._send_timeout)
            patience = _Patience(self._linger, lane is not None)
            while True:
                with self._lock:
                    job = self._next_job(patience)
                if job is None:
                    return
                with self._lane_lock:
                    try:
                        if self._lane_batch is not None:  # the connection is needed now
                            self._read_inline_answer(block=True)
                        job(client)
                    except Exception as error:  # a bug here must not stop delivery for good
                        self._report("Weckr: unexpected error sending usage events.", error)
                    finally:
                        self._report_dropped()

    def _next_job(self, patience: _Patience) -> Callable[[httpx.Client], None] | None:
        """Wait for something the sender must do; None once closed and done.
        Called with self._lock held, right after the previous job (or the start)."""
        awake = True  # and holding the GIL anyway: no wake-up to spare the callers
        while True:
            now = time.monotonic()
            hurry = self._flushing > 0 or self._closed
            if self._handoffs:
                return self._handoff_job(self._handoffs.popleft())
            timeout: float | None = None
            batch = self._lane_batch  # read without _lane_lock: the job checks again
            if batch is not None:
                waited = now - batch.started
                if hurry or waited >= patience.seconds:
                    return _nothing_more  # the answer is read before every job
                timeout = patience.seconds - waited
            if self._queue:
                waited = now - self._oldest_at
                due = len(self._queue) >= self._max_batch_size or (
                    waited >= (self._linger if awake else patience.seconds)
                )
                if hurry or due:
                    return self._queue_job(*self._take_batch(now))
                wait_for_queue = patience.seconds - waited
                timeout = wait_for_queue if timeout is None else min(timeout, wait_for_queue)
            elif self._closed:
                return None
            elif timeout is None:
                timeout = patience.idle_timeout()
            self._sender_asleep = timeout is None
            seen = self._inline_sends
            woken = self._has_work.wait(timeout)
            self._sender_asleep = False
            awake = False
            if not woken:
                patience.observe(callers_sent=self._inline_sends != seen)

    def _handoff_job(self, batch: _Batch) -> Callable[[httpx.Client], None]:
        def job(client: httpx.Client) -> None:
            try:
                self._send_events(client, batch.events, batch.outcome)
            except Exception as error:  # a bug here must not lose the events unreported
                self._report_unexpected(error, [event_id for event_id, _ in batch.events])
            finally:
                self._settled(batch)

        return job

    def _queue_job(self, first_seq: int, records: list[_Queued]) -> Callable[..., None]:
        def job(client: httpx.Client) -> None:
            try:
                self._send_events(client, self._encode(records))
            except Exception as error:  # a bug here must not lose the events unreported
                self._report_unexpected(error, [record.event_id for record in records])
            finally:
                self._settled(first_seq)

        return job

    def _report_unexpected(self, error: Exception, event_ids: list[str]) -> None:
        self._report(
            f"Weckr: unexpected error sending {len(event_ids)} event(s).",
            error,
            event_ids=event_ids,
        )

    def _report_dropped(self) -> None:
        with self._lock:
            dropped, self._dropped = self._dropped, []
        if dropped:
            self._report(
                f"Weckr: send queue full ({self._max_queue} events); dropped the "
                f"{len(dropped)} oldest event(s).",
                event_ids=dropped,
            )

    def _encode(self, queued: list[_Queued]) -> list[_Event]:
        """The records as wire events, priced; a record that cannot be is reported."""
        events: list[_Event] = []
        for item in queued:
            if isinstance(item, UsageRecord):
                record = item
            else:
                try:
                    # The usual call goes to the wire without a record built for it.
                    plain = item.plain()
                    text = None if plain is None else encode_plain_call(plain)
                except Exception:  # built, the general way below says what is wrong
                    text = None
                if text is not None:
                    events.append((item.event_id, text))
                    continue
                try:
                    record = item.build()
                except Exception as error:  # build() does not raise: a bug of ours
                    self._report_unexpected(error, [item.event_id])
                    continue
            try:
                text = encode_plain(record)
            except Exception:  # the general way below says what is wrong with it
                text = None
            if text is not None:
                events.append((record.event_id, text))
                continue
            cost: float | None = None
            try:
                cost = float(record.cost_usd) if record.cost_usd is not None else cost_usd(record)
            except Exception as error:  # the server prices it anyway
                self._report(
                    f"Weckr: could not price event {record.event_id}; sending it unpriced.",
                    error,
                    event_ids=[record.event_id],
                )
            try:
                events.append((record.event_id, encode_event(record, cost)))
            except Exception as error:
                self._report(
                    f"Weckr: event {record.event_id} cannot be sent as JSON ({error}).",
                    error,
                    event_ids=[record.event_id],
                )
        return events

    def _send_events(
        self, client: httpx.Client, events: list[_Event], first: _Outcome | None = None
    ) -> None:
        """Deliver ``events``; ``first`` is the outcome of the first request this
        would make (sent on a recording thread), which is then not made again."""
        batch_endpoint = self.batch_endpoint
        if (
            len(events) > 1
            and batch_endpoint is not None
            and self._send_batch(client, batch_endpoint, events, first)
        ):
            return
        if len(events) > 1:
            first = None  # that was the batch request, answered 404
        for event in events:
            self._send_one(client, event, first)
            first = None

    def _send_one(self, client: httpx.Client, event: _Event, first: _Outcome | None = None) -> None:
        event_id, text = event
        response = self._post(client, self.endpoint, text.encode(), [event_id], first)
        if response is not None and not response.is_success:
            self._report(
                f"Weckr: server rejected event {event_id} with HTTP {response.status_code}: "
                f"{_server_message(response)}",
                status_code=response.status_code,
                event_ids=[event_id],
            )

    def _send_batch(
        self, client: httpx.Client, url: str, events: list[_Event], first: _Outcome | None = None
    ) -> bool:
        """Sends one batch, split in halves while its body is over ``MAX_BATCH_BYTES``
        or the server answers 413. False when the server has no batch endpoint (the
        caller sends the events singly)."""
        body = encode_batch([text for _, text in events])
        if len(body) > MAX_BATCH_BYTES and len(events) > 1:
            return self._send_halves(client, url, events)
        event_ids = [event_id for event_id, _ in events]
        response = self._post(client, url, body, event_ids, first)
        if response is None:
            return True
        status = response.status_code
        if status in (404, 405):
            logger.info("Weckr: %s answered HTTP %s; sending events one by one.", url, status)
            self.batch_endpoint = None
            return False
        if status == 413 and len(events) > 1:
            return self._send_halves(client, url, events)
        if not response.is_success:
            self._report(
                f"Weckr: server rejected a batch of {len(events)} event(s) with HTTP {status}: "
                f"{_server_message(response)}",
                status_code=status,
                event_ids=event_ids,
            )
            return True
        self._report_rejected_events(response, event_ids)
        return True

    def _send_halves(self, client: httpx.Client, url: str, events: list[_Event]) -> bool:
        middle = len(events) // 2
        if not self._send_batch(client, url, events[:middle]):
            # No batch endpoint after all: the caller sends every event singly, and
            # none of the first half went out.
            return False
        rest = events[middle:]
        if self.batch_endpoint is None or not self._send_batch(client, url, rest):
            for event in rest:
                self._send_one(client, event)
        return True

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

    def _post(
        self,
        client: httpx.Client,
        url: str,
        body: bytes,
        event_ids: list[str],
        first: _Outcome | None = None,
    ) -> httpx.Response | None:
        """POSTs a JSON body with bounded retries on 429, 5xx, network errors and
        timeouts (waiting at least the server's Retry-After). ``first`` is the
        outcome of an attempt already made. Returns the final response, or None
        (reported) when the events are given up."""
        attempt = 0
        while True:
            cause: BaseException | None = None
            delay = self._backoff[min(attempt, len(self._backoff) - 1)]
            try:
                if first is None:
                    response = client.post(url, content=body, headers=_JSON_CONTENT)
                elif isinstance(first, httpx.Response):
                    response, first = first, None
                else:
                    error, first = first, None
                    raise error
            except httpx.TransportError as error:
                cause, failure, status = error, _describe(error), None
            else:
                if not _is_retryable(response.status_code):
                    return response
                failure, status = f"HTTP {response.status_code}", response.status_code
                delay = max(delay, _retry_after(response))
            self._report_dropped()  # an outage is when the queue fills up
            if attempt >= self._max_retries or self._stopping.wait(delay):
                why = "backend closed" if self._stopping.is_set() else "giving up"
                self._report(
                    f"Weckr: {len(event_ids)} event(s) not delivered after {attempt + 1} "
                    f"attempt(s), last {failure}; {why}.",
                    cause,
                    status_code=status,
                    event_ids=event_ids,
                )
                return None
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


class _Patience:
    """How long the sender leaves queued events to the recording threads.

    Without a lane the sender sends a batch once it is full or ``linger`` old, and
    sleeps until ``record`` wakes it when there is nothing to send. With one, the
    recording threads send due batches themselves, and every wake-up of the sender
    costs them while they run Python, so it never lets ``record`` wake it: it looks
    every ``MAX_SENDER_PATIENCE_SECONDS`` when nothing is queued, and leaves queued
    events to the recording threads for twice the linger, doubled (up to that
    maximum) each time it wakes to find they sent something meanwhile.
    """

    def __init__(self, linger: float, callers_send: bool) -> None:
        self._callers_send = callers_send
        self._shortest = min(max(2 * linger, 0.05), MAX_SENDER_PATIENCE_SECONDS)
        self.seconds = self._shortest if callers_send else linger

    def observe(self, *, callers_sent: bool) -> None:
        """After a wake-up on the timeout: did the recording threads send since?"""
        if self._callers_send:
            self.seconds = (
                min(2 * self.seconds, MAX_SENDER_PATIENCE_SECONDS)
                if callers_sent
                else self._shortest
            )

    def idle_timeout(self) -> float | None:
        """How long to wait with nothing queued; None: until ``record`` wakes it."""
        return MAX_SENDER_PATIENCE_SECONDS if self._callers_send else None


_JSON_CONTENT: Final = {"content-type": "application/json"}


def _nothing_more(client: httpx.Client) -> None:
    """A job that is only the answer to read before it."""


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


def _parse_decision(body: Any) -> CapDecision:
    if not isinstance(body, dict):
        raise ValueError("expected a JSON object")
    allowed = body.get("allowed", True)
    if not isinstance(allowed, bool):
        raise ValueError(f"'allowed' is not a boolean: {allowed!r}")
    spend, cap = _decimal(body.get("currentSpend")), _decimal(body.get("cap"))
    if allowed:
        return CapDecision("allow", None, spend, cap)
    alternative = body.get("alternativeModel")
    if body.get("action") == "downgrade" and isinstance(alternative, str) and alternative:
        return CapDecision("downgrade", alternative, spend, cap)
    return CapDecision("block", None, spend, cap)


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
