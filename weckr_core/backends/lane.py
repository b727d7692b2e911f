"""One keep-alive HTTP/1.1 connection that a busy thread can send on without waiting.

Why it exists: under the GIL, a background thread that wakes up to send while the
process's other threads run Python is starved of the GIL (CPython hands it over
only when the running thread waits or its switch interval passes without a
release), and while it waits every release costs the busy thread a hand-over
attempt. Measured on a thread that runs real OpenAI SDK calls over a fake
transport, a sender like that slowed every call by 50-90 us (see
``bench/bench_client.py``). HttpBackend therefore lets the threads that record
usage deliver it too, a batch at a time, through a ``Lane``:

- ``begin`` builds a request and ``advance`` sends what the socket takes and reads
  what has arrived, never blocking; the answer is picked up on a later call.
- ``finish`` blocks until the answer is in, for HttpBackend's own sender thread and
  for ``flush``, which wait anyway.
- As an httpx transport (``handle_request``), it carries the sender's requests with
  their retries on the same connection.

A Lane is not thread-safe: HttpBackend lets one thread at a time use it. Connecting
(TCP, TLS) always blocks, so only the sender thread connects.
"""

from __future__ import annotations

import select
import socket
import ssl
import time
from collections.abc import Sequence

import h11
import httpx

_Headers = Sequence[tuple[bytes, bytes]]
_RECEIVE_BYTES = 65_536


class Lane(httpx.BaseTransport):
    def __init__(self, url: str, *, ssl_context: ssl.SSLContext | None = None) -> None:
        parsed = httpx.URL(url)
        if parsed.scheme not in ("http", "https"):
            raise ValueError(f"Weckr: cannot send to a {parsed.scheme!r} URL: {url}")
        self.scheme = parsed.scheme
        self.host = parsed.host
        self.port = parsed.port or (443 if parsed.scheme == "https" else 80)
        self._ssl_context = ssl_context
        self._socket: socket.socket | None = None
        self._http = h11.Connection(h11.CLIENT)
        self._outgoing = memoryview(b"")
        self._in_flight = False
        self._deadline = 0.0
        self._status = 0
        self._headers: list[tuple[bytes, bytes]] = []
        self._body: list[bytes] = []

    def serves(self, url: str) -> bool:
        """True when ``url`` is on this lane's origin."""
        parsed = httpx.URL(url)
        port = parsed.port or (443 if parsed.scheme == "https" else 80)
        return (parsed.scheme, parsed.host, port) == (self.scheme, self.host, self.port)

    @property
    def connected(self) -> bool:
        return self._socket is not None

    @property
    def in_flight(self) -> bool:
        """A request was begun and its answer is not read yet."""
        return self._in_flight

    # -- connection ---------------------------------------------------------------

    def connect(self, timeout: float | None) -> None:
        """Open the connection (blocking). Raises ``httpx.ConnectError`` or
        ``httpx.ConnectTimeout``."""
        self.close()
        try:
            sock = socket.create_connection((self.host, self.port), timeout=timeout)
        except TimeoutError as error:
            raise httpx.ConnectTimeout(f"connecting to {self.host}:{self.port}: {error}") from error
        except OSError as error:
            raise httpx.ConnectError(f"connecting to {self.host}:{self.port}: {error}") from error
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.scheme == "https":
                context = self._ssl_context or httpx.create_ssl_context()
                sock = context.wrap_socket(sock, server_hostname=self.host)
            sock.setblocking(False)
        except OSError as error:  # ssl.SSLError is an OSError
            sock.close()
            raise httpx.ConnectError(f"TLS with {self.host}:{self.port}: {error}") from error
        self._socket = sock
        self._http = h11.Connection(h11.CLIENT)

    def usable(self) -> bool:
        """Connected, idle, and not closed by the server meanwhile (an idle
        keep-alive connection that has something to read was closed or broken)."""
        sock = self._socket
        if sock is None or self._in_flight:
            return False
        try:
            readable, _, _ = select.select([sock], [], [], 0)
            # TLS 1.3 servers send session tickets after the handshake: readable
            # bytes that are no data. Anything else, or the end, is a dead connection.
            if readable and sock.recv(1) is not None:
                self.close()
                return False
        except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
            pass
        except (OSError, ValueError):
            self.close()
            return False
        return True

    def close(self) -> None:
        sock, self._socket = self._socket, None
        self._in_flight = False
        self._outgoing = memoryview(b"")
        if sock is not None:
            sock.close()

    # -- one request at a time --------------------------------------------------------

    def begin(
        self, method: bytes, target: bytes, headers: _Headers, body: bytes, timeout: float
    ) -> None:
        """Start a request on the idle, connected lane; ``headers`` must name the
        host and the body's length. Sends nothing yet: ``advance`` does."""
        assert self._socket is not None and not self._in_flight
        http = self._http
        try:
            data = b"".join(
                (
                    http.send(h11.Request(method=method, target=target, headers=list(headers)))
                    or b"",
                    http.send(h11.Data(data=body)) or b"",
                    http.send(h11.EndOfMessage()) or b"",
                )
            )
        except h11.LocalProtocolError:  # a header h11 refuses: this exchange is spoilt
            self.close()
            raise
        self._outgoing = memoryview(data)
        self._in_flight = True
        self._deadline = time.monotonic() + timeout
        self._status, self._headers, self._body = 0, [], []

    def advance(self) -> httpx.Response | None:
        """Send and read what can be without blocking: the response once it is
        complete, else None. Raises an ``httpx.TransportError`` (and closes the
        connection) on a network or protocol error, or once the timeout has passed."""
        sock = self._socket
        assert sock is not None and self._in_flight
        try:
            while self._outgoing:
                try:
                    sent = sock.send(self._outgoing)
                except (BlockingIOError, ssl.SSLWantWriteError, ssl.SSLWantReadError):
                    break
                self._outgoing = self._outgoing[sent:]
            if not self._outgoing:
                response = self._receive(sock)
                if response is not None:
                    return response
        except httpx.TransportError:
            self.close()
            raise
        except (OSError, h11.ProtocolError) as error:
            self.close()
            kind = httpx.WriteError if self._outgoing else httpx.ReadError
            raise kind(f"{type(error).__name__}: {error}") from error
        if time.monotonic() >= self._deadline:
            self.close()
            raise httpx.ReadTimeout(f"no answer from {self.host}:{self.port} in time")
        return None

    def finish(self) -> httpx.Response:
        """Block until the response of the request in flight is in (or its timeout)."""
        while True:
            response = self.advance()
            if response is not None:
                return response
            sock = self._socket
            assert sock is not None
            if isinstance(sock, ssl.SSLSocket) and sock.pending():
                continue  # decrypted bytes wait in the TLS buffer, not on the socket
            remaining = max(0.0, self._deadline - time.monotonic())
            writing = [sock] if self._outgoing else []
            select.select([sock], writing, [], remaining)

    def _receive(self, sock: socket.socket) -> httpx.Response | None:
        http = self._http
        while True:
            event = http.next_event()
            if event is h11.NEED_DATA:
                try:
                    data = sock.recv(_RECEIVE_BYTES)
                except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
                    return None
                http.receive_data(data)  # b"" tells h11 the server closed
                continue
            if isinstance(event, h11.Response):
                self._status, self._headers = event.status_code, list(event.headers)
            elif isinstance(event, h11.Data):
                self._body.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                return self._complete()
            elif isinstance(event, h11.ConnectionClosed):
                raise httpx.RemoteProtocolError("the server closed the connection")
            # InformationalResponse (1xx) and the like: read on.

    def _complete(self) -> httpx.Response:
        self._in_flight = False
        http = self._http
        if http.our_state is h11.DONE and http.their_state is h11.DONE:
            http.start_next_cycle()
        else:  # the server asked to close, or the exchange cannot be reused
            self.close()
        response = httpx.Response(
            self._status, headers=self._headers, stream=httpx.ByteStream(b"".join(self._body))
        )
        response.read()  # decodes a compressed body
        return response

    # -- httpx transport, for the sender's blocking requests ---------------------------

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        timeouts = request.extensions.get("timeout", {})
        if self._in_flight:
            raise RuntimeError("Weckr: the lane has a request in flight")
        if not self.usable():
            self.connect(timeouts.get("connect"))
        read_timeout = timeouts.get("read")
        self.begin(
            request.method.encode("ascii"),
            request.url.raw_path,
            request.headers.raw,
            request.read(),
            read_timeout if read_timeout is not None else 60.0,
        )
        return self.finish()
