"""Process lifecycle of backends that deliver from a thread of their own.

After a fork the child has none of the parent's threads, locks or sockets: each
backend resets its own state there. At interpreter exit each gets a short flush, so
the last events of a script or a worker are not lost with its daemon threads.
"""

from __future__ import annotations

import atexit
import os
import time
import weakref
from typing import Final, Protocol

ATEXIT_FLUSH_SECONDS: Final = 2.0


class ThreadedBackend(Protocol):
    def _after_fork_in_child(self) -> None: ...

    def flush(self, timeout: float = 5.0) -> bool: ...


_live: weakref.WeakSet[ThreadedBackend] = weakref.WeakSet()


def watch(backend: ThreadedBackend) -> None:
    """Reset ``backend`` in forked children and flush it at exit, while it lives."""
    _live.add(backend)


def unwatch(backend: ThreadedBackend) -> None:
    _live.discard(backend)


def _after_fork_in_child() -> None:
    for backend in list(_live):
        backend._after_fork_in_child()


def _flush_at_exit() -> None:
    deadline = time.monotonic() + ATEXIT_FLUSH_SECONDS
    for backend in list(_live):
        backend.flush(max(0.0, deadline - time.monotonic()))


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
atexit.register(_flush_at_exit)
