"""Many callers at one user's cap boundary, on the embedded default: a SQLite file
shared by several processes, thread delivery. Each racer is a real process calling
the real OpenAI SDK over a fake transport that answers in 30 ms."""

from __future__ import annotations

import time
from decimal import Decimal
from pathlib import Path

import pytest

from tests.races import Racers, Totals, server_process

PER_CALL = Decimal("0.0075")  # gpt-4o, 1,000 prompt and 500 output tokens


@pytest.fixture
def racers(tmp_path: Path) -> Racers:
    return Racers(
        {"DJANGO_SETTINGS_MODULE": "tests.settings", "WECKR_TEST_SQLITE": str(tmp_path / "db")}
    )


def assert_settled(totals: Totals) -> None:
    """Every hold was settled and dropped: the counter is the rollup."""
    assert totals.reservations == 0
    assert (totals.store_recorded, totals.store_held) == (totals.spend, Decimal(0))
    assert totals.spend == totals.calls * PER_CALL == totals.calls * totals.per_call


def test_32_threads_with_max_tokens_spend_up_to_the_cap_and_not_a_cent_more(
    racers: Racers,
) -> None:
    cap = PER_CALL * 11 + PER_CALL / 3
    racers.setup(cap)
    [result] = racers.race(1, 32, "--max-tokens", "500", "--delay", "0.03")
    totals = racers.totals()
    assert result["calls"] == totals.calls == 11
    assert totals.spend <= cap
    assert_settled(totals)


def test_several_processes_share_one_counter(racers: Racers) -> None:
    cap = PER_CALL * 9 + PER_CALL / 2
    racers.setup(cap)
    results = racers.race(3, 6, "--max-tokens", "500", "--delay", "0.03")
    totals = racers.totals()
    assert sum(result["calls"] for result in results) == totals.calls == 9
    assert totals.spend <= cap
    assert_settled(totals)


def test_without_max_tokens_the_default_output_holds_and_the_bound_holds(
    racers: Racers,
) -> None:
    # 1,024 output tokens held per call against 500 used: no call runs past its
    # estimate here, so the cap holds without max_tokens too.
    cap = PER_CALL * 10
    racers.setup(cap)
    racers.race(2, 8, "--delay", "0.03")
    totals = racers.totals()
    assert cap - Decimal("0.0128") < totals.spend <= cap
    assert_settled(totals)


def test_services_outside_django_reserve_over_http(racers: Racers) -> None:
    cap = PER_CALL * 8 + PER_CALL / 2
    racers.setup(cap)
    with server_process(racers.env) as url:
        results = racers.race(
            2, 4, "--max-tokens", "500", "--delay", "0.03", "--http", url, "--key", racers.key
        )
    totals = racers.totals()
    assert all(result["delivered"] for result in results)
    assert sum(result["calls"] for result in results) == totals.calls == 8
    assert totals.spend <= cap
    assert_settled(totals)


def test_the_hold_of_a_killed_caller_expires(tmp_path: Path) -> None:
    racers = Racers(
        {
            "DJANGO_SETTINGS_MODULE": "tests.settings",
            "WECKR_TEST_SQLITE": str(tmp_path / "db"),
            "WECKR_CAP_RESERVATION_TTL_SECONDS": "3",
        }
    )
    racers.setup(PER_CALL * 2)
    caller = racers.start_hung_caller()
    caller.kill()  # mid-call: nothing will ever settle its hold
    caller.wait()
    assert racers.totals().store_held == PER_CALL
    time.sleep(3)
    totals = racers.totals()
    assert (totals.store_held, totals.calls) == (Decimal(0), 0)
    [result] = racers.race(1, 2, "--max-tokens", "500", "--delay", "0.01")
    assert result["calls"] == 2  # the dead caller's share of the budget came back
