"""The broker going away in the middle of a stream of usage, then coming back: a
private Redis with an append-only file, as the README recommends, and real workers."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path
from typing import Literal

import pytest
import redis

from tests import settings_integration as settings
from weckr_django.models import Plan, Project, UsageEvent
from weckr_django.tasks import FOLLOW_UP_LINGER_SECONDS

from .conftest import ROOT, CeleryWorker, subprocess_env, wait_until
from .private_redis import PrivateRedis

pytestmark = pytest.mark.django_db(transaction=True)

EVENTS = 2_000
DOWN_SECONDS = 15.0  # longer than DjangoBackend's broker retries (0.5 + 2 + 5 s + Celery's)


@pytest.mark.parametrize(
    "broker_fault",
    [
        pytest.param("crash", id="worker-killed-then-broker-crashed"),
        pytest.param("stop", id="broker-stopped-worker-stays-up"),
    ],
)
def test_the_broker_going_away_mid_stream_loses_nothing_and_duplicates_nothing(
    broker_fault: Literal["crash", "stop"],
    celery_worker: CeleryWorker,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """crash: a worker is killed (SIGKILL) at 300 events, so what it had fetched
    comes back only through the visibility timeout; the broker is killed (SIGKILL)
    at 500, so the queue survives only in the append-only file; both are replaced
    ``DOWN_SECONDS`` later.

    stop: the broker shuts down gracefully (SIGTERM, as a service manager or a
    redeploy stops it) at 500 and starts again ``DOWN_SECONDS`` later; the worker
    runs throughout and must reconnect by itself. The producer pauses at 500 until
    the worker has taken and acknowledged everything queued, so that the broker
    does not go away in the instant it hands the worker a message: kombu's Redis
    transport loses a message caught there (the window the README names).

    Either way the producer's events outlast its retries and wait in its spool."""
    project = Project.objects.create(name=f"Broker {broker_fault}")
    # The producer checks users of the plan "free": capped at $0, they are refused.
    Plan.objects.create(
        project=project, name="free", monthly_price_usd=Decimal(0), monthly_cap_usd=Decimal(0)
    )
    with PrivateRedis() as broker:
        monkeypatch.setenv("WECKR_IT_REDIS_URL", broker.url)
        monkeypatch.setenv("WECKR_IT_VISIBILITY_TIMEOUT", "5")
        celery_worker.start()
        log = tmp_path / "producer.log"
        resume = tmp_path / "resume"
        client = redis.Redis.from_url(broker.url)
        prefix = settings.CELERY_BROKER_TRANSPORT_OPTIONS["global_keyprefix"]
        queue, unacked = f"{prefix}{settings.CELERY_TASK_DEFAULT_QUEUE}", f"{prefix}unacked"
        producer = subprocess.Popen(
            [sys.executable, "-m", "tests.integration.outage_producer", str(EVENTS)],
            cwd=ROOT,
            env={
                **subprocess_env(),
                "WECKR_DELIVERY": "celery",
                "WECKR_SPOOL": str(tmp_path / "spool.sqlite3"),
                "WECKR_DEFAULT_PROJECT": str(project.pk),
                "WECKR_IT_PAUSE_AT": "501" if broker_fault == "stop" else "-1",
                "WECKR_IT_RESUME_FILE": str(resume),
            },
            stdout=subprocess.PIPE,
            stderr=log.open("w"),
            text=True,
        )
        assert producer.stdout is not None
        while producer.stdout.readline().strip() != "sent 300":
            pass
        if broker_fault == "crash":
            worker = celery_worker.process
            assert worker is not None
            # Killed while it runs a task, whose message is then in the broker's
            # unacknowledged set and comes back after the visibility timeout. (A kill
            # in the instant between Redis handing a message over and the worker
            # recording it as unacknowledged loses that message: a window of kombu's
            # Redis transport, celery/celery#7950, which the README names; RabbitMQ's
            # acknowledgements have none.)
            assert wait_until(lambda: client.hlen(unacked) > 0, timeout=30, interval=0.001)
            worker.kill()
            worker.wait()
            celery_worker.process = None
        while producer.stdout.readline().strip() != "sent 500":
            pass
        started = time.monotonic()
        if broker_fault == "crash":
            broker.crash()
        else:
            assert producer.stdout.readline().strip() == "paused 501"

            def idle() -> bool:
                return client.llen(queue) == 0 and client.hlen(unacked) == 0

            assert wait_until(idle, timeout=60)
            time.sleep(FOLLOW_UP_LINGER_SECONDS + 0.5)  # the worker's own follow-up tasks
            assert wait_until(idle, timeout=60)
            broker.stop()
            resume.touch()
        time.sleep(DOWN_SECONDS)
        broker.start()
        if celery_worker.process is None:
            celery_worker.start()  # the replacement
        lines = producer.stdout.read().strip().splitlines()
        assert producer.wait(180) == 0
        outcome = json.loads(lines[-1])
        print(f"\n{broker_fault}: producer done {time.monotonic() - started:.1f} s after")

        def stored() -> int:
            return UsageEvent.objects.filter(project=project).count()

        assert wait_until(lambda: stored() >= EVENTS, timeout=120), (
            stored(),
            "".join(celery_worker.log[-40:]),
        )
        print(f"{broker_fault}: all stored {time.monotonic() - started:.1f} s after")
        time.sleep(6)  # anything redelivered late has landed (or been dropped as a duplicate)

    assert "kept in the spool" in log.read_text()  # the outage outlasted the retries
    assert outcome["delivered"], outcome
    assert outcome["allowed_while_away"] == 0, outcome
    events = UsageEvent.objects.filter(project=project)
    landed, distinct = events.count(), events.values("event_id").distinct().count()
    print(
        f"{broker_fault}: sent {EVENTS}, landed {landed}, lost {EVENTS - distinct}, "
        f"duplicated {landed - distinct}"
    )
    assert (landed, distinct) == (EVENTS, EVENTS)  # 0 lost, 0 duplicated
