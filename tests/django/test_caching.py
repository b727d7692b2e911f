"""``ExpiringCache``: what the hot paths keep of plans and projects."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import override_settings

from weckr_django.caching import ExpiringCache
from weckr_django.models import Project


def test_a_value_is_kept_for_the_cache_time_and_not_at_zero() -> None:
    cache: ExpiringCache[str] = ExpiringCache("test_kept")
    with override_settings(WECKR={"CAP_CACHE_SECONDS": 60}):
        assert cache.get("k", lambda: "first") == "first"
        assert cache.get("k", lambda: "second") == "first"
    cache.clear()
    with override_settings(WECKR={"CAP_CACHE_SECONDS": 0}):
        assert cache.get("k", lambda: "first") == "first"
        assert cache.get("k", lambda: "second") == "second"


def test_a_value_read_while_another_thread_saves_is_not_kept() -> None:
    """A request reads the row, another saves it (the cache is cleared) before the
    first one stores what it read: that stale value must not be kept."""
    cache: ExpiringCache[str] = ExpiringCache("test_race")

    def read_then_saved_elsewhere() -> str:
        cache.clear()  # the save, between the read and the store
        return "read before the save"

    with override_settings(WECKR={"CAP_CACHE_SECONDS": 60}):
        assert cache.get("k", read_then_saved_elsewhere) == "read before the save"
        assert cache.get("k", lambda: "after the save") == "after the save"


@pytest.mark.django_db
def test_a_save_clears_at_once_and_again_when_it_commits(
    django_capture_on_commit_callbacks: Any,
) -> None:
    cache: ExpiringCache[str] = ExpiringCache("test_commit")
    cache.clear_on_change(Project)
    with override_settings(WECKR={"CAP_CACHE_SECONDS": 60}):
        cache.get("k", lambda: "before")
        with django_capture_on_commit_callbacks(execute=False) as on_commit:
            Project.objects.create(name="Saved")
            assert cache.get("k", lambda: "read before the commit") == "read before the commit"
        [commit] = [callback for callback in on_commit if callback.__self__ is cache]
        commit()
        assert cache.get("k", lambda: "after the commit") == "after the commit"
