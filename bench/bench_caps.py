"""How far past a cap do concurrent callers get, and what does a reservation cost?

Run: ``.venv/bin/python -m bench.bench_caps [--delay 0.05] [--calls 2000]``.

One user with a $0.05 monthly cap; each call costs $0.0075 (gpt-4o, 1,000 prompt
and 500 output tokens) on a real OpenAI client over a fake transport that answers
in ``--delay`` seconds. Callers call until each is refused. "Before" is how caps
worked until reservations: a decision read from the rollup and cached (2 s in
Django, ``HttpBackend``'s 5 s over HTTP), nothing held; "after" reserves each call's
estimate and settles its cost. Every racer is a process of its own
(``tests/cap_race.py``); the server is Django's threaded server in a process of its
own, DEBUG off, on a scratch PostgreSQL database.

1. 16 threads in one Django process, the embedded default (SQLite file, usage
   delivered by a background thread), with and without ``max_tokens``.
2. 4 processes of 4 threads outside Django, ``Weckr(api_key=..., endpoint=...)``
   against the server.
3. Time per call of a cached check, and of a reservation with its settle, through
   ``DjangoBackend`` on each store (SQLite file, PostgreSQL, Redis), in one process;
   and the store's bare round trip (``SELECT 1``, ``PING``), the floor of each of the
   round trips a reservation (one on Redis, two on PostgreSQL) and a settle (one)
   take, so that the figure reads the same on a faster or slower machine.
"""

from __future__ import annotations

import argparse
import tempfile
import uuid
from decimal import ROUND_FLOOR, Decimal
from pathlib import Path

import psycopg

from tests.races import Racers, server_process

CAP = Decimal("0.05")
PG = {"host": "127.0.0.1", "port": 5432, "user": "postgres"}
REDIS = "redis://127.0.0.1:6379/12"


def overshoot(racers: Racers, *race: str, processes: int, threads: int) -> str:
    """Race for the cap of the project ``racers`` set up; what got past it."""
    made = sum(result["calls"] for result in racers.race(processes, threads, *race))
    totals = racers.totals()
    fit = int((CAP / totals.per_call).to_integral_value(rounding=ROUND_FLOOR))
    past = max(0, made - fit)
    dollars = max(Decimal(0), totals.spend - CAP)
    return f"{made:>5} calls, {past:>5} past the cap, ${dollars:.4f} past it"


def _admin(sql: str) -> None:
    with psycopg.connect(dbname="postgres", autocommit=True, **PG) as connection:  # type: ignore[arg-type]
        connection.execute(sql)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--delay", type=float, default=0.05, help="provider latency (s)")
    parser.add_argument("--calls", type=int, default=2000, help="calls per latency figure")
    args = parser.parse_args()
    delay = ["--delay", str(args.delay)]
    print(
        f"cap ${CAP}, ${Decimal('0.0075')} a call, provider answers in {args.delay * 1000:.0f} ms"
    )

    with tempfile.TemporaryDirectory() as scratch:
        sqlite = {
            "DJANGO_SETTINGS_MODULE": "tests.settings",
            "WECKR_TEST_SQLITE": str(Path(scratch) / "db.sqlite3"),
        }
        print("\n1. 16 threads, one Django process, embedded default (SQLite, thread delivery)")
        for label, options in (
            ("before, cached check       ", ["--mode", "check", "--max-tokens", "500"]),
            ("after, max_tokens=500      ", ["--max-tokens", "500"]),
            ("after, no max_tokens       ", []),
        ):
            racers = Racers({**sqlite, "WECKR_TEST_SQLITE": str(Path(scratch) / f"{uuid.uuid4()}")})
            racers.setup(CAP)
            result = overshoot(racers, *options, *delay, processes=1, threads=16)
            print(f"   {label} {result}")

        database = f"weckr_bench_caps_{uuid.uuid4().hex[:8]}"
        _admin(f"CREATE DATABASE {database}")
        try:
            postgres = {
                "DJANGO_SETTINGS_MODULE": "tests.settings",
                "WECKR_TEST_DATABASE_URL": f"postgres://postgres@127.0.0.1:5432/{database}",
            }
            print("\n2. 4 processes x 4 threads over HTTP (server on PostgreSQL)")
            for label, mode in (
                ("before, /check cached 5 s  ", "check"),
                ("after, /reserve            ", "reserve"),
            ):
                racers = Racers(postgres)
                racers.setup(CAP)  # and migrates the scratch database before the server starts
                with server_process(racers.env) as url:
                    race = [
                        "--mode",
                        mode,
                        "--max-tokens",
                        "500",
                        "--http",
                        url,
                        "--key",
                        racers.key,
                    ]
                    print(f"   {label} {overshoot(racers, *race, *delay, processes=4, threads=4)}")

            print(f"\n3. Time per call, median (p90) over {args.calls} calls, in one process")
            stores = (
                ("database store, SQLite     ", sqlite),
                ("database store, PostgreSQL ", postgres),
                ("Redis store                ", {**postgres, "WECKR_CAP_STORE": REDIS}),
            )
            for label, env in stores:
                racers = Racers(env)
                racers.setup("1000000")
                figures = racers.run("latency", "--calls", str(args.calls))
                check, reserve = figures["cached_check_us"], figures["reserve_settle_us"]
                trip = figures["round_trip_us"]["median"]
                added = reserve["median"] - check["median"]
                print(
                    f"   {label} cached check {check['median']:6.1f} us ({check['p90']:.1f}); "
                    f"reserve + settle {reserve['median']:7.1f} us ({reserve['p90']:.1f}); "
                    f"added {added:7.1f} us = {added / trip:.1f} bare round trips "
                    f"of {trip:.0f} us"
                )
        finally:
            _admin(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")


if __name__ == "__main__":
    main()
