"""Client of the Weckr wire protocol, for processes that run outside Django.

``check`` asks ``GET /api/v1/check`` (cached per user, plan and model). ``record``
only queues the event; one background thread delivers the queue in batches to
``POST /api/v1/log/batch`` (or one by one to ``POST /api/v1/log``) over a
keep-alive connection, retrying transient failures. Endpoints, the ``x-api-key``
header and the payload are those of the published weckr-sdk.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from decimal import Decimal, InvalidOperation
from typing import Any, Final

import httpx

from weckr_core.backends import lifecycle
from weckr_core.backends.base import ALLOW, CapDecision
from weckr_core.backends.encoding import cost_usd, encode_batch, encode_event
from weckr_core.backends.lifecycle import ATEXIT_FLUSH_SECONDS
from weckr_core.errors import WeckrConfigError
from weckr_core.pricing import preload_prices
from weckr_core.records import UsageRecord

DEFAULT_LOG_ENDPOINT: Final = "https://app.useweckr.com/api/v1/log"
DEFAULT_CHECK_ENDPOINT: Final = "https://app.useweckr.com/api/v1/check"
SERVER_MAX_BATCH_SIZE: Final = 500
# weckr_django refuses request bodies over 1 MiB (413); batches stay under this.
MAX_BATCH_BYTES: Final = 900_000
MAX_RETRY_AFTER_SECONDS: Final = 30.0
_MAX_CACHED_DECISIONS: Final = 10_000

logger = logging.getLogger("weckr")

ErrorHandler = Callable[[BaseException], None]
_DecisionKey = tuple[str, str, str]
_Event = tuple[str, str]  # event id, JSON text


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
        self._on_error = on_error
        # The sender thread prices records; importing the price database there would
        # race with SDKs that read sys.modules without the import lock on other threads.
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
        self._queue: deque[tuple[int, UsageRecord]] = deque()
        self._last_seq = 0
        self._sending_from_seq: int | None = None  # first sequence number of the batch in flight
        self._sender: threading.Thread | None = None
        self._dropped: list[str] = []  # ids of events pushed out of the full queue
        self._stopping = threading.Event()
        self._closed = False
        self._flushing = 0  # callers waiting in flush(): the sender does not linger

    def _after_fork_in_child(self) -> None:
        # The parent keeps delivering its own queue and owns the sockets.
        decisions, closed = self._decisions, self._closed
        self._init_state()
        self._decisions, self._closed = decisions, closed

    # -- cap checks --------------------------------------------------------------

    def check(self, user_id: str | None, plan: str | None, model: str) -> CapDecision:
        if not user_id or not plan:
            return ALLOW
        key = (user_id, plan, model)
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

    def record(self, record: UsageRecord) -> None:
        with self._lock:
            closed = self._closed
            if not closed:
                if len(self._queue) >= self._max_queue:
                    # Reported by the sender, one error per burst rather than per event.
                    self._dropped.append(self._queue.popleft()[1].event_id)
                self._last_seq += 1
                self._queue.append((self._last_seq, record))
                if self._sender is None:
                    self._start_sender()
                queued = len(self._queue)
                if queued == 1 or queued >= self._max_batch_size:
                    self._has_work.notify()
        if closed:
            self._report(
                f"Weckr: backend is closed; event {record.event_id} not sent.",
                event_ids=[record.event_id],
            )

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
        connections. Events still queued are reported as not sent."""
        deadline = time.monotonic() + timeout
        self.flush(timeout)
        with self._lock:
            self._closed = True
            leftovers = [record.event_id for _, record in self._queue]
            self._queue.clear()
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
        sending = self._sending_from_seq
        return (sending is None or sending > seq) and (not self._queue or self._queue[0][0] > seq)

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
        with httpx.Client(headers=self._headers, timeout=self._send_timeout) as client:
            while True:
                with self._lock:
                    while not self._queue and not self._closed:
                        self._has_work.wait()
                    if not self._queue:
                        return
                    self._linger_for_a_fuller_batch()
                    count = min(len(self._queue), self._max_batch_size)
                    batch = [self._queue.popleft() for _ in range(count)]
                    self._sending_from_seq = batch[0][0]
                records = [record for _, record in batch]
                try:
                    self._deliver(client, records)
                except Exception as error:  # a bug here must not stop delivery for good
                    self._report(
                        f"Weckr: unexpected error sending {count} event(s).",
                        error,
                        event_ids=[record.event_id for record in records],
                    )
                finally:
                    self._report_dropped()
                    with self._lock:
                        self._sending_from_seq = None
                        self._progress.notify_all()

    def _linger_for_a_fuller_batch(self) -> None:
        """Wait briefly for more events so that steady traffic goes out in batches,
        not one POST per event. Called with the lock held; flush and close cut it short."""
        until = time.monotonic() + self._linger
        while len(self._queue) < self._max_batch_size and not self._closed and not self._flushing:
            remaining = until - time.monotonic()
            if remaining <= 0:
                return
            self._has_work.wait(remaining)

    def _report_dropped(self) -> None:
        with self._lock:
            dropped, self._dropped = self._dropped, []
        if dropped:
            self._report(
                f"Weckr: send queue full ({self._max_queue} events); dropped the "
                f"{len(dropped)} oldest event(s).",
                event_ids=dropped,
            )

    def _deliver(self, client: httpx.Client, records: list[UsageRecord]) -> None:
        events: list[_Event] = []
        for record in records:
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
        batch_endpoint = self.batch_endpoint
        if (
            len(events) > 1
            and batch_endpoint is not None
            and self._send_batch(client, batch_endpoint, events)
        ):
            return
        for event in events:
            self._send_one(client, event)

    def _send_one(self, client: httpx.Client, event: _Event) -> None:
        event_id, text = event
        response = self._post(client, self.endpoint, text.encode(), [event_id])
        if response is not None and not response.is_success:
            self._report(
                f"Weckr: server rejected event {event_id} with HTTP {response.status_code}: "
                f"{_server_message(response)}",
                status_code=response.status_code,
                event_ids=[event_id],
            )

    def _send_batch(self, client: httpx.Client, url: str, events: list[_Event]) -> bool:
        """Sends one batch, split in halves while its body is over ``MAX_BATCH_BYTES``
        or the server answers 413. False when the server has no batch endpoint (the
        caller sends the events singly)."""
        body = encode_batch([text for _, text in events])
        if len(body) > MAX_BATCH_BYTES and len(events) > 1:
            return self._send_halves(client, url, events)
        event_ids = [event_id for event_id, _ in events]
        response = self._post(client, url, body, event_ids)
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
        self, client: httpx.Client, url: str, body: bytes, event_ids: list[str]
    ) -> httpx.Response | None:
        """POSTs a JSON body with bounded retries on 429, 5xx, network errors and
        timeouts (waiting at least the server's Retry-After). Returns the final
        response, or None (reported) when the events are given up."""
        attempt = 0
        while True:
            cause: BaseException | None = None
            delay = self._backoff[min(attempt, len(self._backoff) - 1)]
            try:
                response = client.post(url, content=body, headers=_JSON_CONTENT)
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


_JSON_CONTENT: Final = {"content-type": "application/json"}


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
