"""A PostgreSQL restart in the middle of a stream of usage (a private server)."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.integration.private_postgres import PrivatePostgres
from tests.races import ROOT, Racers

from .conftest import CeleryWorker, subprocess_env, wait_until

EVENTS = 2_500
CELERY_EVENTS = 500
DOWN_SECONDS = 9.0  # longer than DjangoBackend's own retries (0.5 + 2 + 5 s)


def produce_through_a_restart(
    postgres: PrivatePostgres, env: dict[str, str], events: int, stop_at: int, log: Any
) -> dict[str, Any]:
    """Run ``outage_producer`` for ``events`` events, stop the database once
    ``stop_at`` are sent, start it again ``DOWN_SECONDS`` later; its outcome."""
    producer = subprocess.Popen(
        [sys.executable, "-m", "tests.integration.outage_producer", str(events)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
    )
    assert producer.stdout is not None
    while producer.stdout.readline().strip() != f"sent {stop_at}":
        pass
    postgres.stop()
    time.sleep(DOWN_SECONDS)
    postgres.start()
    lines = producer.stdout.read().strip().splitlines()
    assert producer.wait(180) == 0
    outcome: dict[str, Any] = json.loads(lines[-1])
    return outcome


def stored_events(url: str) -> tuple[int, int]:
    """Events stored, and distinct event ids among them."""
    with psycopg.connect(url) as connection:
        row = connection.execute(
            "SELECT count(*), count(DISTINCT event_id) FROM weckr_django_usageevent"
        ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def test_a_restart_mid_stream_loses_nothing_duplicates_nothing_and_caps_come_back() -> None:
    with tempfile.TemporaryDirectory(prefix="weckr-spool-") as scratch:
        folder = Path(scratch)
        with PrivatePostgres() as postgres:
            postgres.create_database("weckr")
            racers = Racers(
                {
                    "DJANGO_SETTINGS_MODULE": "tests.settings",
                    "WECKR_TEST_DATABASE_URL": postgres.url("weckr"),
                    "WECKR_SPOOL": str(folder / "spool.sqlite3"),
                }
            )
            racers.setup("0")  # the plan "free" capped at $0: its user "racer" is blocked
            with (folder / "producer.log").open("w") as log_file:
                outcome = produce_through_a_restart(postgres, racers.env, EVENTS, 500, log_file)
            log = (folder / "producer.log").read_text()
            row = stored_events(postgres.url("weckr"))

    assert "kept in the spool" in log  # the outage outlasted the recorder's retries
    assert outcome["delivered"], outcome
    health = outcome["health"]
    assert health["retries"] > 0 and health["dropped"] == 0 and health["last_error"]
    assert row == (EVENTS, EVENTS)  # 0 lost, 0 duplicated
    assert outcome["allowed_while_away"] == 0, outcome  # a capped user stays capped
    assert outcome["capped_again"], outcome


def test_a_restart_with_celery_delivery_loses_nothing_and_duplicates_nothing(
    celery_worker: CeleryWorker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The worker's ingest fails while the database is away; its retries (with
    backoff) store every event once it is back."""
    with PrivatePostgres() as postgres:
        postgres.create_database("weckr")
        url = postgres.url("weckr")
        racers = Racers(
            {"DJANGO_SETTINGS_MODULE": "tests.settings", "WECKR_TEST_DATABASE_URL": url}
        )
        racers.setup("0")
        monkeypatch.setenv("WECKR_IT_DATABASE_URL", url)
        celery_worker.start()
        env = {
            **subprocess_env(),
            "WECKR_DELIVERY": "celery",
            "WECKR_SPOOL": "",
            "WECKR_DEFAULT_PROJECT": racers.project,
        }
        outcome = produce_through_a_restart(postgres, env, CELERY_EVENTS, 200, subprocess.DEVNULL)

        # One worker runs each event's task and two follow-ups: it takes a while.
        landed = wait_until(lambda: stored_events(url)[0] >= CELERY_EVENTS, timeout=150)
        assert landed, stored_events(url)
        time.sleep(3)  # a late retry of an event already stored is dropped, not added
        counts = stored_events(url)
        celery_worker.stop()  # before its database goes

    assert outcome["delivered"], outcome
    assert counts == (CELERY_EVENTS, CELERY_EVENTS)  # 0 lost, 0 duplicated
