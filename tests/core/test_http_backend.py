from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from tests.core.http_server import (
    BATCH_PATH,
    CHECK_PATH,
    LOG_PATH,
    RESERVE_PATH,
    FakeWeckrServer,
    ReceivedRequest,
    Reply,
)
from weckr_core.backends import ALLOW, CapDecision, CapRequest, Reservation
from weckr_core.backends import http as http_backend
from weckr_core.backends.http import (
    MAX_BATCH_BYTES,
    SERVER_MAX_BATCH_SIZE,
    HttpBackend,
    WeckrBackendError,
)
from weckr_core.errors import WeckrConfigError
from weckr_core.pricing import price_record
from weckr_core.records import UsageRecord

API_KEY = "wk_test_123"
BackendFactory = Callable[..., HttpBackend]


@pytest.fixture
def server() -> Iterator[FakeWeckrServer]:
    with FakeWeckrServer() as fake:
        yield fake


@pytest.fixture
def errors() -> list[BaseException]:
    return []


@pytest.fixture
def make_backend(server: FakeWeckrServer, errors: list[BaseException]) -> Iterator[BackendFactory]:
    backends: list[HttpBackend] = []

    def make(**options: Any) -> HttpBackend:
        options = {
            "backoff_seconds": (0.02, 0.05),
            "on_error": errors.append,
            "check_timeout_seconds": 1.0,
            "send_timeout_seconds": 2.0,
            **options,
        }
        backend = HttpBackend(API_KEY, server.log_url, server.check_url, **options)
        backends.append(backend)
        return backend

    yield make
    for backend in backends:
        backend.close(timeout=0.1)


def usage(**fields: Any) -> UsageRecord:
    defaults: dict[str, Any] = {
        "user_id": "u1",
        "plan": "pro",
        "feature": "summary",
        "provider": "openai",
        "model": "gpt-4o-mini",
        "input_tokens": 1200,
        "cached_input_tokens": 200,
        "cache_creation_tokens": 50,
        "output_tokens": 300,
        "reasoning_tokens": 40,
    }
    return UsageRecord(**{**defaults, **fields})


def log_requests(server: FakeWeckrServer) -> list[ReceivedRequest]:
    return [r for r in server.requests() if r.path in (LOG_PATH, BATCH_PATH)]


def wait_until(condition: Callable[[], bool], timeout: float = 2.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.005)


def occupy_sender(server: FakeWeckrServer, backend: HttpBackend, seconds: float) -> UsageRecord:
    """Keeps the sender busy on one slow delivery, so the next records queue up."""
    server.enqueue(LOG_PATH, Reply(delay=seconds))
    first = usage()
    backend.record(first)
    wait_until(lambda: len(log_requests(server)) == 1)
    return first


def unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def expected_cost(record: UsageRecord) -> float:
    return float(price_record(record).usd)


def accepted_ids(server: FakeWeckrServer) -> list[str]:
    return [event["eventId"] for event in server.accepted_events]


def reported_ids(errors: list[BaseException]) -> list[str]:
    return [i for e in errors if isinstance(e, WeckrBackendError) for i in e.event_ids]


# -- check ---------------------------------------------------------------------


def test_check_sends_query_and_key_and_parses_decimals(
    server: FakeWeckrServer, make_backend: BackendFactory
) -> None:
    server.set_reply(
        CHECK_PATH, Reply(body={"allowed": True, "currentSpend": 1.25, "cap": "10.00"})
    )

    decision = make_backend().check("u1", "pro", "gpt-4o")

    [request] = server.requests(CHECK_PATH)
    assert request.method == "GET"
    assert request.query == {"userId": "u1", "planName": "pro", "model": "gpt-4o"}
    assert request.headers["x-api-key"] == API_KEY
    assert decision.allowed
    assert decision.current_spend == Decimal("1.25")
    assert decision.cap == Decimal("10.00")
    assert decision.remaining_budget == Decimal("8.75")


@pytest.mark.parametrize(
    ("body", "action", "alternative"),
    [
        ({"allowed": False, "action": "downgrade", "alternativeModel": "gpt-4o-mini"},
         "downgrade", "gpt-4o-mini"),
        ({"allowed": False, "action": "downgrade", "alternativeModel": None}, "block", None),
        ({"allowed": False, "action": "block"}, "block", None),
        ({"allowed": False, "action": None}, "block", None),
    ],
)  # fmt: skip
def test_check_maps_refusals(
    server: FakeWeckrServer,
    make_backend: BackendFactory,
    body: dict[str, Any],
    action: str,
    alternative: str | None,
) -> None:
    server.set_reply(CHECK_PATH, Reply(body={**body, "currentSpend": 12, "cap": 10}))

    decision = make_backend().check("u1", "pro", "gpt-4o")

    assert (decision.action, decision.alternative_model) == (action, alternative)
    assert decision.current_spend == Decimal(12)


@pytest.mark.parametrize(("user_id", "plan"), [(None, "pro"), ("u1", None), ("", "pro")])
def test_check_without_user_or_plan_allows_without_asking(
    server: FakeWeckrServer, make_backend: BackendFactory, user_id: str | None, plan: str | None
) -> None:
    assert make_backend().check(user_id, plan, "gpt-4o").allowed
    assert server.requests(CHECK_PATH) == []


@pytest.mark.parametrize(("status", "code"), [(401, "invalid_api_key"), (403, "forbidden")])
def test_check_fails_closed_on_bad_key(
    server: FakeWeckrServer, make_backend: BackendFactory, status: int, code: str
) -> None:
    server.set_reply(CHECK_PATH, Reply(status, {"error": "key wk_test_ is not valid"}))
    backend = make_backend()

    for _ in range(2):  # not cached: asks again each time
        with pytest.raises(WeckrConfigError) as raised:
            backend.check("u1", "pro", "gpt-4o")
        assert raised.value.code == code
        assert "key wk_test_ is not valid" in str(raised.value)
    assert len(server.requests(CHECK_PATH)) == 2


@pytest.mark.parametrize(
    "reply",
    [Reply(500), Reply(429), Reply(400), Reply(raw=b"<html>oops</html>"), Reply(body=[1, 2])],
    ids=["500", "429", "400", "not-json", "not-an-object"],
)
def test_check_fails_open_and_reports(
    server: FakeWeckrServer,
    make_backend: BackendFactory,
    errors: list[BaseException],
    reply: Reply,
) -> None:
    server.set_reply(CHECK_PATH, reply)

    assert make_backend().check("u1", "pro", "gpt-4o").allowed
    [error] = errors
    assert isinstance(error, WeckrBackendError)
    assert "allowing calls" in str(error)


def test_check_fails_open_on_timeout(
    server: FakeWeckrServer, make_backend: BackendFactory, errors: list[BaseException]
) -> None:
    server.set_reply(CHECK_PATH, Reply(delay=2.0))
    started = time.monotonic()

    decision = make_backend(check_timeout_seconds=0.1).check("u1", "pro", "gpt-4o")

    assert decision.allowed
    assert time.monotonic() - started < 1.0
    assert "Timeout" in str(errors[0])


def test_check_fails_open_when_connection_refused(errors: list[BaseException]) -> None:
    url = f"http://127.0.0.1:{unused_port()}/api/v1"
    backend = HttpBackend(API_KEY, f"{url}/log", f"{url}/check", on_error=errors.append)

    assert backend.check("u1", "pro", "gpt-4o").allowed
    assert isinstance(errors[0], WeckrBackendError)
    assert "ConnectError" in str(errors[0])
    backend.close(timeout=0)


def test_check_caches_decisions_for_the_ttl_per_key(
    server: FakeWeckrServer, make_backend: BackendFactory
) -> None:
    backend = make_backend(cache_ttl_seconds=0.15)

    for _ in range(3):
        backend.check("u1", "pro", "gpt-4o")
    backend.check("u1", "pro", "gpt-4o-mini")
    backend.check("u2", "pro", "gpt-4o")
    assert len(server.requests(CHECK_PATH)) == 3

    time.sleep(0.2)
    backend.check("u1", "pro", "gpt-4o")
    assert len(server.requests(CHECK_PATH)) == 4


@pytest.fixture
def short_outages(monkeypatch: pytest.MonkeyPatch) -> float:
    """Calls stop asking a failing server for 0.2 s (2 s by default)."""
    monkeypatch.setattr(http_backend, "SERVER_DOWN_SECONDS", 0.2)
    return 0.2


def test_a_failed_check_is_not_asked_again_for_a_moment(
    server: FakeWeckrServer, make_backend: BackendFactory, short_outages: float
) -> None:
    server.enqueue(CHECK_PATH, 503)
    server.set_reply(CHECK_PATH, Reply(body={"allowed": False, "action": "block"}))
    backend = make_backend()

    assert backend.check("u1", "pro", "gpt-4o").allowed  # failed open
    assert backend.check("u1", "pro", "gpt-4o").allowed  # without waiting on the server
    assert len(server.requests(CHECK_PATH)) == 1
    time.sleep(short_outages + 0.05)
    assert backend.check("u1", "pro", "gpt-4o").action == "block"
    assert backend.check("u1", "pro", "gpt-4o").action == "block"  # now cached
    assert len(server.requests(CHECK_PATH)) == 2


def test_a_user_refused_lately_stays_refused_while_the_server_is_away(
    server: FakeWeckrServer, make_backend: BackendFactory, short_outages: float
) -> None:
    server.enqueue(RESERVE_PATH, Reply(body={"allowed": False, "action": "block"}))
    server.set_reply(RESERVE_PATH, 503)
    backend = make_backend()

    assert backend.reserve(cap_request()).action == "block"
    assert backend.reserve(cap_request()).action == "block"  # the server failed
    other = CapRequest("u2", "pro", "gpt-4o", "openai", input_tokens=10, max_output_tokens=5)
    assert backend.reserve(other) is ALLOW  # nothing known of u2: fails open


def test_an_account_refused_lately_stays_refused_for_all_its_users_while_away(
    server: FakeWeckrServer, make_backend: BackendFactory, short_outages: float
) -> None:
    refused = {"allowed": False, "action": "block", "reason": "cap", "accountId": "acme"}
    server.enqueue(RESERVE_PATH, Reply(body=refused))
    server.set_reply(RESERVE_PATH, 503)
    backend = make_backend()

    first = backend.reserve(cap_request(account_id="acme"))
    assert (first.action, first.account_id) == ("block", "acme")
    # The server is away now: any user of acme stays refused, others fail open.
    teammate = backend.reserve(cap_request(user_id="u2", account_id="acme"))
    assert (teammate.action, teammate.account_id) == ("block", "acme")
    assert backend.reserve(cap_request(user_id="u2", account_id="globex")) is ALLOW


@pytest.mark.parametrize("reply", [Reply(delay=0.3), Reply(503, delay=0.3)], ids=["ok", "error"])
def test_concurrent_checks_share_one_request(
    server: FakeWeckrServer, make_backend: BackendFactory, reply: Reply
) -> None:
    server.set_reply(CHECK_PATH, reply)
    backend = make_backend()
    start = threading.Barrier(8)
    actions: list[str] = []

    def check() -> None:
        start.wait()
        actions.append(backend.check("u1", "pro", "gpt-4o").action)

    threads = [threading.Thread(target=check) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert actions == ["allow"] * 8
    assert len(server.requests(CHECK_PATH)) == 1


def test_concurrent_checks_all_raise_on_bad_key(
    server: FakeWeckrServer, make_backend: BackendFactory
) -> None:
    server.set_reply(CHECK_PATH, Reply(401, delay=0.3))
    backend = make_backend()
    codes: list[str] = []

    def check() -> None:
        try:
            backend.check("u1", "pro", "gpt-4o")
        except WeckrConfigError as error:
            codes.append(error.code)

    threads = [threading.Thread(target=check) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert codes == ["invalid_api_key"] * 4
    assert len(server.requests(CHECK_PATH)) == 1


# -- record and flush ----------------------------------------------------------


def test_record_sends_the_priced_camel_case_payload(
    server: FakeWeckrServer, make_backend: BackendFactory, errors: list[BaseException]
) -> None:
    record = usage(run_id="run-1", tags=("beta",))
    backend = make_backend()

    backend.record(record)
    assert backend.flush(timeout=2)

    [request] = log_requests(server)
    assert (request.method, request.path) == ("POST", LOG_PATH)
    assert request.headers["x-api-key"] == API_KEY
    assert request.headers["content-type"] == "application/json"
    payload = request.body
    cost = expected_cost(record)
    assert payload == {**record.to_wire(), "costUsd": pytest.approx(cost, rel=1e-12)}
    assert payload["eventId"] == record.event_id
    assert (payload["userId"], payload["planName"], payload["feature"]) == ("u1", "pro", "summary")
    assert (payload["inputTokens"], payload["outputTokens"]) == (1200, 300)
    assert (payload["cachedInputTokens"], payload["cacheCreationTokens"]) == (200, 50)
    assert payload["reasoningTokens"] == 40
    assert (payload["runId"], payload["tags"]) == ("run-1", ["beta"])
    assert cost > 0
    assert errors == []


def test_records_are_priced_off_the_callers_record(
    server: FakeWeckrServer, make_backend: BackendFactory
) -> None:
    unpriced, priced = usage(), usage(cost_usd=Decimal("0.5"))
    backend = make_backend()

    backend.record(unpriced)
    backend.record(priced)
    assert backend.flush(timeout=2)

    # The sender prices for the wire; the caller's record is not written to from
    # another thread. A record that carries its cost is sent with that cost.
    assert unpriced.cost_usd is None
    costs = {event["eventId"]: event["costUsd"] for event in server.accepted_events}
    assert costs[unpriced.event_id] == pytest.approx(expected_cost(unpriced))
    assert costs[priced.event_id] == 0.5


def test_an_event_that_cannot_be_json_is_reported_and_the_rest_sent(
    server: FakeWeckrServer, make_backend: BackendFactory, errors: list[BaseException]
) -> None:
    backend = make_backend()
    broken = usage(plan_revenue_usd=Decimal("Infinity"))
    good = usage()

    backend.record(broken)
    backend.record(good)
    assert backend.flush(timeout=2)

    assert accepted_ids(server) == [good.event_id]
    assert reported_ids(errors) == [broken.event_id]


def test_many_records_go_in_few_batches_over_one_connection(
    server: FakeWeckrServer, make_backend: BackendFactory, errors: list[BaseException]
) -> None:
    backend = make_backend(max_batch_size=100)
    first = occupy_sender(server, backend, 0.3)
    records = [usage(user_id=f"u{i}") for i in range(250)]

    for record in records:
        backend.record(record)
    assert backend.flush(timeout=5)

    batches = server.requests(BATCH_PATH)
    assert [len(r.events) for r in batches] == [100, 100, 50]
    assert sorted(accepted_ids(server)) == sorted([first.event_id] + [r.event_id for r in records])
    assert server.duplicates == 0
    assert len({r.client_port for r in log_requests(server)}) == 1
    assert errors == []


def test_a_burst_goes_out_in_batches_of_up_to_the_servers_maximum(
    server: FakeWeckrServer, make_backend: BackendFactory, errors: list[BaseException]
) -> None:
    backend = make_backend()  # default batch size and linger
    occupy_sender(server, backend, 0.3)
    records = [usage(user_id=f"u{i}") for i in range(1200)]

    for record in records:
        backend.record(record)
    assert backend.flush(timeout=10)

    assert [len(r.events) for r in server.requests(BATCH_PATH)] == [
        SERVER_MAX_BATCH_SIZE,
        SERVER_MAX_BATCH_SIZE,
        1200 - 2 * SERVER_MAX_BATCH_SIZE,
    ]
    assert len(server.accepted_events) == 1201
    assert errors == []


def test_steady_traffic_waits_for_a_fuller_batch(
    server: FakeWeckrServer, make_backend: BackendFactory, errors: list[BaseException]
) -> None:
    backend = make_backend(linger_seconds=0.3)

    for _ in range(20):
        backend.record(usage())
        time.sleep(0.005)
    wait_until(lambda: len(server.accepted_events) == 20)

    # One POST for the lot, not one per event: the first event waited for the rest.
    assert [len(r.events) for r in log_requests(server)] == [20]
    assert errors == []


def test_batches_are_split_to_stay_under_the_servers_body_limit(
    server: FakeWeckrServer, make_backend: BackendFactory, errors: list[BaseException]
) -> None:
    backend = make_backend()
    occupy_sender(server, backend, 0.3)
    # About 2.4 kB each: 500 of them would be a 1.2 MB body, over weckr_django's 1 MiB.
    tags = tuple(f"{i:02d}-" + "t" * 60 for i in range(32))
    records = [usage(tags=tags) for _ in range(SERVER_MAX_BATCH_SIZE)]

    for record in records:
        backend.record(record)
    assert backend.flush(timeout=10)

    batches = server.requests(BATCH_PATH)
    assert len(batches) > 1
    assert all(int(r.headers["content-length"]) <= MAX_BATCH_BYTES for r in batches)
    assert sum(len(r.events) for r in batches) == SERVER_MAX_BATCH_SIZE
    assert len(server.accepted_events) == SERVER_MAX_BATCH_SIZE + 1
    assert errors == []


def test_a_413_answer_splits_the_batch_and_a_single_event_too_large_is_reported(
    server: FakeWeckrServer, make_backend: BackendFactory, errors: list[BaseException]
) -> None:
    backend = make_backend()
    first = occupy_sender(server, backend, 0.3)
    # Refused whole, the batch is halved until the server takes the parts; one event
    # is too large even on its own.
    server.enqueue(BATCH_PATH, 413, 200, 413, 413, 413)
    records = [usage(user_id=f"u{i}") for i in range(8)]

    for record in records:
        backend.record(record)
    assert backend.flush(timeout=5)

    batches = server.requests(BATCH_PATH)
    assert [len(r.events) for r in batches] == [8, 4, 4, 2, 1, 1, 2]
    refused_alone = batches[4].events[0]["eventId"]
    assert sorted(accepted_ids(server)) == sorted(
        [first.event_id] + [r.event_id for r in records if r.event_id != refused_alone]
    )
    assert reported_ids(errors) == [refused_alone]
    assert [getattr(e, "status_code", None) for e in errors] == [413]


def test_without_batch_endpoint_events_go_one_by_one(
    server: FakeWeckrServer, make_backend: BackendFactory
) -> None:
    backend = make_backend(batch_endpoint=None)
    occupy_sender(server, backend, 0.1)

    for _ in range(5):
        backend.record(usage())
    assert backend.flush(timeout=2)

    assert server.requests(BATCH_PATH) == []
    assert len(server.requests(LOG_PATH)) == 6
    assert len(server.accepted_events) == 6


def test_server_without_batch_support_gets_events_one_by_one(
    server: FakeWeckrServer, make_backend: BackendFactory, errors: list[BaseException]
) -> None:
    server.set_reply(BATCH_PATH, 404)
    backend = make_backend()
    occupy_sender(server, backend, 0.1)

    for _ in range(3):
        backend.record(usage())
    assert backend.flush(timeout=2)

    assert len(server.requests(BATCH_PATH)) == 1
    assert len(server.accepted_events) == 4
    assert errors == []


@pytest.mark.parametrize("statuses", [(500, 429), (502, 503)])
def test_transient_failures_are_retried_with_backoff(
    server: FakeWeckrServer,
    make_backend: BackendFactory,
    errors: list[BaseException],
    statuses: tuple[int, int],
) -> None:
    server.enqueue(LOG_PATH, *statuses)
    backend = make_backend(backoff_seconds=(0.05, 0.1))
    record = usage()
    started = time.monotonic()

    backend.record(record)
    assert backend.flush(timeout=3)

    assert time.monotonic() - started >= 0.15
    assert [r.status for r in server.requests(LOG_PATH)] == [*statuses, 201]
    assert accepted_ids(server) == [record.event_id]
    assert errors == []


def test_retry_waits_at_least_the_servers_retry_after(
    server: FakeWeckrServer, make_backend: BackendFactory
) -> None:
    server.enqueue(LOG_PATH, Reply(429, headers={"retry-after": "0.3"}))
    backend = make_backend(backoff_seconds=(0.01,))
    started = time.monotonic()

    backend.record(usage())
    assert backend.flush(timeout=3)

    assert time.monotonic() - started >= 0.3
    assert len(server.requests(LOG_PATH)) == 2


def test_timeouts_are_retried_and_the_server_dedupes_by_event_id(
    server: FakeWeckrServer, make_backend: BackendFactory, errors: list[BaseException]
) -> None:
    server.enqueue(LOG_PATH, Reply(delay=1.0))
    record = usage()
    backend = make_backend(send_timeout_seconds=0.2)

    backend.record(record)
    assert backend.flush(timeout=3)

    assert len(server.requests(LOG_PATH)) == 2
    assert {r.body["eventId"] for r in server.requests(LOG_PATH)} == {record.event_id}
    assert accepted_ids(server) == [record.event_id]
    assert errors == []


def test_delivery_gives_up_after_max_retries_and_reports(
    server: FakeWeckrServer, make_backend: BackendFactory, errors: list[BaseException]
) -> None:
    server.set_reply(LOG_PATH, 503)
    record = usage()
    backend = make_backend(max_retries=2)

    backend.record(record)
    assert backend.flush(timeout=3)  # definitively failed counts as done

    assert len(server.requests(LOG_PATH)) == 3
    [error] = errors
    assert isinstance(error, WeckrBackendError)
    assert (error.status_code, error.event_ids) == (503, (record.event_id,))


def test_connection_refused_is_retried_then_reported(errors: list[BaseException]) -> None:
    url = f"http://127.0.0.1:{unused_port()}/api/v1"
    backend = HttpBackend(
        API_KEY, f"{url}/log", f"{url}/check", backoff_seconds=(0.01,), on_error=errors.append
    )
    record = usage()

    backend.record(record)
    assert backend.flush(timeout=2)

    assert reported_ids(errors) == [record.event_id]
    assert "ConnectError" in str(errors[0])
    assert "4 attempt(s)" in str(errors[0])
    backend.close(timeout=0)


def test_invalid_event_is_not_retried_and_the_server_message_reported(
    server: FakeWeckrServer, make_backend: BackendFactory, errors: list[BaseException]
) -> None:
    server.enqueue(LOG_PATH, Reply(400, {"error": "must be 0 or more", "field": "inputTokens"}))
    record = usage()
    backend = make_backend()

    backend.record(record)
    assert backend.flush(timeout=2)

    assert len(server.requests(LOG_PATH)) == 1
    [error] = errors
    assert isinstance(error, WeckrBackendError)
    assert "must be 0 or more (field: inputTokens)" in str(error)
    assert (error.status_code, error.event_ids) == (400, (record.event_id,))


def test_events_rejected_in_a_batch_are_reported_one_by_one(
    server: FakeWeckrServer, make_backend: BackendFactory, errors: list[BaseException]
) -> None:
    backend = make_backend()
    occupy_sender(server, backend, 0.1)
    good, bad = usage(), usage(model="")
    server.enqueue(
        BATCH_PATH,
        Reply(
            body={
                "accepted": 1,
                "duplicates": 0,
                "rejected": [{"index": 1, "eventId": bad.event_id, "error": "model is required"}],
            }
        ),
    )

    backend.record(good)
    backend.record(bad)
    assert backend.flush(timeout=2)

    assert len(server.requests(BATCH_PATH)) == 1
    assert good.event_id in accepted_ids(server)
    assert bad.event_id not in accepted_ids(server)
    [error] = errors
    assert isinstance(error, WeckrBackendError)
    assert error.event_ids == (bad.event_id,)
    assert "model is required" in str(error)


def test_flush_waits_for_delivery(server: FakeWeckrServer, make_backend: BackendFactory) -> None:
    server.enqueue(LOG_PATH, Reply(delay=0.1))
    record = usage()
    backend = make_backend()

    backend.record(record)
    assert backend.flush(timeout=2)

    assert accepted_ids(server) == [record.event_id]


def test_flush_with_nothing_recorded_returns_at_once(make_backend: BackendFactory) -> None:
    assert make_backend().flush(timeout=0)


def test_flush_returns_false_when_the_server_hangs(
    server: FakeWeckrServer, make_backend: BackendFactory
) -> None:
    server.set_reply(LOG_PATH, Reply(delay=5.0))
    backend = make_backend(send_timeout_seconds=10.0)
    backend.record(usage())
    started = time.monotonic()

    assert not backend.flush(timeout=0.2)
    assert time.monotonic() - started < 1.0


def test_record_does_not_block_when_the_server_is_slow(
    server: FakeWeckrServer, make_backend: BackendFactory
) -> None:
    server.set_reply(LOG_PATH, Reply(delay=1.0))
    server.set_reply(BATCH_PATH, Reply(delay=1.0))
    backend = make_backend()
    started = time.monotonic()

    for _ in range(500):
        backend.record(usage())

    assert time.monotonic() - started < 0.5


def test_full_queue_drops_the_oldest_events_and_reports_them_once(
    server: FakeWeckrServer, make_backend: BackendFactory, errors: list[BaseException]
) -> None:
    backend = make_backend(max_queue=3)
    first = occupy_sender(server, backend, 0.1)
    records = [usage() for _ in range(10)]

    for record in records:
        backend.record(record)
    assert backend.flush(timeout=2)

    [error] = errors  # one report for the whole burst, not one per event
    assert isinstance(error, WeckrBackendError)
    assert error.event_ids == tuple(r.event_id for r in records[:7])
    assert "queue full" in str(error)
    assert sorted(accepted_ids(server)) == sorted(
        [first.event_id] + [r.event_id for r in records[7:]]
    )


def test_close_reports_events_it_could_not_send(
    server: FakeWeckrServer, make_backend: BackendFactory, errors: list[BaseException]
) -> None:
    backend = make_backend()
    occupy_sender(server, backend, 5.0)
    queued = [usage(), usage()]
    for record in queued:
        backend.record(record)

    backend.close(timeout=0.2)
    late = usage()
    backend.record(late)

    assert reported_ids(errors) == [r.event_id for r in queued] + [late.event_id]


def test_errors_are_logged_without_an_on_error_handler(
    server: FakeWeckrServer, caplog: pytest.LogCaptureFixture
) -> None:
    server.set_reply(CHECK_PATH, 500)
    backend = HttpBackend(API_KEY, server.log_url, server.check_url)

    with caplog.at_level("WARNING", logger="weckr"):
        assert backend.check("u1", "pro", "gpt-4o").allowed

    assert "cap check failed with HTTP 500" in caplog.text
    backend.close(timeout=0)


def test_missing_api_key_is_a_config_error() -> None:
    with pytest.raises(WeckrConfigError) as raised:
        HttpBackend("")
    assert raised.value.code == "invalid_api_key"


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_gets_its_own_sender(
    server: FakeWeckrServer, make_backend: BackendFactory
) -> None:
    backend = make_backend()
    backend.record(usage(user_id="parent"))
    assert backend.flush(timeout=2)

    pid = os.fork()
    if pid == 0:  # child: must not inherit the parent's thread, locks or sockets
        backend.record(usage(user_id="child"))
        os._exit(0 if backend.flush(timeout=3) else 1)
    _, status = os.waitpid(pid, 0)

    assert os.waitstatus_to_exitcode(status) == 0
    assert sorted(e["userId"] for e in server.accepted_events) == ["child", "parent"]


def test_pending_events_are_flushed_at_interpreter_exit(server: FakeWeckrServer) -> None:
    script = textwrap.dedent(
        f"""
        from weckr_core.backends.http import HttpBackend
        from weckr_core.records import UsageRecord

        backend = HttpBackend("{API_KEY}", "{server.log_url}", "{server.check_url}")
        backend.record(UsageRecord(user_id="u1", model="gpt-4o-mini", input_tokens=5))
        """
    )
    root = Path(__file__).resolve().parents[2]

    subprocess.run([sys.executable, "-c", script], cwd=root, check=True, timeout=60)

    assert [e["userId"] for e in server.accepted_events] == ["u1"]


# -- when batches go -----------------------------------------------------------

LONG_LINGER = {"linger_seconds": 30.0, "max_batch_size": 5}


def test_a_full_batch_goes_without_waiting_for_the_linger(
    server: FakeWeckrServer, make_backend: BackendFactory, errors: list[BaseException]
) -> None:
    backend = make_backend(**LONG_LINGER)
    records = [usage() for _ in range(5)]

    for record in records:
        backend.record(record)
    wait_until(lambda: len(server.accepted_events) == 5)

    [request] = server.requests(BATCH_PATH)
    assert request.headers["x-api-key"] == API_KEY
    assert request.headers["content-type"] == "application/json"
    assert [e["eventId"] for e in request.events] == [r.event_id for r in records]
    assert errors == []


def test_a_lingering_event_waits_for_flush(
    server: FakeWeckrServer, make_backend: BackendFactory
) -> None:
    backend = make_backend(**LONG_LINGER)
    backend.record(usage())
    time.sleep(0.2)
    assert server.accepted_events == []

    assert backend.flush(timeout=2)
    assert len(server.accepted_events) == 1


def test_a_connection_the_server_closed_is_opened_again(
    server: FakeWeckrServer, make_backend: BackendFactory, errors: list[BaseException]
) -> None:
    backend = make_backend(**LONG_LINGER)
    server.enqueue(BATCH_PATH, Reply(headers={"connection": "close"}))

    for _ in range(2):
        for _ in range(5):
            backend.record(usage())
        assert backend.flush(timeout=3)

    assert [len(r.events) for r in server.requests(BATCH_PATH)] == [5, 5]
    assert len({r.client_port for r in server.requests(BATCH_PATH)}) == 2
    assert len(server.accepted_events) == 10
    assert errors == []


def test_many_threads_recording_at_once_lose_and_repeat_nothing(
    server: FakeWeckrServer, make_backend: BackendFactory, errors: list[BaseException]
) -> None:
    backend = make_backend(max_batch_size=50)
    records = [[usage(user_id=f"t{t}") for _ in range(500)] for t in range(8)]

    def work(mine: list[UsageRecord]) -> None:
        for record in mine:
            backend.record(record)

    threads = [threading.Thread(target=work, args=(mine,)) for mine in records]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert backend.flush(timeout=10)

    assert sorted(accepted_ids(server)) == sorted(r.event_id for mine in records for r in mine)
    assert server.duplicates == 0
    assert errors == []


def test_close_reports_a_batch_whose_answer_never_came(
    server: FakeWeckrServer, make_backend: BackendFactory, errors: list[BaseException]
) -> None:
    backend = make_backend(**LONG_LINGER)
    server.enqueue(BATCH_PATH, Reply(delay=5.0))
    records = [usage() for _ in range(5)]
    for record in records:
        backend.record(record)
    wait_until(lambda: len(server.requests(BATCH_PATH)) == 1)

    started = time.monotonic()
    backend.close(timeout=0.2)
    assert time.monotonic() - started < 1.0

    # Reported once the request has timed out (send_timeout_seconds=2), not retried.
    wait_until(lambda: {r.event_id for r in records} <= set(reported_ids(errors)), timeout=4)
    assert "backend closed" in str(errors[-1])
    assert len(server.requests(BATCH_PATH)) == 1


# -- reservations --------------------------------------------------------------

PROMPT = [{"role": "user", "content": "Summarize this report for the board, please."}]


def cap_request(**fields: Any) -> CapRequest:
    defaults: dict[str, Any] = {
        "user_id": "u1",
        "plan": "pro",
        "model": "gpt-4o",
        "provider": "openai",
        "prompt": PROMPT,
        "max_output_tokens": 200,
    }
    return CapRequest(**{**defaults, **fields})


def reserved(**fields: Any) -> dict[str, Any]:
    """A /reserve answer for a capped plan that allows the call and holds its cost."""
    return {
        "allowed": True,
        "action": None,
        "alternativeModel": None,
        "currentSpend": 1.5,
        "cap": 10,
        "remainingBudget": 8.5,
        "inFlight": 0.25,
        "plan": "pro",
        "reason": None,
        "reservation": {"id": "res-1", "amountUsd": 0.0123, "model": "gpt-4o"},
        **fields,
    }


def releases(server: FakeWeckrServer) -> list[ReceivedRequest]:
    return [r for r in server.requests() if r.method == "DELETE"]


def test_reserve_posts_the_call_and_parses_the_reservation(
    server: FakeWeckrServer, make_backend: BackendFactory, errors: list[BaseException]
) -> None:
    server.set_reply(RESERVE_PATH, Reply(body=reserved()))
    backend = make_backend()

    decision = backend.reserve(cap_request())

    [request] = server.requests(RESERVE_PATH)
    assert (request.method, request.headers["x-api-key"]) == ("POST", API_KEY)
    assert request.body == {
        "userId": "u1",
        "accountId": None,
        "planName": "pro",
        "model": "gpt-4o",
        "provider": "openai",
        "inputTokens": cap_request().prompt_tokens(),
        "maxOutputTokens": 200,
    }
    assert request.body["inputTokens"] > 0
    assert decision == CapDecision(
        "allow",
        current_spend=Decimal("1.5"),
        cap=Decimal(10),
        reservation=Reservation("res-1", Decimal("0.0123"), "gpt-4o", "u1"),
        in_flight=Decimal("0.25"),
        plan="pro",
    )
    assert decision.remaining_budget == Decimal("8.5")
    backend.reserve(cap_request())  # a capped plan's calls are each reserved
    assert len(server.requests(RESERVE_PATH)) == 2
    assert server.requests(CHECK_PATH) == []
    assert errors == []


def test_reserve_sends_the_counted_input_tokens_and_no_output_limit(
    server: FakeWeckrServer, make_backend: BackendFactory
) -> None:
    make_backend().reserve(cap_request(prompt=None, input_tokens=1234, max_output_tokens=None))

    [request] = server.requests(RESERVE_PATH)
    assert (request.body["inputTokens"], request.body["maxOutputTokens"]) == (1234, None)


def test_reserve_maps_a_block(server: FakeWeckrServer, make_backend: BackendFactory) -> None:
    server.set_reply(
        RESERVE_PATH,
        Reply(
            body=reserved(
                allowed=False, action="block", currentSpend=10.5, reason="cap", reservation=None
            )
        ),
    )

    decision = make_backend().reserve(cap_request())

    assert (decision.action, decision.reason, decision.reservation) == ("block", "cap", None)
    assert (decision.current_spend, decision.cap) == (Decimal("10.5"), Decimal(10))


def test_reserve_maps_a_downgrade_with_its_reservation_on_the_cheaper_model(
    server: FakeWeckrServer, make_backend: BackendFactory
) -> None:
    hold = {"id": "res-2", "amountUsd": "0.0004", "model": "gpt-4o-mini"}
    server.set_reply(
        RESERVE_PATH,
        Reply(
            body=reserved(
                allowed=False,
                action="downgrade",
                alternativeModel="gpt-4o-mini",
                reason="cap",
                reservation=hold,
            )
        ),
    )

    decision = make_backend().reserve(cap_request())

    assert (decision.action, decision.alternative_model) == ("downgrade", "gpt-4o-mini")
    assert decision.reservation == Reservation("res-2", Decimal("0.0004"), "gpt-4o-mini", "u1")


def test_reserve_without_a_user_allows_without_asking(
    server: FakeWeckrServer, make_backend: BackendFactory
) -> None:
    assert make_backend().reserve(cap_request(user_id=None)) is ALLOW
    assert server.requests() == []


@pytest.mark.parametrize("plan", ["free", None])
def test_a_plan_without_a_cap_is_not_asked_again_for_the_ttl(
    server: FakeWeckrServer, make_backend: BackendFactory, plan: str | None
) -> None:
    backend = make_backend(cache_ttl_seconds=0.3)  # the server's default: no cap

    first = backend.reserve(cap_request(plan=plan))
    for user in ("u1", "u2", "u3"):
        assert backend.reserve(cap_request(user_id=user, plan=plan)) is ALLOW
    assert asyncio.run(backend.areserve(cap_request(user_id="u4", plan=plan))) is ALLOW
    assert first.allowed and first.reservation is None
    assert len(server.requests(RESERVE_PATH)) == 1

    backend.reserve(cap_request(plan="other"))  # cached per plan
    assert len(server.requests(RESERVE_PATH)) == 2
    time.sleep(0.35)
    backend.reserve(cap_request(plan=plan))
    assert len(server.requests(RESERVE_PATH)) == 3


def test_areserve_asks_the_server_off_the_event_loop(
    server: FakeWeckrServer, make_backend: BackendFactory
) -> None:
    server.set_reply(RESERVE_PATH, Reply(body=reserved(), delay=0.2))
    backend = make_backend()

    async def main() -> tuple[CapDecision, int]:
        ticks = 0

        async def tick() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        ticker = asyncio.create_task(tick())
        decision = await backend.areserve(cap_request())
        ticker.cancel()
        return decision, ticks

    decision, ticks = asyncio.run(main())

    assert decision.reservation == Reservation("res-1", Decimal("0.0123"), "gpt-4o", "u1")
    assert ticks >= 5  # the loop went on while the request waited


@pytest.mark.parametrize("status", [404, 405])
def test_a_server_without_reservations_is_asked_check_from_then_on(
    server: FakeWeckrServer,
    make_backend: BackendFactory,
    errors: list[BaseException],
    caplog: pytest.LogCaptureFixture,
    status: int,
) -> None:
    server.set_reply(RESERVE_PATH, status)
    server.set_reply(CHECK_PATH, Reply(body={"allowed": False, "action": "block", "cap": 10}))
    backend = make_backend()

    with caplog.at_level("WARNING", logger="weckr"):
        decisions = [backend.reserve(cap_request()) for _ in range(3)]
        backend.release(Reservation("res-1", Decimal(1), "gpt-4o"))  # nothing to release
        assert backend.flush(timeout=2)

    assert [d.action for d in decisions] == ["block"] * 3
    assert len(server.requests(RESERVE_PATH)) == 1
    [check] = server.requests(CHECK_PATH)  # cached from then on
    assert check.query == {"userId": "u1", "planName": "pro", "model": "gpt-4o"}
    assert releases(server) == []
    assert backend.reserve_endpoint is None
    assert [r.message for r in caplog.records].count(caplog.records[0].message) == 1
    assert f"HTTP {status}" in caplog.text and "cap checks" in caplog.text
    assert errors == []


def test_without_a_reserve_endpoint_reserve_is_the_cached_check(
    server: FakeWeckrServer, make_backend: BackendFactory
) -> None:
    backend = make_backend(reserve_endpoint=None)

    for _ in range(3):
        assert backend.reserve(cap_request()).allowed
    assert asyncio.run(backend.areserve(cap_request())).allowed

    assert server.requests(RESERVE_PATH) == []
    assert len(server.requests(CHECK_PATH)) == 1


def test_the_reserve_endpoint_is_derived_from_the_log_or_check_endpoint() -> None:
    def derived(endpoint: str, check_endpoint: str) -> str | None:
        backend = HttpBackend(API_KEY, endpoint, check_endpoint)
        backend.close(timeout=0)
        return backend.reserve_endpoint

    assert derived("https://w.example/api/v1/log", "https://w.example/api/v1/check") == (
        "https://w.example/api/v1/reserve"
    )
    assert derived("https://w.example/ingest", "https://w.example/api/v1/check/") == (
        "https://w.example/api/v1/reserve"
    )
    assert derived("https://w.example/ingest", "https://w.example/decide") is None


@pytest.mark.parametrize(("status", "code"), [(401, "invalid_api_key"), (403, "forbidden")])
def test_reserve_fails_closed_on_bad_key(
    server: FakeWeckrServer, make_backend: BackendFactory, status: int, code: str
) -> None:
    server.set_reply(RESERVE_PATH, Reply(status, {"error": "key wk_test_ is not valid"}))

    with pytest.raises(WeckrConfigError) as raised:
        make_backend().reserve(cap_request())

    assert raised.value.code == code
    assert "key wk_test_ is not valid" in str(raised.value)


@pytest.mark.parametrize(
    "reply",
    [
        Reply(500),
        Reply(429),
        Reply(raw=b"<html>oops</html>"),
        Reply(body=reserved(reservation={"id": "res-1"})),
        Reply(body=reserved(inFlight="lots")),
        Reply(delay=2.0),
    ],
    ids=["500", "429", "not-json", "bad-reservation", "bad-number", "timeout"],
)
def test_reserve_fails_open_reports_and_asks_again(
    server: FakeWeckrServer,
    make_backend: BackendFactory,
    errors: list[BaseException],
    reply: Reply,
    short_outages: float,
) -> None:
    server.set_reply(RESERVE_PATH, reply)
    backend = make_backend(check_timeout_seconds=0.2)

    assert backend.reserve(cap_request()) is ALLOW
    assert backend.reserve(cap_request()) is ALLOW  # not asked: the server failed
    assert len(server.requests(RESERVE_PATH)) == 1
    time.sleep(short_outages + 0.05)
    assert backend.reserve(cap_request()) is ALLOW  # asked again

    assert len(server.requests(RESERVE_PATH)) == 2
    [error] = errors  # one report for the outage, not one per call
    assert isinstance(error, WeckrBackendError)
    assert "cap reservation" in str(error) and "allowing calls" in str(error)


def test_reserve_fails_open_when_connection_refused(errors: list[BaseException]) -> None:
    url = f"http://127.0.0.1:{unused_port()}/api/v1"
    backend = HttpBackend(API_KEY, f"{url}/log", f"{url}/check", on_error=errors.append)

    assert backend.reserve(cap_request()) is ALLOW
    assert "ConnectError" in str(errors[0])
    backend.close(timeout=0)


def test_release_deletes_the_hold(
    server: FakeWeckrServer, make_backend: BackendFactory, errors: list[BaseException]
) -> None:
    backend = make_backend(**LONG_LINGER)

    backend.release(Reservation("res-7", Decimal("0.01"), "gpt-4o", "user 7"))
    assert backend.flush(timeout=2)

    [request] = releases(server)
    assert (request.path, request.status) == (RESERVE_PATH + "/res-7", 204)
    assert request.query == {"userId": "user 7"}
    assert request.headers["x-api-key"] == API_KEY
    assert errors == []


def test_release_does_not_wait_for_the_server_and_reports_failures(
    server: FakeWeckrServer, make_backend: BackendFactory, errors: list[BaseException]
) -> None:
    server.set_reply(RESERVE_PATH + "/res-7", Reply(500, delay=0.3))
    backend = make_backend()
    started = time.monotonic()

    backend.release(Reservation("res-7", Decimal("0.01"), "gpt-4o"))
    assert time.monotonic() - started < 0.1
    assert backend.flush(timeout=2)

    [error] = errors
    assert isinstance(error, WeckrBackendError)
    assert error.status_code == 500
    assert "res-7" in str(error)


def test_an_event_of_a_reserved_call_goes_at_once_with_its_reservation_id(
    server: FakeWeckrServer, make_backend: BackendFactory, errors: list[BaseException]
) -> None:
    backend = make_backend(**LONG_LINGER)
    waiting, settled = usage(), usage(reservation_id="res-1")
    started = time.monotonic()

    backend.record(waiting)
    backend.record(settled)
    wait_until(lambda: len(server.accepted_events) == 2)

    # The server settles the hold when it stores the event: it does not linger.
    assert time.monotonic() - started < 1.0
    [request] = server.requests(BATCH_PATH)
    assert [e.get("reservationId") for e in request.events] == [None, "res-1"]
    assert "reservationId" not in request.events[0]
    assert errors == []


def test_a_lone_reserved_event_goes_at_once_to_the_log_endpoint(
    server: FakeWeckrServer, make_backend: BackendFactory
) -> None:
    backend = make_backend(**LONG_LINGER)
    record = usage(reservation_id="res-9")

    backend.record(record)
    wait_until(lambda: len(server.accepted_events) == 1, timeout=1.0)

    [request] = server.requests(LOG_PATH)
    assert request.body == {**record.to_wire(), "costUsd": pytest.approx(expected_cost(record))}
    assert request.body["reservationId"] == "res-9"


# -- against the real weckr_django API -----------------------------------------


@pytest.mark.django_db(transaction=True)
def test_speaks_the_weckr_django_wire_api(live_server: Any, errors: list[BaseException]) -> None:
    from weckr_django.models import ApiKey, Plan, Project, UsageEvent

    project = Project.objects.create(name="Acme")
    key_row, key = ApiKey.objects.create_key(project, "http-backend")
    Plan.objects.create(
        project=project,
        name="pro",
        monthly_price_usd=Decimal(29),
        monthly_cap_usd=Decimal("0.01"),
        cap_action="block",
    )
    api = f"{live_server.url}/api/v1"
    backend = HttpBackend(
        key, f"{api}/log", f"{api}/check", cache_ttl_seconds=0, on_error=errors.append
    )
    records = [usage(model="gpt-4o", input_tokens=100_000) for _ in range(4)]

    assert backend.check("u1", "pro", "gpt-4o").allowed
    for record in records:
        backend.record(record)
    assert backend.flush(timeout=10)

    stored = UsageEvent.objects.filter(project=project)
    assert {e.event_id for e in stored} == {r.event_id for r in records}
    assert {(e.cached_input_tokens, e.cache_creation_tokens) for e in stored} == {(200, 50)}
    decision = backend.check("u1", "pro", "gpt-4o")
    assert decision.action == "block"
    assert decision.cap is not None and decision.current_spend is not None
    assert decision.current_spend >= decision.cap
    assert errors == []

    key_row.revoked_at = key_row.created_at
    key_row.save()
    with pytest.raises(WeckrConfigError) as raised:
        backend.check("u1", "pro", "gpt-4o")
    assert raised.value.code == "forbidden"
    backend.close(timeout=1)


@pytest.mark.django_db(transaction=True)
def test_the_largest_events_weckr_django_accepts_all_arrive(
    live_server: Any, errors: list[BaseException]
) -> None:
    from weckr_django.models import ApiKey, Project, UsageEvent

    project = Project.objects.create(name="Acme")
    _, key = ApiKey.objects.create_key(project, "http-backend")
    api = f"{live_server.url}/api/v1"
    backend = HttpBackend(key, f"{api}/log", f"{api}/check", on_error=errors.append)
    # 32 tags of 100 characters, the most the server takes: about 4 kB an event, so
    # 300 of them are over the server's 1 MiB body limit as one batch.
    tags = tuple(f"{i:02d}" + "t" * 98 for i in range(32))
    records = [usage(user_id=f"u{i}", tags=tags) for i in range(300)]

    for record in records:
        backend.record(record)
    assert backend.flush(timeout=30)
    backend.close(timeout=1)

    assert errors == []
    stored = UsageEvent.objects.filter(project=project)
    assert {e.event_id for e in stored} == {r.event_id for r in records}


@pytest.mark.django_db(transaction=True)
def test_reserves_settles_and_releases_against_weckr_django(
    live_server: Any, errors: list[BaseException]
) -> None:
    from weckr_django.models import ApiKey, CapReservation, Plan, Project, UsageEvent

    project = Project.objects.create(name="Acme")
    _, key = ApiKey.objects.create_key(project, "http-backend")
    Plan.objects.create(
        project=project,
        name="pro",
        monthly_price_usd=Decimal(29),
        monthly_cap_usd=Decimal(5),
        cap_action="block",
    )
    api = f"{live_server.url}/api/v1"
    backend = HttpBackend(key, f"{api}/log", f"{api}/check", on_error=errors.append)

    made, never_made = backend.reserve(cap_request()), backend.reserve(cap_request())
    assert made.allowed and made.cap == Decimal(5)
    assert made.reservation is not None and never_made.reservation is not None
    assert CapReservation.objects.filter(project=project).count() == 2
    record = usage(model="gpt-4o", reservation_id=made.reservation.id)
    backend.record(record)
    backend.release(never_made.reservation)
    assert backend.flush(timeout=10)

    assert UsageEvent.objects.filter(project=project, event_id=record.event_id).exists()
    assert not CapReservation.objects.filter(project=project).exists()
    unknown = backend.reserve(cap_request(plan="free"))
    assert (unknown.action, unknown.reason, unknown.plan) == ("block", "unknown_plan", "free")
    assert errors == []
    backend.close(timeout=1)


@pytest.mark.django_db(transaction=True)
def test_an_accounts_cap_holds_over_http_for_every_user_of_it(
    live_server: Any, errors: list[BaseException]
) -> None:
    from weckr_django.models import ApiKey, CapReservation, Plan, Project

    project = Project.objects.create(name="Acme")
    _, key = ApiKey.objects.create_key(project, "http-backend")
    # Room for one call of cap_request() in the account, whoever makes it.
    one_call = cap_request().estimated_cost()
    Plan.objects.create(
        project=project,
        name="team",
        monthly_price_usd=Decimal(99),
        account_monthly_cap_usd=one_call * Decimal("1.5"),
    )
    api = f"{live_server.url}/api/v1"
    backend = HttpBackend(key, f"{api}/log", f"{api}/check", on_error=errors.append)

    first = backend.reserve(cap_request(user_id="ann", plan="team", account_id="acme"))
    second = backend.reserve(cap_request(user_id="bob", plan="team", account_id="acme"))
    # A user-only call on this plan is not capped (and that must not be remembered
    # as "the plan is uncapped" for account calls).
    alone = backend.reserve(cap_request(user_id="bob", plan="team"))
    third = backend.reserve(cap_request(user_id="cid", plan="team", account_id="acme"))

    assert first.reservation is not None and first.account_id == "acme"
    assert (first.reservation.user_id, first.reservation.account_id) == ("ann", "acme")
    assert (second.action, second.account_id, second.reason) == ("block", "acme", "cap")
    assert alone.allowed and alone.reservation is None
    assert third.action == "block"
    backend.release(first.reservation)
    assert backend.flush(timeout=10)
    assert not CapReservation.objects.filter(project=project).exists()
    assert backend.reserve(cap_request(user_id="cid", plan="team", account_id="acme")).allowed
    assert errors == []
    backend.close(timeout=1)
