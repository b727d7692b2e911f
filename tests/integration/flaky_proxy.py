"""An HTTP/1.1 proxy in front of a real server that fails like a bad load balancer:
it answers ``503`` with ``Retry-After`` to some requests without forwarding them,
and resets (TCP RST) the connection of others, either before forwarding the
request or after the server has answered it, so the client cannot tell whether
it landed. Seeded: one client sending one request at a time meets the same faults
on every run.

    with FlakyProxy("http://127.0.0.1:8000", unavailable=0.3, resets=0.1) as proxy:
        httpx.post(proxy.url + "/api/v1/log", ...)
    print(proxy.counts)

Requests with a ``Content-Length`` body (or none) only, which is what httpx sends.
"""

from __future__ import annotations

import contextlib
import enum
import http.client
import random
import socket
import struct
import threading
from dataclasses import dataclass
from types import TracebackType
from typing import BinaryIO
from urllib.parse import urlsplit

# Headers about one connection, not the message: not passed on.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)


class Fate(enum.Enum):
    FORWARDED = "forwarded"
    UNAVAILABLE = "503"  # answered by the proxy, not forwarded
    RESET_BEFORE = "reset before forwarding"  # never reached the server
    RESET_AFTER = "reset after the answer"  # reached the server; its answer is lost


@dataclass
class ProxyCounts:
    requests: int = 0
    forwarded: int = 0  # answered by the server and passed back
    unavailable: int = 0
    resets_before: int = 0
    resets_after: int = 0
    upstream_errors: int = 0  # the server could not be reached: connection closed

    def __str__(self) -> str:
        return (
            f"{self.requests} requests: {self.forwarded} forwarded, {self.unavailable} "
            f"answered 503, {self.resets_before} reset before forwarding, "
            f"{self.resets_after} reset after the server answered, "
            f"{self.upstream_errors} upstream errors"
        )


@dataclass(frozen=True)
class Request:
    method: str
    target: str
    headers: list[tuple[str, str]]
    body: bytes


class FlakyProxy:
    """``unavailable`` of the requests get a 503, ``resets`` of them a reset (half
    before forwarding, half after the server answered); the rest pass through."""

    def __init__(
        self,
        upstream: str,
        *,
        unavailable: float = 0.3,
        resets: float = 0.1,
        retry_after: int = 1,
        seed: int = 0,
    ) -> None:
        if unavailable < 0 or resets < 0 or unavailable + resets > 1:
            raise ValueError("unavailable and resets are fractions adding up to 1 at most")
        address = urlsplit(upstream)
        if address.hostname is None or address.port is None:
            raise ValueError(f"upstream needs a host and port: {upstream!r}")
        self._upstream = (address.hostname, address.port)
        self._unavailable = unavailable
        self._resets = resets
        self._retry_after = retry_after
        self._random = random.Random(seed)
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._clients: set[socket.socket] = set()
        self.counts = ProxyCounts()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.1)  # to notice ``stop``
        self._thread = threading.Thread(target=self._accept, name="flaky-proxy", daemon=True)

    @property
    def url(self) -> str:
        host, port = self._listener.getsockname()[:2]
        return f"http://{host}:{port}"

    def start(self) -> FlakyProxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join(timeout=5)
        self._listener.close()
        with self._lock:
            clients = list(self._clients)
        for client in clients:  # ends the handlers waiting on idle keep-alive connections
            with contextlib.suppress(OSError):
                client.shutdown(socket.SHUT_RDWR)

    def __enter__(self) -> FlakyProxy:
        return self.start()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def _accept(self) -> None:
        while not self._stopped.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            client.settimeout(None)
            with self._lock:
                self._clients.add(client)
            threading.Thread(
                target=self._serve, args=(client,), name="flaky-proxy-client", daemon=True
            ).start()

    def _draw(self) -> Fate:
        with self._lock:
            self.counts.requests += 1
            draw = self._random.random()
            if draw < self._unavailable:
                self.counts.unavailable += 1
                return Fate.UNAVAILABLE
            if draw < self._unavailable + self._resets / 2:
                self.counts.resets_before += 1
                return Fate.RESET_BEFORE
            if draw < self._unavailable + self._resets:
                return Fate.RESET_AFTER  # counted once the server has answered
            return Fate.FORWARDED

    def _serve(self, client: socket.socket) -> None:
        """One client connection, kept alive: its requests in turn, over an
        upstream connection of its own."""
        reader = client.makefile("rb")
        upstream = http.client.HTTPConnection(*self._upstream, timeout=60)
        reset = False
        try:
            while (request := _read_request(reader)) is not None:
                fate = self._draw()
                if fate is Fate.UNAVAILABLE:
                    client.sendall(self._unavailable_response())
                    continue
                if fate is Fate.RESET_BEFORE:
                    reset = True
                    return
                try:
                    status, reason, headers, body = _forward(upstream, request)
                except (OSError, http.client.HTTPException):
                    with self._lock:
                        self.counts.upstream_errors += 1
                    return
                with self._lock:
                    if fate is Fate.RESET_AFTER:
                        self.counts.resets_after += 1
                    else:
                        self.counts.forwarded += 1
                if fate is Fate.RESET_AFTER:
                    reset = True
                    return
                client.sendall(_response(status, reason, headers, body))
        except (OSError, ValueError):
            pass  # the client went away or sent no HTTP, or the proxy stopped
        finally:
            upstream.close()
            reader.close()  # else closing the socket would wait for it
            if reset:
                # Linger on, 0 s: close() sends RST instead of FIN, and drops what
                # was not sent; the client sees "connection reset by peer".
                with contextlib.suppress(OSError):
                    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            client.close()
            with self._lock:
                self._clients.discard(client)

    def _unavailable_response(self) -> bytes:
        body = b'{"error": "Service unavailable (flaky proxy)"}'
        headers = [
            ("Content-Type", "application/json"),
            ("Retry-After", str(self._retry_after)),
        ]
        return _response(503, "Service Unavailable", headers, body)


def _read_request(reader: BinaryIO) -> Request | None:
    """The next request on the connection; None when the client closed it."""
    line = reader.readline(65_537)
    if not line:
        return None
    method, target, _ = line.decode("latin-1").split(" ", 2)
    headers: list[tuple[str, str]] = []
    while (header := reader.readline(65_537)) not in (b"\r\n", b"\n", b""):
        name, _, value = header.decode("latin-1").partition(":")
        headers.append((name.strip(), value.strip()))
    fields = {name.lower(): value for name, value in headers}
    if "chunked" in fields.get("transfer-encoding", "").lower():
        raise OSError("chunked request bodies are not supported")
    body = reader.read(int(fields.get("content-length", "0")))
    return Request(method, target, headers, body)


def _forward(
    upstream: http.client.HTTPConnection, request: Request
) -> tuple[int, str, list[tuple[str, str]], bytes]:
    """The request on the upstream connection (re-opened when the server closed
    it); the server's status, reason, headers and whole body."""
    # The client's own Host and Accept-Encoding headers go as they are.
    upstream.putrequest(request.method, request.target, skip_host=True, skip_accept_encoding=True)
    for name, value in request.headers:
        if name.lower() not in HOP_BY_HOP:
            upstream.putheader(name, value)
    upstream.endheaders(request.body or None)
    response = upstream.getresponse()
    body = response.read()
    return response.status, response.reason, response.getheaders(), body


def _response(status: int, reason: str, headers: list[tuple[str, str]], body: bytes) -> bytes:
    kept = [
        (name, value)
        for name, value in headers
        if name.lower() not in HOP_BY_HOP and name.lower() != "content-length"
    ]
    lines = [f"HTTP/1.1 {status} {reason}"]
    lines += [f"{name}: {value}" for name, value in kept]
    lines += [f"Content-Length: {len(body)}", "Connection: keep-alive", "", ""]
    return "\r\n".join(lines).encode("latin-1") + body
