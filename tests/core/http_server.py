"""A fake Weckr server on the loopback interface, for tests and benchmarks.

    with FakeWeckrServer() as server:
        server.enqueue(LOG_PATH, 500, Reply(429, delay=0.1))  # the next two POSTs /log
        server.set_reply(CHECK_PATH, Reply(200, {"allowed": False, "action": "block"}))
        backend = HttpBackend("wk_test", server.log_url, server.check_url)
        ...
        assert server.requests(CHECK_PATH)[0].query["userId"] == "u1"

Unprogrammed requests get what weckr_django answers: an "allowed" decision on
``/check``, and ``/log`` and ``/log/batch`` accept events idempotently by ``eventId``
(``accepted_events`` holds each event once, ``duplicates`` counts the repeats).
``POST /reserve`` allows without a reservation, as for a plan without a cap, and
``DELETE /reserve/<id>`` answers 204 (program it by its full path).
Connections are kept alive (HTTP/1.1) like the real server's.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import random
import socket
import sys
import threading
from collections import defaultdict, deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

CHECK_PATH = "/api/v1/check"
LOG_PATH = "/api/v1/log"
BATCH_PATH = "/api/v1/log/batch"
RESERVE_PATH = "/api/v1/reserve"

ALLOWED = {
    "allowed": True,
    "action": None,
    "alternativeModel": None,
    "currentSpend": 0,
    "cap": None,
    "remainingBudget": None,
}
RESERVE_ALLOWED = {**ALLOWED, "inFlight": 0, "plan": None, "reason": None, "reservation": None}


@dataclass(frozen=True)
class Reply:
    """One programmed answer. ``body`` None means the path's default body (for a 2xx)
    or ``{"error": "HTTP <status>"}``; ``raw`` is sent as is instead of JSON;
    ``delay`` seconds pass before answering (cut short when the server stops)."""

    status: int = 200
    body: Any = None
    delay: float = 0.0
    raw: bytes | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    # Process the request, then close the connection without answering.
    drop: bool = False


@dataclass(frozen=True)
class ReceivedRequest:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # lower-cased names
    body: Any  # parsed JSON, or None when empty or not JSON
    status: int  # what the server chose to answer
    client_port: int  # one port per TCP connection: shows keep-alive

    @property
    def events(self) -> list[dict[str, Any]]:
        """The usage events a log request carried."""
        return _events(self.path, self.body)


class FakeWeckrServer:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._queued: defaultdict[str, deque[Reply]] = defaultdict(deque)
        self._replies: dict[str, Reply] = {}
        self._requests: list[ReceivedRequest] = []
        self._accepted: dict[str, dict[str, Any]] = {}
        self._duplicates = 0
        self._flaky: tuple[float, random.Random] | None = None
        self._connections: set[socket.socket] = set()
        self._httpd = _Server(("127.0.0.1", 0), _Handler, self)
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, args=(0.01,), name="fake-weckr", daemon=True
        )

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host!s}:{port}"

    @property
    def check_url(self) -> str:
        return self.url + CHECK_PATH

    @property
    def log_url(self) -> str:
        return self.url + LOG_PATH

    @property
    def batch_url(self) -> str:
        return self.url + BATCH_PATH

    @property
    def reserve_url(self) -> str:
        return self.url + RESERVE_PATH

    def start(self) -> FakeWeckrServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopped.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        with self._lock:
            connections = list(self._connections)
        for connection in connections:  # ends idle keep-alive connections
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
        self._thread.join(timeout=5)

    def __enter__(self) -> FakeWeckrServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def enqueue(self, path: str, *replies: Reply | int) -> None:
        """Answer the next requests to ``path`` with ``replies``, in order."""
        with self._lock:
            self._queued[path].extend(_as_reply(reply) for reply in replies)

    def set_reply(self, path: str, reply: Reply | int | None) -> None:
        """Answer every later request to ``path`` (after any enqueued replies) with
        ``reply``; None restores the default behaviour."""
        with self._lock:
            if reply is None:
                self._replies.pop(path, None)
            else:
                self._replies[path] = _as_reply(reply)

    def requests(self, path: str | None = None) -> list[ReceivedRequest]:
        with self._lock:
            return [r for r in self._requests if path is None or r.path == path]

    @property
    def accepted_events(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._accepted.values())

    @property
    def duplicates(self) -> int:
        with self._lock:
            return self._duplicates

    def make_flaky(self, fraction: float, seed: int = 0) -> None:
        """From now on, ``fraction`` of the usage posts fail: half answered 503 without
        storing anything, half stored and then cut off without an answer (the client
        cannot tell they landed). ``fraction`` 0 ends it."""
        with self._lock:
            self._flaky = (fraction, random.Random(seed)) if fraction else None

    def _answer(
        self, method: str, target: str, headers: dict[str, str], body: Any, client_port: int
    ) -> Reply:
        """Records the request and returns the reply to send, with ``raw`` filled in."""
        url = urlsplit(target)
        path = url.path
        with self._lock:
            queued = self._queued[path]
            reply = queued.popleft() if queued else self._replies.get(path)
            if reply is None:
                reply = _default_reply(method, path)
            if self._flaky is not None and path in (LOG_PATH, BATCH_PATH):
                fraction, chance = self._flaky
                draw = chance.random()
                if draw < fraction / 2:
                    reply = Reply(503)
                elif draw < fraction:
                    reply = dataclasses.replace(reply, drop=True)
            status, payload = reply.status, reply.body
            if 200 <= status < 300 and path in (LOG_PATH, BATCH_PATH):
                status, payload = self._accept(path, _events(path, body), reply)
            elif payload is None and 200 <= status < 300:
                payload = RESERVE_ALLOWED if path == RESERVE_PATH else ALLOWED
            elif payload is None:
                payload = {"error": f"HTTP {status}"}
            self._requests.append(
                ReceivedRequest(
                    method, path, dict(parse_qsl(url.query)), headers, body, status, client_port
                )
            )
        if reply.raw is not None:
            raw = reply.raw
        else:
            raw = b"" if status == 204 else json.dumps(payload).encode()
        return dataclasses.replace(reply, status=status, raw=raw)

    def _accept(self, path: str, events: list[dict[str, Any]], reply: Reply) -> tuple[int, Any]:
        # Called with self._lock held. Stores events once per eventId, like weckr_django;
        # events a programmed body lists as rejected are not stored.
        rejected = reply.body.get("rejected") or [] if isinstance(reply.body, dict) else []
        skipped = {item.get("index") for item in rejected if isinstance(item, dict)}
        created = duplicates = 0
        for index, event in enumerate(events):
            event_id = str(event.get("eventId") or f"no-event-id-{len(self._accepted)}")
            if index in skipped:
                continue
            if event_id in self._accepted:
                duplicates += 1
            else:
                self._accepted[event_id] = event
                created += 1
        self._duplicates += duplicates
        if reply.body is not None:
            return reply.status, reply.body
        if path == LOG_PATH:
            first = events[0].get("eventId") if events else None
            answer = {"ok": True, "eventId": first, "duplicate": not created, "costUsd": None}
            return (201 if created else 200), answer
        return reply.status, {"accepted": created, "duplicates": duplicates, "rejected": []}


def _default_reply(method: str, path: str) -> Reply:
    if path in (CHECK_PATH, LOG_PATH, BATCH_PATH, RESERVE_PATH):
        return Reply()
    if method == "DELETE" and path.startswith(RESERVE_PATH + "/"):
        return Reply(204)
    return Reply(404)


def _events(path: str, body: Any) -> list[dict[str, Any]]:
    if path == BATCH_PATH and isinstance(body, dict):
        return list(body.get("events") or [])
    if path == LOG_PATH and isinstance(body, dict):
        return [body]
    return []


def _as_reply(reply: Reply | int) -> Reply:
    return Reply(reply) if isinstance(reply, int) else reply


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(
        self, address: tuple[str, int], handler: type[_Handler], fake: FakeWeckrServer
    ) -> None:
        super().__init__(address, handler)
        self.fake = fake

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):  # clients hanging up are fine
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out in separate writes
    server: _Server

    def setup(self) -> None:
        super().setup()
        with self.server.fake._lock:
            self.server.fake._connections.add(self.connection)

    def finish(self) -> None:
        with self.server.fake._lock:
            self.server.fake._connections.discard(self.connection)
        super().finish()

    def do_GET(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def do_DELETE(self) -> None:
        self._handle()

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _handle(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        headers = {name.lower(): value for name, value in self.headers.items()}
        fake = self.server.fake
        reply = fake._answer(self.command, self.path, headers, body, self.client_address[1])
        if (reply.delay and fake._stopped.wait(reply.delay)) or reply.drop:
            self.close_connection = True
            return
        payload = reply.raw or b""
        self.send_response(reply.status)
        if reply.status != 204:  # which has no body, nor headers about one
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(payload)))
        for name, value in reply.headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(payload)
