"""The batching worker behind HttpBackend, DjangoBackend and the local task runner."""

from __future__ import annotations

import logging
import os
import threading
import time

import pytest

from weckr_core.batching import BatchWorker


class Handled:
    """What a worker's ``handle`` was given, batch by batch."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.threads: set[str] = set()

    def __call__(self, batch: list[int]) -> None:
        self.batches.append(batch)
        self.threads.add(threading.current_thread().name)

    @property
    def items(self) -> list[int]:
        return [item for batch in self.batches for item in batch]


def test_items_are_handled_in_order_in_batches_on_one_thread() -> None:
    handled = Handled()
    gate = threading.Event()

    def handle(batch: list[int]) -> None:
        gate.wait(5)
        handled(batch)

    worker: BatchWorker[int] = BatchWorker(handle, name="test-worker", max_batch=3)
    for item in range(8):
        assert worker.put(item)
    assert worker.pending == 8
    gate.set()

    assert worker.flush(5)
    assert handled.items == list(range(8))
    assert all(len(batch) <= 3 for batch in handled.batches)
    assert handled.threads == {"test-worker"}
    assert worker.pending == 0


def test_a_lingering_batch_waits_unless_an_item_is_urgent_or_someone_flushes() -> None:
    handled = Handled()
    worker: BatchWorker[int] = BatchWorker(
        handled, name="test-worker", linger=30, urgent=lambda item: item < 0
    )
    worker.put(1)
    time.sleep(0.2)
    assert handled.items == []  # lingering for a fuller batch

    worker.put(-1)  # urgent: the batch goes now, with what waited before it
    deadline = time.monotonic() + 5
    while handled.items != [1, -1] and time.monotonic() < deadline:
        time.sleep(0.01)
    assert handled.items == [1, -1]

    worker.put(2)
    started = time.monotonic()
    assert worker.flush(5)
    assert handled.items == [1, -1, 2]
    assert time.monotonic() - started < 5


def test_a_full_queue_drops_the_oldest_and_says_which() -> None:
    handled = Handled()
    dropped: list[int] = []
    busy, gate = threading.Event(), threading.Event()

    def handle(batch: list[int]) -> None:
        busy.set()
        gate.wait(5)
        handled(batch)

    worker: BatchWorker[int] = BatchWorker(
        handle, name="test-worker", max_batch=1, max_queue=2, on_drop=dropped.extend
    )
    worker.put(0)
    assert busy.wait(5)  # the thread holds 0; the queue is empty
    for item in (1, 2, 3, 4):
        worker.put(item)
    gate.set()

    assert worker.flush(5)
    assert dropped == [1, 2]
    assert handled.items == [0, 3, 4]
    assert worker.pending == 0


def test_a_failing_batch_is_logged_and_the_worker_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    handled = Handled()

    def handle(batch: list[int]) -> None:
        if 13 in batch:
            raise RuntimeError("unlucky")
        handled(batch)

    worker: BatchWorker[int] = BatchWorker(handle, name="test-worker", max_batch=1)
    with caplog.at_level(logging.ERROR, logger="weckr"):
        for item in (12, 13, 14):
            worker.put(item)
        assert worker.flush(5)

    assert handled.items == [12, 14]
    assert "test-worker thread failed on a batch" in caplog.text
    assert "unlucky" in caplog.text


def test_close_returns_what_was_never_handled_and_refuses_more() -> None:
    gate = threading.Event()
    handled = Handled()

    def handle(batch: list[int]) -> None:
        gate.wait(5)
        handled(batch)

    worker: BatchWorker[int] = BatchWorker(handle, name="test-worker", max_batch=1)
    for item in (1, 2, 3):
        worker.put(item)

    leftovers = worker.close(timeout=0.2)
    gate.set()

    assert leftovers == [2, 3]  # 1 was being handled
    assert worker.put(4) is False
    assert worker.flush(5)
    assert handled.items == [1]


def test_the_idle_step_runs_on_the_worker_thread_when_the_queue_runs_dry() -> None:
    idle_on: list[str] = []
    worker: BatchWorker[int] = BatchWorker(
        Handled(),
        name="test-worker",
        on_idle=lambda: idle_on.append(threading.current_thread().name),
    )
    worker.put(1)
    assert worker.flush(5)
    deadline = time.monotonic() + 5
    while not idle_on and time.monotonic() < deadline:
        time.sleep(0.01)
    assert idle_on[:1] == ["test-worker"]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_handles_its_own_items_on_a_thread_of_its_own() -> None:
    handled = Handled()
    gate = threading.Event()
    parent = os.getpid()

    def handle(batch: list[int]) -> None:
        if os.getpid() == parent:
            gate.wait(5)
        handled(batch)

    worker: BatchWorker[int] = BatchWorker(handle, name="test-worker")
    worker.put(1)  # the parent's thread is busy with it across the fork

    pid = os.fork()
    if pid == 0:  # the child: the parent's queue and thread are not its own
        ok = worker.put(2) and worker.flush(5) and handled.items == [2]
        os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    gate.set()

    assert os.waitstatus_to_exitcode(status) == 0
    assert worker.flush(5)
    assert handled.items == [1]
