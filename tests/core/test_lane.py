"""``Lane``: HTTP/1.1 over one keep-alive connection, driven without blocking."""

from __future__ import annotations

import gzip
import json
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.core.http_server import BATCH_PATH, FakeWeckrServer, Reply
from weckr_core.backends.lane import Lane

Handler = Callable[[socket.socket], object]


@pytest.fixture
def server() -> Iterator[FakeWeckrServer]:
    with FakeWeckrServer() as fake:
        yield fake


class RawServer:
    """Accepts connections on the loopback interface and hands each to ``handler``
    on a thread of its own, for answers FakeWeckrServer does not give."""

    def __init__(self, handler: Handler, context: ssl.SSLContext | None = None) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._handler = handler
        self._context = context
        self.connections = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            if self._context is not None:
                conn = self._context.wrap_socket(conn, server_side=True)
            self._handler(conn)
        except OSError:
            pass
        finally:
            conn.close()

    def close(self) -> None:
        self._listener.close()


def read_request(conn: socket.socket) -> bytes:
    """One request's bytes (headers and a Content-Length body)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(body) < length:
        body += conn.recv(65536)
    return head + b"\r\n\r\n" + body


def headers_for(lane: Lane, body: bytes) -> list[tuple[bytes, bytes]]:
    return [
        (b"host", f"{lane.host}:{lane.port}".encode()),
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
    ]


def post(lane: Lane, body: bytes, path: bytes = BATCH_PATH.encode(), timeout: float = 5.0) -> None:
    lane.begin(b"POST", path, headers_for(lane, body), body, timeout)


def batch_of(*event_ids: str) -> bytes:
    return json.dumps({"events": [{"eventId": i, "model": "gpt-4o"} for i in event_ids]}).encode()


def test_a_request_goes_out_and_its_answer_is_read_without_blocking(
    server: FakeWeckrServer,
) -> None:
    lane = Lane(server.url)
    lane.connect(2.0)

    post(lane, batch_of("e1", "e2"))
    answer = None
    deadline = time.monotonic() + 5
    while answer is None and time.monotonic() < deadline:
        answer = lane.advance()  # returns at once, answer or not
        time.sleep(0.001)

    assert answer is not None
    assert answer.status_code == 200
    assert answer.json() == {"accepted": 2, "duplicates": 0, "rejected": []}
    assert [e["eventId"] for e in server.accepted_events] == ["e1", "e2"]
    assert not lane.in_flight
    lane.close()


def test_one_connection_carries_request_after_request(server: FakeWeckrServer) -> None:
    lane = Lane(server.url)
    lane.connect(2.0)

    for event_id in ("e1", "e2", "e3"):
        assert lane.usable()
        post(lane, batch_of(event_id))
        assert lane.finish().status_code == 200

    assert len({request.client_port for request in server.requests()}) == 1
    lane.close()


def test_advance_does_not_wait_for_a_server_that_reads_nothing() -> None:
    stalled = threading.Event()
    raw = RawServer(lambda conn: stalled.wait(10))
    lane = Lane(f"http://127.0.0.1:{raw.port}")
    lane.connect(2.0)
    body = b"x" * 20_000_000  # far more than the socket buffers hold

    post(lane, body, timeout=30)
    started = time.monotonic()
    for _ in range(100):
        assert lane.advance() is None
    elapsed = time.monotonic() - started

    assert lane.in_flight
    assert elapsed < 2.0  # 100 calls that each sent what fit and went back
    stalled.set()
    lane.close()
    raw.close()


def test_a_large_body_goes_out_in_pieces_as_the_server_reads(server: FakeWeckrServer) -> None:
    lane = Lane(server.url)
    lane.connect(2.0)
    event_ids = [f"e{i}-" + "x" * 2000 for i in range(3000)]  # about 6 MB

    post(lane, batch_of(*event_ids), timeout=30)
    answer = lane.finish()

    assert answer.status_code == 200
    assert len(server.accepted_events) == 3000
    lane.close()


def test_chunked_and_compressed_answers_are_read() -> None:
    payload = gzip.compress(json.dumps({"accepted": 1}).encode())

    def chunked_gzip(conn: socket.socket) -> None:
        read_request(conn)
        half = len(payload) // 2
        chunks = b"".join(
            b"%x\r\n%s\r\n" % (len(part), part) for part in (payload[:half], payload[half:])
        )
        conn.sendall(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
            b"content-encoding: gzip\r\ntransfer-encoding: chunked\r\n\r\n" + chunks + b"0\r\n\r\n"
        )
        read_request(conn)

    raw = RawServer(chunked_gzip)
    lane = Lane(f"http://127.0.0.1:{raw.port}")
    lane.connect(2.0)

    post(lane, b"{}")
    answer = lane.finish()

    assert answer.json() == {"accepted": 1}
    assert lane.usable()  # a complete chunked answer leaves the connection reusable
    lane.close()
    raw.close()


def test_a_server_that_closes_after_answering_leaves_the_lane_to_reconnect(
    server: FakeWeckrServer,
) -> None:
    server.enqueue(BATCH_PATH, Reply(headers={"connection": "close"}))
    lane = Lane(server.url)
    lane.connect(2.0)

    post(lane, batch_of("e1"))
    assert lane.finish().status_code == 200
    assert not lane.usable()

    lane.connect(2.0)
    post(lane, batch_of("e2"))
    assert lane.finish().status_code == 200
    assert len({request.client_port for request in server.requests()}) == 2
    lane.close()


def test_an_idle_connection_the_server_dropped_is_not_used() -> None:
    raw = RawServer(lambda conn: None)  # accepts, then hangs up at once
    lane = Lane(f"http://127.0.0.1:{raw.port}")
    lane.connect(2.0)
    time.sleep(0.1)

    assert not lane.usable()
    assert not lane.connected
    raw.close()


def test_an_answer_that_does_not_come_in_time_is_a_read_timeout() -> None:
    held = threading.Event()
    raw = RawServer(lambda conn: (read_request(conn), held.wait(10)))
    lane = Lane(f"http://127.0.0.1:{raw.port}")
    lane.connect(2.0)

    post(lane, b"{}", timeout=0.2)
    with pytest.raises(httpx.ReadTimeout):
        lane.finish()

    assert not lane.connected and not lane.in_flight
    held.set()
    raw.close()


def test_a_connection_cut_mid_answer_is_a_transport_error() -> None:
    def cut(conn: socket.socket) -> None:
        read_request(conn)
        conn.sendall(b'HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n{"acc')

    raw = RawServer(cut)
    lane = Lane(f"http://127.0.0.1:{raw.port}")
    lane.connect(2.0)

    post(lane, b"{}")
    with pytest.raises(httpx.TransportError):
        lane.finish()

    assert not lane.connected
    raw.close()


def test_nothing_listening_is_a_connect_error() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]

    with pytest.raises(httpx.ConnectError):
        Lane(f"http://127.0.0.1:{port}").connect(2.0)


def test_as_an_httpx_transport_it_sends_the_clients_requests(server: FakeWeckrServer) -> None:
    lane = Lane(server.url)
    with httpx.Client(transport=lane, headers={"x-api-key": "wk_1"}, timeout=2.0) as client:
        first = client.post(server.batch_url, content=batch_of("e1"))
        second = client.post(server.batch_url, content=batch_of("e2"))

    assert (first.status_code, second.status_code) == (200, 200)
    assert second.json()["accepted"] == 1
    requests = server.requests()
    assert requests[0].headers["x-api-key"] == "wk_1"
    assert len({request.client_port for request in requests}) == 1


def test_a_lane_serves_its_own_origin_only() -> None:
    lane = Lane("https://weckr.example.com/api/v1/log")

    assert lane.port == 443
    assert lane.serves("https://weckr.example.com:443/api/v1/log/batch")
    assert not lane.serves("http://weckr.example.com/api/v1/log/batch")
    assert not lane.serves("https://other.example.com/api/v1/log/batch")
    with pytest.raises(ValueError, match="ftp"):
        Lane("ftp://weckr.example.com/log")


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1, made with the openssl command."""
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    command = (
        "openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=127.0.0.1"
        " -addext subjectAltName=IP:127.0.0.1"
    )
    subprocess.run(
        [*command.split(), "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )
    return cert, key


def test_https_goes_through_tls_and_checks_the_certificate(certificate: tuple[Path, Path]) -> None:
    cert, key = certificate
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(cert, key)

    def answer_twice(conn: socket.socket) -> None:
        for _ in range(2):
            if not read_request(conn):
                return
            conn.sendall(
                b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                b'content-length: 15\r\n\r\n{"accepted": 1}'
            )

    raw = RawServer(answer_twice, server_context)
    trusting = ssl.create_default_context(cafile=str(cert))
    lane = Lane(f"https://127.0.0.1:{raw.port}", ssl_context=trusting)
    lane.connect(2.0)

    for _ in range(2):
        time.sleep(0.05)  # lets TLS 1.3 session tickets arrive on the idle connection
        assert lane.usable()
        post(lane, b"{}")
        assert lane.finish().json() == {"accepted": 1}
    assert raw.connections == 1
    lane.close()

    untrusting = Lane(f"https://127.0.0.1:{raw.port}", ssl_context=ssl.create_default_context())
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        untrusting.connect(2.0)
    raw.close()
