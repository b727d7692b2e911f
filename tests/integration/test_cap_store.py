"""The cap stores against this machine's PostgreSQL and Redis."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
import redis
from django.conf import settings
from django.db import transaction
from django.test.utils import override_settings

from weckr_core.backends.base import CapRequest
from weckr_django import caps
from weckr_django.ingest import ingest_records
from weckr_django.models import MonthlyAccountSpend, MonthlyUserSpend, Plan, Project
from weckr_django.stores import (
    Budget,
    CapStoreUnavailable,
    RedisCapStore,
    Spend,
    SpendKey,
    cap_store,
)

from ..django.helpers import make_record
from .database import open_test_database

pytestmark = pytest.mark.django_db(transaction=True)

REDIS_URL = os.environ.get("WECKR_IT_CAP_REDIS_URL", "redis://127.0.0.1:6379/13")
PER_CALL = Decimal("0.0075")  # gpt-4o, 1,000 prompt and 500 output tokens


def request() -> CapRequest:
    return CapRequest("u1", "pro", "gpt-4o", "openai", input_tokens=1000, max_output_tokens=500)


def project_with_cap(cap: Decimal) -> Project:
    project = Project.objects.create(name="Acme")
    Plan.objects.create(
        project=project, name="pro", monthly_price_usd=Decimal(20), monthly_cap_usd=cap
    )
    return project


def other_connection_sees_holds() -> int:
    with open_test_database() as other:
        row = other.execute("SELECT count(*) FROM weckr_django_capreservation").fetchone()
    assert row is not None and isinstance(row[0], int)
    return row[0]


def test_a_hold_made_inside_the_callers_transaction_is_committed_at_once() -> None:
    """With ATOMIC_REQUESTS the view's transaction lasts as long as the LLM call: a
    hold written in it would be invisible to every other process until then."""
    project = project_with_cap(Decimal(5))
    with transaction.atomic():
        decision = caps.reserve(project, request())
        assert decision.reservation is not None
        assert other_connection_sees_holds() == 1
    assert cap_store().spend(SpendKey.of(project, "u1")).held == PER_CALL


def test_a_store_connection_dropped_by_the_server_fails_one_call_then_reconnects() -> None:
    """A reservation is pipelined on PostgreSQL: an error that surfaces at the end of
    the pipeline is the store being unavailable, and the next call starts afresh."""
    project = project_with_cap(Decimal(5))
    store = cap_store()
    budget = [Budget(SpendKey.of(project, "u1"), Decimal(5))]
    first = store.reserve(budget, PER_CALL, 60)
    assert first.reservation_id is not None
    with open_test_database() as admin:
        # The store's own connection: the one whose last statement ended a reservation.
        dropped = admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid() "
            "AND query = 'COMMIT'"
        ).fetchall()
    assert len(dropped) == 1
    with pytest.raises(CapStoreUnavailable):
        store.reserve(budget, PER_CALL, 60)
    again = store.reserve(budget, PER_CALL, 60)
    assert again.reservation_id is not None
    assert again.spends[0].held == PER_CALL  # the first hold, committed before the drop


@pytest.fixture
def redis_store() -> Iterator[RedisCapStore]:
    with override_settings(WECKR={**settings.WECKR, "CAP_STORE": REDIS_URL}):
        store = cap_store()
        assert isinstance(store, RedisCapStore)
        yield store


def test_redis_store_holds_settles_and_agrees_with_the_rollup_after_ingest(
    redis_store: RedisCapStore,
) -> None:
    project = project_with_cap(PER_CALL * 2 + PER_CALL / 2)
    first = caps.reserve(project, request())
    second = caps.reserve(project, request())
    third = caps.reserve(project, request())
    assert first.reservation and second.reservation and third.action == "block"
    assert third.current_spend == PER_CALL * 2

    record = make_record("e1", user_id="u1", input_tokens=1000, output_tokens=100)
    caps.settle(project, first.reservation, record)
    record.reservation_id = first.reservation.id
    ingest_records(project, [record])  # the Redis copy is updated after the commit
    key = SpendKey.of(project, "u1")
    rollup = MonthlyUserSpend.objects.get(project=project, user_key="u1").cost_usd
    spend = redis_store.spend(key)
    assert (spend.recorded, spend.held) == (rollup, PER_CALL)  # the second still held


def test_a_redis_that_lost_its_data_reloads_the_total_from_the_rollup(
    redis_store: RedisCapStore,
) -> None:
    project = project_with_cap(Decimal("0.02"))
    ingest_records(project, [make_record(f"e{i}", user_id="u1") for i in range(2)])
    rollup = MonthlyUserSpend.objects.get(project=project, user_key="u1").cost_usd
    key = SpendKey.of(project, "u1")
    redis.Redis.from_url(REDIS_URL).delete(RedisCapStore.key(key))  # a restart

    decision = caps.reserve(project, request())

    assert decision.current_spend == rollup
    assert redis_store.spend(key).recorded == rollup
    assert decision.allowed == (rollup + PER_CALL <= Decimal("0.02"))


def account_project(account_cap: Decimal) -> Project:
    project = Project.objects.create(name="Acme")
    Plan.objects.create(
        project=project,
        name="team",
        monthly_price_usd=Decimal(99),
        monthly_cap_usd=PER_CALL * 100,
        account_monthly_cap_usd=account_cap,
    )
    return project


@pytest.mark.parametrize("store_setting", ["database", REDIS_URL])
def test_users_of_one_account_racing_never_overrun_the_account_cap(store_setting: str) -> None:
    """Eight users of one account reserve at once, each in a thread of its own (its
    own connection to the store): the account's cap admits exactly as many calls as
    fit, whoever makes them."""
    project = account_project(PER_CALL * 10 + PER_CALL / 2)
    allowed: list[str] = []
    refused: list[str | None] = []
    lock = threading.Lock()

    def racer(user_id: str) -> None:
        while True:
            decision = caps.reserve(
                project,
                CapRequest(
                    user_id,
                    "team",
                    "gpt-4o",
                    "openai",
                    input_tokens=1000,
                    max_output_tokens=500,
                    account_id="acme",
                ),
            )
            with lock:
                if not decision.allowed:
                    refused.append(decision.account_id)
                    return
                allowed.append(user_id)

    with override_settings(WECKR={**settings.WECKR, "CAP_STORE": store_setting}):
        threads = [threading.Thread(target=racer, args=(f"u{i}",)) for i in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        account = cap_store().spend(SpendKey.of_account(project, "acme"))
    assert len(allowed) == 10
    assert refused == ["acme"] * 8
    assert account.held == PER_CALL * 10


def test_redis_store_keeps_an_account_and_its_users_in_step_with_the_rollups(
    redis_store: RedisCapStore,
) -> None:
    project = account_project(PER_CALL * 3)
    first = caps.reserve(project, CapRequest(**ACCOUNT_CALL, user_id="u1"))
    second = caps.reserve(project, CapRequest(**ACCOUNT_CALL, user_id="u2"))
    assert first.reservation and second.reservation
    account, user = SpendKey.of_account(project, "acme"), SpendKey.of(project, "u1")
    assert redis_store.spend(account).held == PER_CALL * 2

    caps.release(project, second.reservation.id, "u2", "acme")
    record = make_record("e1", user_id="u1", input_tokens=1000, output_tokens=100)
    record.account_id = "acme"
    caps.settle(project, first.reservation, record)
    record.reservation_id = first.reservation.id
    ingest_records(project, [record])  # the Redis copies are updated after the commit

    rollup = MonthlyAccountSpend.objects.get(project=project, account_key="acme").cost_usd
    assert redis_store.spends([user, account]) == (
        Spend(MonthlyUserSpend.objects.get(project=project, user_key="u1").cost_usd, Decimal(0)),
        Spend(rollup, Decimal(0)),
    )
    # A Redis that lost the account's hash reloads it from the account rollup.
    redis.Redis.from_url(REDIS_URL).delete(RedisCapStore.key(account))
    again = caps.reserve(project, CapRequest(**ACCOUNT_CALL, user_id="u3"))
    assert again.allowed
    assert redis_store.spend(account) == Spend(rollup, PER_CALL)


ACCOUNT_CALL: dict[str, Any] = {
    "plan": "team",
    "model": "gpt-4o",
    "provider": "openai",
    "input_tokens": 1000,
    "max_output_tokens": 500,
    "account_id": "acme",
}


def test_usage_stored_without_a_reservation_reaches_the_redis_totals(
    redis_store: RedisCapStore,
) -> None:
    """Calls recorded with no reservation (track(), OTLP spans, a plan that was not
    capped then) still count against the cap Redis decides from."""
    project = project_with_cap(Decimal(5))
    assert caps.reserve(project, request()).allowed  # Redis now has u1's hash
    key = SpendKey.of(project, "u1")
    ingest_records(project, [make_record(f"free-{i}", user_id="u1") for i in range(3)])

    rollup = MonthlyUserSpend.objects.get(project=project, user_key="u1").cost_usd
    assert rollup > 0
    assert redis_store.spend(key).recorded == rollup
    ttl = redis.Redis.from_url(REDIS_URL).ttl(RedisCapStore.key(key))
    assert 0 < ttl <= RedisCapStore._KEY_TTL_SECONDS
