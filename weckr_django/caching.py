"""What the hot paths (cap checks, API authentication) keep of rows that seldom change.

A value is kept for ``WECKR["CAP_CACHE_SECONDS"]`` (0: not kept). Saving or deleting
a row of the model it was read from drops every value at once in this process, and
again when that change commits; other processes see the change when their copy
expires. The values are shared between threads: treat them as read-only.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable
from typing import Any, Generic, TypeVar

from django.db import transaction
from django.db.models import Model
from django.db.models.signals import post_delete, post_save

from weckr_django.conf import weckr_settings

V = TypeVar("V")


class ExpiringCache(Generic[V]):
    def __init__(self, name: str) -> None:
        self._name = name
        self._lock = threading.Lock()
        self._values: dict[Hashable, tuple[float, V]] = {}
        # Bumped by every clear: a value loaded before a clear is not kept after it
        # (another thread's request may have read the row before it was saved).
        self._generation = 0

    def get(self, key: Hashable, load: Callable[[], V]) -> V:
        now = time.monotonic()
        kept = self._values.get(key)
        if kept is not None and kept[0] > now:
            return kept[1]
        generation = self._generation
        value = load()
        ttl = weckr_settings.CAP_CACHE_SECONDS
        if ttl > 0:
            with self._lock:
                if generation == self._generation:
                    self._values[key] = (now + ttl, value)
        return value

    def clear(self, *_: Any, **__: Any) -> None:
        """Drop every value."""
        with self._lock:
            self._generation += 1
            self._values.clear()

    def _changed(self, *_: Any, using: str | None = None, **__: Any) -> None:
        # Now, and again once the change is committed: a request that read the row
        # in between must not keep what it read.
        self.clear()
        transaction.on_commit(self.clear, using=using)

    def clear_on_change(self, model: type[Model]) -> None:
        """Drop every value when a row of ``model`` is saved or deleted."""
        for signal in (post_save, post_delete):
            signal.connect(self._changed, sender=model, dispatch_uid=f"{self._name}_{signal}")
