"""The durable spool, alone and under HttpBackend."""

from __future__ import annotations

import json
import multiprocessing
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.core.http_server import BATCH_PATH, LOG_PATH, FakeWeckrServer, Reply
from weckr_core.backends.http import HttpBackend, WeckrBackendError
from weckr_core.records import UsageRecord
from weckr_core.spool import Spool, SpooledEvent

API_KEY = "wk_test_123"


def events(count: int, start: int = 0) -> list[tuple[str, bytes]]:
    return [
        (f"e{n}", json.dumps({"eventId": f"e{n}"}).encode()) for n in range(start, start + count)
    ]


def test_events_are_kept_until_done_and_tried_again_when_unclaimed(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool.db")
    assert spool.put(events(3)) == []
    assert spool.put(events(1)) == []  # e0 again: kept once

    first = spool.claim(2)
    assert [event.event_id for event in first] == ["e0", "e1"]
    assert spool.claim(5)[0].event_id == "e2"  # claimed ones are not handed out twice
    spool.done(["e0"])
    spool.unclaim(["e1"])

    again = spool.claim(5)
    assert [(event.event_id, event.attempts) for event in again] == [("e1", 2)]
    stats = spool.stats()
    assert (stats.events, stats.claimed, stats.most_attempts) == (2, 2, 2)


def test_deliver_oldest_drops_what_was_delivered_and_frees_the_rest(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool.db")
    spool.put(events(4))

    claimed, undelivered = spool.deliver_oldest(3, lambda batch: ["e1"])
    assert [event.event_id for event in claimed] == ["e0", "e1", "e2"]
    assert undelivered == {"e1"}

    def server_away(batch: list[SpooledEvent]) -> list[str]:
        raise ConnectionError("away")

    with pytest.raises(ConnectionError):
        spool.deliver_oldest(5, server_away)
    assert [event.event_id for event in spool.claim(5)] == ["e1", "e3"]  # both free again
    assert spool.deliver_oldest(5, server_away) == ([], set())  # all claimed: nothing to send


def test_a_full_spool_refuses_new_events_and_keeps_the_oldest(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool.db", max_events=3)
    assert spool.put(events(2)) == []
    assert spool.put(events(3, start=2)) == ["e3", "e4"]
    assert [event.event_id for event in spool.claim(10)] == ["e0", "e1", "e2"]


def test_a_claim_left_by_a_dead_sender_is_taken_over_after_the_lease(tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    dead = Spool(path, lease_seconds=0.2)
    dead.put(events(1))
    assert len(dead.claim(1)) == 1
    dead.close()

    other = Spool(path, lease_seconds=0.2)
    assert other.claim(1) == []
    time.sleep(0.3)
    assert [event.event_id for event in other.claim(1)] == ["e0"]


def _drain(path: str, claimed: Any, start: Any) -> None:
    spool = Spool(path)
    start.wait()
    while batch := spool.claim(7):
        claimed.extend([event.event_id for event in batch])
        spool.done(event.event_id for event in batch)


def test_processes_sharing_a_spool_never_take_the_same_event(tmp_path: Path) -> None:
    path = str(tmp_path / "spool.db")
    Spool(path).put(events(2_000))
    with multiprocessing.Manager() as manager:
        claimed, start = manager.list(), manager.Barrier(3)
        workers = [
            multiprocessing.get_context("spawn").Process(target=_drain, args=(path, claimed, start))
            for _ in range(3)
        ]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(60)
        taken = list(claimed)
    assert sorted(taken) == sorted(f"e{n}" for n in range(2_000))
    assert Spool(path).stats().events == 0


def test_the_command_prints_what_a_spool_holds(tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    Spool(path).put(events(4))
    done = subprocess.run(
        [sys.executable, "-m", "weckr_core.spool", str(path)],
        capture_output=True,
        text=True,
        check=True,
    )
    printed = json.loads(done.stdout)
    assert (printed["events"], printed["claimed"]) == (4, 0)
    assert printed["oldest_age_seconds"] >= 0


# -- HttpBackend with a spool ---------------------------------------------------------


@pytest.fixture
def server() -> Iterator[FakeWeckrServer]:
    with FakeWeckrServer() as fake:
        yield fake


def usage(n: int) -> UsageRecord:
    return UsageRecord(
        event_id=f"00000000-0000-4000-8000-{n:012d}",
        user_id="u1",
        provider="openai",
        model="gpt-4o-mini",
        input_tokens=10,
        output_tokens=5,
    )


def spooled_backend(
    server: FakeWeckrServer, path: Path, errors: list[BaseException]
) -> HttpBackend:
    return HttpBackend(
        API_KEY,
        server.log_url,
        server.check_url,
        spool=path,
        backoff_seconds=(0.05,),
        on_error=errors.append,
    )


def wait_until(condition: Callable[[], bool], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_events_the_server_cannot_take_wait_in_the_spool_and_go_when_it_is_back(
    server: FakeWeckrServer, tmp_path: Path
) -> None:
    errors: list[BaseException] = []
    server.set_reply(BATCH_PATH, 503)
    server.set_reply(LOG_PATH, 503)
    backend = spooled_backend(server, tmp_path / "spool.db", errors)
    records = [usage(n) for n in range(20)]
    for record in records:
        backend.record(record)

    assert backend.flush(timeout=0.5) is False  # the server is away
    health = backend.health()
    assert health["spooled"] == 20 and health["last_error"] == "HTTP 503"
    assert health["retries"] >= 20 and health["dropped"] == 0
    # Said once per event, as kept rather than lost.
    reported = [event_id for error in errors for event_id in error.event_ids]  # type: ignore[attr-defined]
    assert sorted(reported) == sorted(record.event_id for record in records)
    assert all("kept in the spool" in str(error) for error in errors)
    assert all(isinstance(error, WeckrBackendError) for error in errors)

    server.set_reply(BATCH_PATH, None)
    server.set_reply(LOG_PATH, None)
    assert backend.flush(timeout=10)
    assert sorted(event["eventId"] for event in server.accepted_events) == sorted(
        record.event_id for record in records
    )
    assert backend.health()["spooled"] == 0
    backend.close(timeout=1)


def test_a_restarted_process_sends_what_the_last_one_left_exactly_once(
    server: FakeWeckrServer, tmp_path: Path
) -> None:
    path = tmp_path / "spool.db"
    server.set_reply(BATCH_PATH, Reply(503))
    server.set_reply(LOG_PATH, Reply(503))
    errors: list[BaseException] = []
    first = spooled_backend(server, path, errors)
    records = [usage(n) for n in range(50)]
    for record in records:
        first.record(record)
    first.close(timeout=0.5)  # the server still away: the events stay on disk
    assert Spool(path).stats().events == 50

    server.set_reply(BATCH_PATH, None)
    server.set_reply(LOG_PATH, None)
    second = spooled_backend(server, path, errors)
    assert second.flush(timeout=10)

    assert sorted(event["eventId"] for event in server.accepted_events) == sorted(
        record.event_id for record in records
    )
    assert server.duplicates == 0
    second.close(timeout=1)


_KILLED_SENDER = """
import sys, time
from weckr_core.backends.http import HttpBackend
from weckr_core.records import UsageRecord

log_url, check_url, spool, count = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
backend = HttpBackend("wk_test_123", log_url, check_url, spool=spool, on_error=lambda e: None)
for n in range(count):
    backend.record(UsageRecord(
        event_id=f"00000000-0000-4000-8000-{n:012d}", user_id="u1", provider="openai",
        model="gpt-4o-mini", input_tokens=10, output_tokens=5,
    ))
while backend.health()["queued"]:
    time.sleep(0.01)
print("on disk", flush=True)
time.sleep(600)
"""


def test_a_sender_killed_mid_delivery_loses_nothing_that_reached_the_spool(
    server: FakeWeckrServer, tmp_path: Path
) -> None:
    path = tmp_path / "spool.db"
    # Two batches land, then the server fails: the rest wait on disk.
    server.enqueue(BATCH_PATH, Reply(delay=0.1), Reply(delay=0.1))
    server.set_reply(BATCH_PATH, 503)
    server.set_reply(LOG_PATH, 503)
    count = 3_000
    sender = subprocess.Popen(
        [
            sys.executable,
            "-c",
            _KILLED_SENDER,
            server.log_url,
            server.check_url,
            str(path),
            str(count),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert sender.stdout is not None
    assert sender.stdout.readline().strip() == "on disk"
    sender.kill()  # SIGKILL: no atexit flush, no close
    sender.wait(10)
    landed_before = len(server.accepted_events)
    assert landed_before < count  # the kill came before the end of delivery

    server.set_reply(BATCH_PATH, None)
    server.set_reply(LOG_PATH, None)
    errors: list[BaseException] = []
    restarted = spooled_backend(server, path, errors)
    assert restarted.flush(timeout=30)
    restarted.close(timeout=1)

    landed = [event["eventId"] for event in server.accepted_events]
    assert len(landed) == len(set(landed)) == count  # 0 lost, each stored once
    assert errors == []


def test_a_flaky_server_loses_nothing_and_stores_each_event_once(
    server: FakeWeckrServer, tmp_path: Path
) -> None:
    """30% of posts fail: half answered 503, half stored but never answered."""
    server.make_flaky(0.3, seed=7)
    errors: list[BaseException] = []
    backend = spooled_backend(server, tmp_path / "spool.db", errors)
    records = [usage(n) for n in range(1_000)]
    for record in records:
        backend.record(record)
        if record.event_id.endswith("0"):
            time.sleep(0.001)  # many small batches, so many posts

    assert backend.flush(timeout=60)
    server.make_flaky(0)
    backend.close(timeout=1)

    assert sorted(event["eventId"] for event in server.accepted_events) == sorted(
        record.event_id for record in records
    )  # 0 lost; the server kept each once (a re-sent event it had is a duplicate)
    assert server.duplicates > 0  # some posts did land unanswered, and were sent again
    # Nothing was reported as lost, only as kept for a retry.
    assert all("kept in the spool" in str(error) for error in errors)
