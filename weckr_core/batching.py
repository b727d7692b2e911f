"""One background thread that drains a queue in batches.

``HttpBackend`` sends usage events with it, ``DjangoBackend`` ingests or queues them
with it, and weckr_django runs its follow-up tasks with it when there is no broker:
the same queue, the same flush and the same fork and shutdown rules for all three.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

logger = logging.getLogger("weckr")

T = TypeVar("T")


class BatchWorker(Generic[T]):
    """Items ``put`` from any thread, handed to ``handle`` in batches, in order, on
    one daemon thread started on first use (and again in a forked child).

    - A batch is up to ``max_batch`` items. It goes when it is full, when its oldest
      item has waited ``linger`` seconds, when an item that is ``urgent`` is queued,
      or when someone waits in ``flush``.
    - Past ``max_queue`` items the oldest are dropped; ``on_drop`` hears of them on
      the worker thread, before the next batch.
    - ``handle`` raising is logged and the worker goes on; the batch counts as done.
    - ``on_idle`` runs on the worker thread each time the queue runs empty, and
      every ``idle_every`` seconds while it stays empty (when given).
    """

    def __init__(
        self,
        handle: Callable[[list[T]], None],
        *,
        name: str,
        max_batch: int = 500,
        linger: float = 0.0,
        max_queue: int = 100_000,
        urgent: Callable[[T], bool] | None = None,
        on_drop: Callable[[list[T]], None] | None = None,
        on_idle: Callable[[], None] | None = None,
        idle_every: float | None = None,
    ) -> None:
        if max_batch < 1 or max_queue < 1:
            raise ValueError("max_batch and max_queue must be >= 1")
        if linger < 0:
            raise ValueError("linger must be >= 0")
        self._handle = handle
        self._name = name
        self._max_batch = max_batch
        self._linger = linger
        self._max_queue = max_queue
        self._urgent = urgent
        self._on_drop = on_drop
        self._on_idle = on_idle
        self._idle_every = idle_every
        self._reset()

    def _reset(self) -> None:
        # Everything a forked child must not share with its parent.
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._progress = threading.Condition(self._lock)
        self._queue: deque[T] = deque()
        self._oldest_at = 0.0  # when the oldest queued item was queued (about)
        self._urgent_queued = 0
        self._dropped: list[T] = []
        self._added = 0  # items put so far
        self._done = 0  # of those, handled or dropped
        self._flushing = 0  # callers waiting in flush(): no lingering
        self._closed = False
        self._thread: threading.Thread | None = None

    def put(self, item: T) -> bool:
        """Queue ``item``; False when the worker is closed (the item is not kept)."""
        if self._pid != os.getpid():
            self._reset()  # a forked child: the parent's thread and queue are not ours
        with self._lock:
            if self._closed:
                return False
            queue = self._queue
            if len(queue) >= self._max_queue:
                dropped = queue.popleft()
                self._dropped.append(dropped)
                if self._urgent is not None and self._urgent(dropped):
                    self._urgent_queued -= 1
            queue.append(item)
            self._added += 1
            if len(queue) == 1:
                self._oldest_at = time.monotonic()
                self._wake.notify()
            if self._urgent is not None and self._urgent(item):
                self._urgent_queued += 1
                self._wake.notify()
            elif len(queue) == self._max_batch:
                self._wake.notify()
            if self._thread is None:
                self._start()
        return True

    @property
    def pending(self) -> int:
        """Items put and not handled yet (queued or in the batch being handled)."""
        with self._lock:
            return self._added - self._done

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until every item put so far is handled; False when time ran out."""
        deadline = time.monotonic() + timeout
        with self._lock:
            target = self._added
            if self._done >= target:
                return True
            self._flushing += 1
            self._wake.notify()
            try:
                while self._done < target:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return False
                    self._progress.wait(remaining)
            finally:
                self._flushing -= 1
        return True

    def close(self, timeout: float = 5.0) -> list[T]:
        """Flush for up to ``timeout`` seconds, then stop taking items and end the
        thread. Returns the items that were never handled."""
        deadline = time.monotonic() + timeout
        self.flush(timeout)
        with self._lock:
            self._closed = True
            leftovers = [*self._dropped, *self._queue]
            self._done += len(leftovers)
            self._dropped.clear()
            self._queue.clear()
            self._urgent_queued = 0
            self._wake.notify_all()
            self._progress.notify_all()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(max(0.0, deadline - time.monotonic()))
        return leftovers

    # -- the worker thread -------------------------------------------------------------

    def _start(self) -> None:
        # Called with the lock held, when there is no thread: the thread clears
        # ``_thread`` when it ends.
        self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
        try:
            self._thread.start()
        except RuntimeError:  # interpreter shutting down: the items stay queued
            self._thread = None
            logger.warning("Weckr: could not start the %s thread.", self._name, exc_info=True)

    def _run(self) -> None:
        try:
            while True:
                with self._lock:
                    work = self._next_batch()
                if work is None:
                    return
                dropped, batch = work
                try:
                    if dropped and self._on_drop is not None:
                        self._on_drop(dropped)
                    if batch:
                        self._handle(batch)
                except Exception:  # a bug there must not stop the worker for good
                    logger.exception("Weckr: the %s thread failed on a batch.", self._name)
                finally:
                    with self._lock:
                        self._done += len(dropped) + len(batch)
                        self._progress.notify_all()
        finally:
            with self._lock:
                if self._thread is threading.current_thread():
                    self._thread = None

    def _next_batch(self) -> tuple[list[T], list[T]] | None:
        """Wait for items that are due; ``(dropped, batch)``, or None once closed.
        Called with the lock held."""
        idle_due: float | None = 0.0  # when on_idle runs next (monotonic); None: not again
        while True:
            dropped, self._dropped = self._dropped, []
            timeout: float | None = None
            if self._queue:
                now = time.monotonic()
                waited = now - self._oldest_at
                if (
                    self._flushing
                    or self._closed
                    or self._urgent_queued
                    or len(self._queue) >= self._max_batch
                    or waited >= self._linger
                ):
                    return dropped, self._take(now)
                timeout = self._linger - waited
            if dropped:
                return dropped, []
            if self._closed:
                return None
            now = time.monotonic()
            if not self._queue and idle_due is not None and now >= idle_due and self._on_idle:
                idle_due = None if self._idle_every is None else now + self._idle_every
                self._lock.release()
                try:
                    self._on_idle()
                except Exception:
                    logger.exception("Weckr: the %s thread's idle step failed.", self._name)
                finally:
                    self._lock.acquire()
                continue  # items may have come meanwhile
            if not self._queue and idle_due is not None and self._on_idle:
                timeout = max(0.0, idle_due - now)
            self._wake.wait(timeout)

    def _take(self, now: float) -> list[T]:
        count = min(len(self._queue), self._max_batch)
        batch = [self._queue.popleft() for _ in range(count)]
        if self._urgent is not None:
            self._urgent_queued -= sum(1 for item in batch if self._urgent(item))
        self._oldest_at = now  # of what is left: not older than now
        return batch
