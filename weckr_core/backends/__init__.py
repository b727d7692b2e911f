from __future__ import annotations

import threading
import warnings

from weckr_core.backends.base import (
    ALLOW,
    Backend,
    BaseBackend,
    CapAction,
    CapDecision,
    CapRequest,
    Reservation,
    RunStop,
    report_run_stop,
)
from weckr_core.backends.memory import MemoryBackend

__all__ = [
    "ALLOW",
    "Backend",
    "BaseBackend",
    "CapAction",
    "CapDecision",
    "CapRequest",
    "MemoryBackend",
    "Reservation",
    "RunStop",
    "configure",
    "get_backend",
    "report_run_stop",
]

_lock = threading.Lock()
_default: Backend | None = None


def configure(backend: Backend | None) -> Backend | None:
    """Make ``backend`` the process default; returns the previous one.

    Inside Django, the weckr_django app installs its database backend at start-up.
    """
    global _default
    with _lock:
        previous, _default = _default, backend
    return previous


def get_backend() -> Backend:
    """The process default backend. With none configured, a bounded in-memory one
    is installed (with a warning), so records are kept rather than dropped."""
    global _default
    backend = _default
    if backend is not None:
        return backend
    with _lock:
        if _default is None:
            warnings.warn(
                "Weckr: no backend configured; keeping usage in memory. Call "
                "weckr_core.configure(backend=...) or add weckr_django to INSTALLED_APPS.",
                RuntimeWarning,
                stacklevel=2,
            )
            _default = MemoryBackend(max_records=100_000)
        return _default
