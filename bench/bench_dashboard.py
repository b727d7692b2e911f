"""Render time of every dashboard page with 1,000,000 usage events.

Run: ``.venv/bin/python -m bench.bench_dashboard [--events 1000000] [--repeat 15]``.

Creates a scratch PostgreSQL database on 127.0.0.1:5432 (user postgres; dropped at
the end), or, when PostgreSQL is not reachable, a scratch SQLite file. Bulk-loads
``--events`` events (COPY on PostgreSQL) spread over this month and the 30 days
before it, 2,000 users on three plans, each user on two (feature, model) pairs,
one unpriced model, and agent runs of 20 calls for 8% of this month's events, some
ending in a loop stop or an error. The rollups are rebuilt from the events in SQL,
so they agree, as ingestion keeps them. Then every page is rendered ``--repeat``
times through Django's test ``Client`` as a logged-in staff user (full middleware,
session, auth, templates; no sockets), after two warm-up renders, and the median
and p95 render times are printed.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import tempfile
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from django.db.models import Count, Sum

PG = {"host": "127.0.0.1", "port": 5432, "user": "postgres"}
USERS = 2_000
PLANS = (
    ("starter", Decimal(5), Decimal(2)),
    ("pro", Decimal(20), Decimal(10)),
    ("team", Decimal(100), None),
)
FEATURES = ("summarize", "chat", "draft-email", "agent", "classify")
MODELS = (
    ("openai", "gpt-4o"),
    ("openai", "gpt-4o-mini"),
    ("anthropic", "claude-sonnet-4"),
    ("google", "gemini-2.5-flash"),
    ("custom", "acme-llm-1"),
)
RUN_SHARE = 0.08
RUN_LENGTH = 20
AGENTS = ("researcher", "writer", "critic")
PAGES = (
    ("overview", "/weckr/"),
    ("users", "/weckr/users/"),
    ("users, filtered", "/weckr/users/?status=unprofitable&plan=starter"),
    ("user detail", "/weckr/users/detail/?user=user-7"),
    ("features", "/weckr/features/"),
    ("models", "/weckr/models/"),
    ("agents", "/weckr/agents/"),
    ("agents, page 40", "/weckr/agents/?page=40"),
    ("recommendations", "/weckr/recommendations/"),
    ("alerts", "/weckr/alerts/"),
    ("settings", "/weckr/settings/"),
)


def postgres_reachable() -> bool:
    try:
        import psycopg

        with psycopg.connect(dbname="postgres", connect_timeout=3, **PG):  # type: ignore[arg-type]
            return True
    except Exception:
        return False


def _pg_admin(sql: str) -> None:
    import psycopg

    with psycopg.connect(dbname="postgres", autocommit=True, **PG) as connection:  # type: ignore[arg-type]
        connection.execute(sql)


def configure(database: dict[str, Any]) -> None:
    import django
    from django.conf import settings

    import tests.settings as base

    values = {name: getattr(base, name) for name in dir(base) if name.isupper()}
    values["DATABASES"] = {"default": database}
    values["DEBUG"] = False
    settings.configure(**values)
    django.setup()


def _mixes() -> dict[tuple[str, str], list[tuple[int, int, Decimal, bool]]]:
    """Token mixes per model, priced the way ingestion prices them."""
    from weckr_core.records import UsageRecord
    from weckr_django.ingest import price_record

    rng = random.Random(1)
    mixes: dict[tuple[str, str], list[tuple[int, int, Decimal, bool]]] = {}
    for provider, model in MODELS:
        mixes[(provider, model)] = []
        for _ in range(50):
            record = UsageRecord(provider=provider, model=model)
            record.input_tokens = rng.randint(200, 6000)
            record.output_tokens = rng.randint(30, 700)
            cost, priced = price_record(record)
            mixes[(provider, model)].append(
                (record.input_tokens, record.output_tokens, cost, priced)
            )
    return mixes


def rows(
    project_id: uuid.UUID,
    count: int,
    now: datetime,
    mixes: dict[tuple[str, str], list[tuple[int, int, Decimal, bool]]],
) -> Iterator[tuple[Any, ...]]:
    rng = random.Random(2)
    month_start = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    span = int((now - (month_start - timedelta(days=30))).total_seconds())
    pairs = {
        user: [
            (rng.choice(FEATURES), rng.choice(MODELS[:4] if user % 50 else MODELS))
            for _ in range(2)
        ]
        for user in range(USERS)
    }
    run = 0
    run_left = 0
    run_user = 0
    for index in range(count):
        moment = now - timedelta(seconds=rng.randrange(span))
        run_id = agent = error_type = None
        status = "ok"
        user = rng.randrange(USERS)
        if moment >= month_start and (run_left or rng.random() < RUN_SHARE / RUN_LENGTH):
            if not run_left:
                run, run_left, run_user = run + 1, RUN_LENGTH, user
            user = run_user
            run_left -= 1
            run_id = f"run-{run}"
            agent = AGENTS[run_left % len(AGENTS)]
            if run_left == 0 and run % 10 == 0:
                status, error_type = (
                    "error",
                    "WeckrLoopError" if run % 20 == 0 else "RateLimitError",
                )
        feature, (provider, model) = pairs[user][index % 2]
        input_tokens, output_tokens, cost, priced = rng.choice(mixes[(provider, model)])
        plan, price, _ = PLANS[user % len(PLANS)]
        yield (
            project_id,
            f"bulk-{index}",
            moment,
            moment,
            f"user-{user}",
            feature,
            plan,
            price,
            provider,
            model,
            input_tokens,
            output_tokens,
            0,
            0,
            0,
            cost,
            priced,
            True,
            rng.randint(200, 4000),
            status,
            error_type,
            "langchain" if run_id else "sdk",
            run_id,
            agent,
            "[]",
        )


COLUMNS = (
    "project_id, event_id, timestamp, received_at, user_id, feature, plan_name, "
    "plan_revenue_usd, provider, model, input_tokens, output_tokens, cached_input_tokens, "
    "cache_creation_tokens, reasoning_tokens, cost_usd, priced, usage_reported, latency_ms, "
    "status, error_type, source, run_id, agent, tags"
)
COUNTERS = (
    "cost_usd, calls, error_calls, unpriced_calls, input_tokens, output_tokens, "
    "cached_input_tokens, cache_creation_tokens, reasoning_tokens"
)
SUMS = (
    "SUM(cost_usd), COUNT(*), SUM(CASE WHEN status = 'error' THEN 1 ELSE 0 END), "
    "SUM(CASE WHEN priced THEN 0 ELSE 1 END), SUM(input_tokens), SUM(output_tokens), "
    "SUM(cached_input_tokens), SUM(cache_creation_tokens), SUM(reasoning_tokens)"
)


def bulk_load(project_id: uuid.UUID, count: int, postgres: bool) -> None:
    """Insert the events, then build the rollups from them (project timezone UTC)."""
    from django.db import connection, transaction

    now = datetime.now(UTC)
    # Priced before COPY holds the connection (price overrides read the database).
    generated = rows(project_id, count, now, _mixes())
    with transaction.atomic(), connection.cursor() as cursor:
        if postgres:
            raw = connection.connection
            with (
                raw.cursor() as pg,
                pg.copy(f"COPY weckr_django_usageevent ({COLUMNS}) FROM STDIN") as copy,
            ):
                for row in generated:
                    copy.write_row(row)
            day, month = (
                "(timestamp AT TIME ZONE 'UTC')::date",
                "date_trunc('month', timestamp AT TIME ZONE 'UTC')::date",
            )
        else:
            marks = ", ".join(["%s"] * len(COLUMNS.split(",")))
            batch: list[tuple[Any, ...]] = []
            for row in generated:
                batch.append(
                    (
                        row[0].hex,
                        *row[1:2],
                        row[2].strftime("%Y-%m-%d %H:%M:%S.%f"),
                        row[3].strftime("%Y-%m-%d %H:%M:%S.%f"),
                        *row[4:15],
                        str(row[15]),
                        *row[16:],
                    )
                )
                if len(batch) == 20_000:
                    cursor.executemany(
                        f"INSERT INTO weckr_django_usageevent ({COLUMNS}) VALUES ({marks})", batch
                    )
                    batch.clear()
            if batch:
                cursor.executemany(
                    f"INSERT INTO weckr_django_usageevent ({COLUMNS}) VALUES ({marks})", batch
                )
            day, month = "date(timestamp)", "date(timestamp, 'start of month')"
        project = project_id if postgres else project_id.hex
        cursor.execute(
            f"INSERT INTO weckr_django_monthlyuserspend (project_id, user_key, month, {COUNTERS}, "
            "plan_name, plan_revenue_usd, updated_at) "
            f"SELECT project_id, COALESCE(user_id, ''), {month}, {SUMS}, MAX(plan_name), "
            "MAX(plan_revenue_usd), CURRENT_TIMESTAMP FROM weckr_django_usageevent "
            "WHERE project_id = %s GROUP BY 1, 2, 3",
            [project],
        )
        cursor.execute(
            "INSERT INTO weckr_django_dailyusage (project_id, day, user_key, feature, model, "
            f"{COUNTERS}, provider, plan_name) SELECT project_id, {day}, COALESCE(user_id, ''), "
            f"COALESCE(feature, ''), model, {SUMS}, MAX(provider), MAX(plan_name) "
            "FROM weckr_django_usageevent WHERE project_id = %s GROUP BY 1, 2, 3, 4, 5",
            [project],
        )
        cursor.execute(
            "INSERT INTO weckr_django_agentrunusage (project_id, month, run_id, user_key, "
            f"source, {COUNTERS}, started_at, ended_at) SELECT project_id, {month}, run_id, "
            f"COALESCE(MAX(user_id), ''), MAX(source), {SUMS}, MIN(timestamp), MAX(timestamp) "
            "FROM weckr_django_usageevent WHERE project_id = %s AND run_id IS NOT NULL "
            "GROUP BY 1, 2, 3",
            [project],
        )
        for table in ("usageevent", "monthlyuserspend", "dailyusage", "agentrunusage"):
            cursor.execute(f"ANALYZE weckr_django_{table}")


def measure(client: Any, path: str, repeat: int) -> tuple[float, float, int]:
    from django.db import connection, reset_queries

    for _ in range(2):
        assert client.get(path).status_code == 200, path
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        response = client.get(path)
        times.append((time.perf_counter() - started) * 1000)
        assert response.status_code == 200, path
    reset_queries()
    connection.force_debug_cursor = True
    client.get(path)
    queries = len(connection.queries)
    connection.force_debug_cursor = False
    times.sort()
    p95 = times[max(0, round(0.95 * len(times)) - 1)]
    return statistics.median(times), p95, queries


def run(options: argparse.Namespace, postgres: bool) -> None:
    from django.contrib.auth.models import User
    from django.core.management import call_command
    from django.db import connection
    from django.test import Client

    from weckr_django.models import (
        AgentRunUsage,
        AlertLog,
        DailyUsage,
        MonthlyUserSpend,
        Plan,
        Project,
        UsageEvent,
    )

    call_command("migrate", interactive=False, verbosity=0)
    project = Project.objects.create(name="bench", alert_email="ops@example.com")
    for name, price, cap in PLANS:
        Plan.objects.create(
            project=project, name=name, monthly_price_usd=price, monthly_cap_usd=cap
        )
    AlertLog.objects.bulk_create(
        AlertLog(project=project, kind=AlertLog.Kind.SOFT_CAP, user_id=f"user-{n}")
        for n in range(500)
    )
    staff = User.objects.create_user("staff", password="x", is_staff=True, is_superuser=True)

    print(f"Loading {options.events:,} events and rebuilding the rollups...", flush=True)
    started = time.perf_counter()
    bulk_load(project.pk, options.events, postgres)
    print(f"  {time.perf_counter() - started:.0f} s", flush=True)
    events = UsageEvent.objects.filter(project=project)
    in_runs = events.exclude(run_id=None).count()
    print(f"UsageEvent {events.count():,} rows ({in_runs:,} in agent runs)")
    print(f"DailyUsage {DailyUsage.objects.count():,} rows")
    print(f"MonthlyUserSpend {MonthlyUserSpend.objects.count():,} rows")
    print(f"AgentRunUsage {AgentRunUsage.objects.count():,} rows")
    totals = [events.aggregate(calls=Count("id"), cost=Sum("cost_usd"))]
    totals.append(DailyUsage.objects.aggregate(calls=Sum("calls"), cost=Sum("cost_usd")))
    totals.append(MonthlyUserSpend.objects.aggregate(calls=Sum("calls"), cost=Sum("cost_usd")))
    run_totals = [
        events.exclude(run_id=None).aggregate(calls=Count("id"), cost=Sum("cost_usd")),
        AgentRunUsage.objects.aggregate(calls=Sum("calls"), cost=Sum("cost_usd")),
    ]
    # SQLite sums decimals as floats: compare to the micro-dollar.
    agree = {(t["calls"], round(Decimal(t["cost"]), 6)) for t in totals}
    agree_runs = {(t["calls"], round(Decimal(t["cost"] or 0), 6)) for t in run_totals}
    print(f"Rollups agree with events: {len(agree) == 1 and len(agree_runs) == 1}")

    client = Client()
    client.force_login(staff)
    engine = "PostgreSQL" if postgres else "SQLite"
    print(f"\nRender time per page ({engine}, Django test Client, {options.repeat} renders each)")
    print(f"{'page':<18} {'median ms':>10} {'p95 ms':>8} {'queries':>8}")
    worst = 0.0
    for name, path in PAGES:
        median, p95, queries = measure(client, path, options.repeat)
        worst = max(worst, p95)
        print(f"{name:<18} {median:>10.1f} {p95:>8.1f} {queries:>8}", flush=True)
    print(f"\nSlowest p95: {worst:.1f} ms (budget 300 ms): {'OK' if worst < 300 else 'OVER'}")
    connection.close()


def main() -> int:
    parser = argparse.ArgumentParser(description="Dashboard page render times.")
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument(
        "--sqlite", action="store_true", help="Use SQLite even if PostgreSQL is up."
    )
    options = parser.parse_args()

    postgres = not options.sqlite and postgres_reachable()
    if postgres:
        name = f"weckr_bench_dashboard_{os.getpid()}"
        _pg_admin(f'CREATE DATABASE "{name}"')
        try:
            configure(
                {
                    "ENGINE": "django.db.backends.postgresql",
                    "NAME": name,
                    "HOST": PG["host"],
                    "PORT": PG["port"],
                    "USER": PG["user"],
                }
            )
            run(options, postgres=True)
        finally:
            from django.db import connections

            connections.close_all()
            _pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    else:
        reason = "as asked" if options.sqlite else "PostgreSQL on 127.0.0.1:5432 is not reachable"
        print(f"Using a scratch SQLite file ({reason}).")
        with tempfile.TemporaryDirectory() as folder:
            configure(
                {
                    "ENGINE": "django.db.backends.sqlite3",
                    "NAME": str(Path(folder) / "bench.sqlite3"),
                }
            )
            run(options, postgres=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
