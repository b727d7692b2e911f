"""A worker killed (SIGKILL) and the broker crashed (SIGKILL) in the middle of a
stream of usage, then both replaced: a private Redis with an append-only file, as
the README recommends, and real workers."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path

import pytest

from weckr_django.models import Plan, Project, UsageEvent

from .conftest import ROOT, CeleryWorker, subprocess_env, wait_until
from .private_redis import PrivateRedis

pytestmark = pytest.mark.django_db(transaction=True)

EVENTS = 2_000
DOWN_SECONDS = 15.0  # longer than DjangoBackend's broker retries (0.5 + 2 + 5 s + Celery's)


def test_a_killed_worker_and_a_broker_crash_lose_nothing_and_duplicate_nothing(
    celery_worker: CeleryWorker, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    project = Project.objects.create(name="Broker faults")
    # The producer checks users of the plan "free": capped at $0, they are refused.
    Plan.objects.create(
        project=project, name="free", monthly_price_usd=Decimal(0), monthly_cap_usd=Decimal(0)
    )
    with PrivateRedis() as broker:
        monkeypatch.setenv("WECKR_IT_REDIS_URL", broker.url)
        monkeypatch.setenv("WECKR_IT_VISIBILITY_TIMEOUT", "5")
        celery_worker.start()
        log = tmp_path / "producer.log"
        producer = subprocess.Popen(
            [sys.executable, "-m", "tests.integration.outage_producer", str(EVENTS)],
            cwd=ROOT,
            env={
                **subprocess_env(),
                "WECKR_DELIVERY": "celery",
                "WECKR_SPOOL": str(tmp_path / "spool.sqlite3"),
                "WECKR_DEFAULT_PROJECT": str(project.pk),
            },
            stdout=subprocess.PIPE,
            stderr=log.open("w"),
            text=True,
        )
        assert producer.stdout is not None
        while producer.stdout.readline().strip() != "sent 300":
            pass
        # The worker dies mid-stream (SIGKILL): a message it had fetched is not
        # acknowledged, and comes back after the visibility timeout.
        worker = celery_worker.process
        assert worker is not None
        worker.kill()
        worker.wait()
        celery_worker.process = None
        while producer.stdout.readline().strip() != "sent 500":
            pass
        started = time.monotonic()
        broker.crash()  # SIGKILL: the queue survives in the append-only file
        time.sleep(DOWN_SECONDS)
        broker.start()
        celery_worker.start()  # the replacement
        lines = producer.stdout.read().strip().splitlines()
        assert producer.wait(180) == 0
        outcome = json.loads(lines[-1])
        print(f"producer done {time.monotonic() - started:.1f} s after the crash")

        def stored() -> int:
            return UsageEvent.objects.filter(project=project).count()

        assert wait_until(lambda: stored() >= EVENTS, timeout=120), stored()
        print(f"all stored {time.monotonic() - started:.1f} s after the crash")
        time.sleep(6)  # anything redelivered late has landed (or been dropped as a duplicate)

    assert "kept in the spool" in log.read_text()  # the outage outlasted the retries
    assert outcome["delivered"], outcome
    assert outcome["allowed_while_away"] == 0, outcome
    events = UsageEvent.objects.filter(project=project)
    assert events.count() == EVENTS  # 0 lost, 0 duplicated
    assert events.values("event_id").distinct().count() == EVENTS
