"""HttpBackend with a spool, through a proxy that answers 503 (Retry-After: 1) to
30% of requests and resets the connection of 20%, half of them after the server
has stored the events, in front of a real server process on PostgreSQL."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from tests.races import server_process
from weckr_core.backends.http import HttpBackend
from weckr_django.models import ApiKey, Project, UsageEvent

from .conftest import usage_records
from .flaky_proxy import FlakyProxy

pytestmark = pytest.mark.django_db(transaction=True)

EVENTS = 1_000


def test_a_flaky_proxy_loses_nothing_duplicates_nothing_and_reports_nothing_lost(
    tmp_path: Path,
) -> None:
    project = Project.objects.create(name="Flaky proxy")
    _, key = ApiKey.objects.create_key(project, "flaky")
    sent = usage_records(EVENTS)
    errors: list[BaseException] = []
    env = {
        "DJANGO_SETTINGS_MODULE": "tests.settings_integration",
        "WECKR_IT_TOKEN": os.environ["WECKR_IT_TOKEN"],
    }
    started = time.monotonic()
    with (
        server_process(env) as server,
        FlakyProxy(server, unavailable=0.3, resets=0.2, retry_after=1, seed=24) as proxy,
    ):
        backend = HttpBackend(
            key,
            f"{proxy.url}/api/v1/log",
            f"{proxy.url}/api/v1/check",
            spool=tmp_path / "spool.sqlite3",
            backoff_seconds=(0.05, 0.2),  # the proxy's Retry-After (1 s) waits longer
            on_error=errors.append,
        )
        for record in sent:
            backend.record(record)
            time.sleep(0.02)  # a stream of calls (50 a second), not one burst
        assert backend.flush(timeout=60), backend.health()
        health = backend.health()
        backend.close(timeout=5)
    elapsed = time.monotonic() - started

    events = UsageEvent.objects.filter(project=project)
    landed, distinct = events.count(), events.values("event_id").distinct().count()
    stored = set(events.values_list("event_id", flat=True))
    not_landed = {record.event_id for record in sent} - stored
    kept = [error for error in errors if "kept in the spool" in str(error)]
    reported_lost = [error for error in errors if "kept in the spool" not in str(error)]
    print(
        f"\nsent {EVENTS}, landed {landed}, lost {len(not_landed)}, duplicated "
        f"{landed - distinct}; {len(kept)} report(s) of events kept for a retry, "
        f"{len(reported_lost)} of events lost; proxy: {proxy.counts}; {elapsed:.1f} s"
    )
    assert not not_landed and landed == distinct == EVENTS  # 0 lost, 0 duplicated
    assert not reported_lost, reported_lost  # on_error said "kept", never "lost"
    assert health["dropped"] == 0 and health["spooled"] == 0, health
    # The faults happened: answers lost after the server stored the events (so the
    # events were sent again and the server kept them once), and 503s.
    counts = proxy.counts
    assert counts.resets_after > 0 and counts.resets_before > 0 and counts.unavailable > 0
    assert counts.upstream_errors == 0
