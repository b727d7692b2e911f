"""Callers racing for one user's last dollars against this machine's PostgreSQL and
Redis: several processes, a Celery worker, and services outside Django over HTTP."""

from __future__ import annotations

import os
from decimal import Decimal

import pytest

from tests.races import Racers, Totals, server_process

from .conftest import CeleryWorker

pytestmark = pytest.mark.django_db(transaction=True)

PER_CALL = Decimal("0.0075")  # gpt-4o, 1,000 prompt and 500 output tokens
REDIS_STORE = os.environ.get("WECKR_IT_CAP_REDIS_URL", "redis://127.0.0.1:6379/13")


def racers(**env: str) -> Racers:
    return Racers(
        {
            "DJANGO_SETTINGS_MODULE": "tests.settings_integration",
            "WECKR_IT_TOKEN": os.environ["WECKR_IT_TOKEN"],
            **env,
        }
    )


def assert_settled(totals: Totals) -> None:
    assert totals.reservations == 0
    assert (totals.store_recorded, totals.store_held) == (totals.spend, Decimal(0))
    assert totals.spend == totals.calls * PER_CALL


def test_processes_on_postgresql_with_a_celery_worker_never_pass_the_cap(
    celery_worker: CeleryWorker,
) -> None:
    race = racers(WECKR_DELIVERY="celery")
    cap = PER_CALL * 12 + PER_CALL / 2
    race.setup(cap)
    celery_worker.start()
    results = race.race(4, 8, "--max-tokens", "500", "--delay", "0.03")
    assert all(result["delivered"] for result in results)  # handed to the broker
    made = sum(result["calls"] for result in results)
    assert made == 12
    # The worker stores the events in its own time; the counter agrees once it has.
    from .conftest import wait_until

    assert wait_until(lambda: race.totals().calls == made, timeout=180, interval=1), "".join(
        celery_worker.log[-60:]
    )
    totals = race.totals()
    assert totals.spend <= cap
    assert_settled(totals)


def test_processes_sharing_a_redis_cap_store_never_pass_the_cap() -> None:
    race = racers(WECKR_DELIVERY="thread", WECKR_CAP_STORE=REDIS_STORE)
    cap = PER_CALL * 10 + PER_CALL / 2
    race.setup(cap)
    results = race.race(4, 8, "--max-tokens", "500", "--delay", "0.03")
    totals = race.totals()
    assert sum(result["calls"] for result in results) == totals.calls == 10
    assert totals.spend <= cap
    assert_settled(totals)


@pytest.mark.parametrize("store", ["database", REDIS_STORE])
def test_services_over_http_share_the_servers_counter(store: str) -> None:
    race = racers(WECKR_DELIVERY="thread", WECKR_CAP_STORE=store)
    cap = PER_CALL * 8 + PER_CALL / 2
    race.setup(cap)
    with server_process(race.env) as url:
        results = race.race(
            4, 4, "--max-tokens", "500", "--delay", "0.03", "--http", url, "--key", race.key
        )
    totals = race.totals()
    assert all(result["delivered"] for result in results)
    assert sum(result["calls"] for result in results) == totals.calls == 8
    assert totals.spend <= cap
    assert_settled(totals)
