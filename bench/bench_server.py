"""Throughput of the ingest API and latency of the cap check, on PostgreSQL.

Run: ``.venv/bin/python -m bench.bench_server [--events 1000000] [--singles 2000]``.

Creates a scratch database on 127.0.0.1:5432 (user postgres), migrates it,
bulk-loads ``--events`` usage events with COPY (5,000 users over 60 days) and
rebuilds the rollups from them in SQL, then, with that table in place, measures:

- events per second through ``POST /api/v1/log``, one event per request;
- events per second through ``POST /api/v1/log/batch``, 500 events per request;
- ``GET /api/v1/check`` latency (median and p99).

By default the follow-up tasks of each ingest (loop detection, budget alerts) run
in the request process, as in the embedded set-up without a broker. With
``--broker redis://127.0.0.1:6379/15`` they are queued to that broker instead, as
in production (nothing consumes them; the bench deletes its queue at the end).

Requests go through Django's test ``Client`` in-process: the full middleware, DRF,
authentication, validation, pricing and database work, one request at a time, but
no sockets or HTTP server. The scratch database is dropped at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import psycopg

PG = {"host": "127.0.0.1", "port": 5432, "user": "postgres"}
USERS = 5_000
DAYS = 60
BATCH = 500
MODELS = (
    ("openai", "gpt-4o"),
    ("openai", "gpt-4o-mini"),
    ("anthropic", "claude-sonnet-4"),
    ("google", "gemini-2.5-flash"),
    ("openai", "o3"),
)
FEATURES = ("summarize", "chat", "draft-email", "agent", "classify")


def _admin(sql: str) -> None:
    with psycopg.connect(dbname="postgres", autocommit=True, **PG) as connection:  # type: ignore[arg-type]
        connection.execute(sql)


def _configure(database: str, broker: str | None, queue: str) -> None:
    import django
    from django.conf import settings

    import tests.settings as base

    values = {name: getattr(base, name) for name in dir(base) if name.isupper()}
    values["DATABASES"] = {
        "default": {"ENGINE": "django.db.backends.postgresql", "NAME": database, **PG}
    }
    values["DATABASES"]["default"]["USER"] = PG["user"]
    values["DATABASES"]["default"].pop("user", None)
    values["WECKR"] = {"API_RATE_LIMIT": None, "DEFAULT_PROJECT": "bench"}
    if broker:
        values.update(
            CELERY_BROKER_URL=broker,
            CELERY_TASK_ALWAYS_EAGER=False,
            CELERY_TASK_DEFAULT_QUEUE=queue,
        )
    settings.configure(**values)
    django.setup()
    if broker:
        from celery import Celery

        app = Celery("weckr_bench")
        app.config_from_object("django.conf:settings", namespace="CELERY")
        app.set_current()
        app.set_default()


def _drop_queue(broker: str, queue: str) -> None:
    import redis

    client = redis.Redis.from_url(broker)
    for name in client.scan_iter(match=f"*{queue}*"):
        client.delete(name)


def _event(rng: random.Random, index: int) -> dict[str, Any]:
    provider, model = rng.choice(MODELS)
    return {
        "eventId": f"api-{index}-{uuid.uuid4().hex[:12]}",
        "userId": f"user-{rng.randrange(USERS)}",
        "feature": rng.choice(FEATURES),
        "planName": "pro",
        "planRevenueUsd": 29,
        "provider": provider,
        "model": model,
        "inputTokens": rng.randint(200, 8000),
        "outputTokens": rng.randint(50, 1500),
        "latencyMs": rng.randint(200, 5000),
    }


def _token_mixes() -> list[tuple[Any, Decimal, bool]]:
    """A fixed set of calls priced like the server prices them (price overrides read
    the database, so this runs before COPY holds the connection)."""
    from weckr_core.records import UsageRecord
    from weckr_django.ingest import price_record

    rng = random.Random(1)
    mixes = []
    for provider, model in MODELS:
        for _ in range(40):
            record = UsageRecord(provider=provider, model=model)
            record.input_tokens = rng.randint(200, 8000)
            record.cached_input_tokens = rng.choice((0, 0, record.input_tokens // 2))
            record.output_tokens = rng.randint(50, 1500)
            record.reasoning_tokens = record.output_tokens // 2 if model == "o3" else 0
            cost, priced = price_record(record)
            mixes.append((record, cost, priced))
    return mixes


def _rows(
    project_id: uuid.UUID, count: int, now: datetime, mixes: list[tuple[Any, Decimal, bool]]
) -> Iterator[tuple[Any, ...]]:
    rng = random.Random(2)
    span = DAYS * 86_400
    for index in range(count):
        record, cost, priced = mixes[index % len(mixes)]
        user = rng.randrange(USERS)
        moment = now - timedelta(seconds=rng.randrange(span))
        yield (
            project_id,
            f"bulk-{index}",
            moment,
            moment,
            f"user-{user}",
            FEATURES[index % len(FEATURES)],
            "pro",
            Decimal(29),
            record.provider,
            record.model,
            record.input_tokens,
            record.output_tokens,
            record.cached_input_tokens,
            0,
            record.reasoning_tokens,
            cost,
            priced,
            True,
            rng.randint(200, 5000),
            "ok",
            "sdk",
            "[]",
        )


_COPY_COLUMNS = (
    "project_id, event_id, timestamp, received_at, user_id, feature, plan_name, "
    "plan_revenue_usd, provider, model, input_tokens, output_tokens, cached_input_tokens, "
    "cache_creation_tokens, reasoning_tokens, cost_usd, priced, usage_reported, latency_ms, "
    "status, source, tags"
)

_COUNTER_SUMS = (
    "SUM(cost_usd), COUNT(*), SUM(CASE WHEN status = 'error' THEN 1 ELSE 0 END), "
    "SUM(CASE WHEN priced THEN 0 ELSE 1 END), SUM(input_tokens), SUM(output_tokens), "
    "SUM(cached_input_tokens), SUM(cache_creation_tokens), SUM(reasoning_tokens)"
)
_COUNTERS = (
    "cost_usd, calls, error_calls, unpriced_calls, input_tokens, output_tokens, "
    "cached_input_tokens, cache_creation_tokens, reasoning_tokens"
)


def bulk_load(project_id: uuid.UUID, count: int) -> float:
    """COPY ``count`` events, then rebuild both rollups from the whole table (project
    timezone UTC), so events and rollups agree. Returns seconds taken."""
    from django.db import connection

    started = time.perf_counter()
    now = datetime.now(UTC)
    connection.ensure_connection()
    mixes = _token_mixes()
    raw = connection.connection
    with raw.cursor() as cursor:
        with cursor.copy(f"COPY weckr_django_usageevent ({_COPY_COLUMNS}) FROM STDIN") as copy:
            for row in _rows(project_id, count, now, mixes):
                copy.write_row(row)
        cursor.execute(
            "DELETE FROM weckr_django_monthlyuserspend WHERE project_id = %s", [project_id]
        )
        cursor.execute("DELETE FROM weckr_django_dailyusage WHERE project_id = %s", [project_id])
        local = "(timestamp AT TIME ZONE 'UTC')"
        cursor.execute(
            f"INSERT INTO weckr_django_monthlyuserspend (project_id, user_key, month, {_COUNTERS}, "
            "plan_name, plan_revenue_usd, updated_at) "
            f"SELECT project_id, COALESCE(user_id, ''), date_trunc('month', {local})::date, "
            f"{_COUNTER_SUMS}, MAX(plan_name), MAX(plan_revenue_usd), now() "
            "FROM weckr_django_usageevent WHERE project_id = %s GROUP BY 1, 2, 3",
            [project_id],
        )
        cursor.execute(
            "INSERT INTO weckr_django_dailyusage (project_id, day, user_key, feature, model, "
            f"{_COUNTERS}, provider, plan_name) "
            f"SELECT project_id, {local}::date, COALESCE(user_id, ''), COALESCE(feature, ''), "
            f"model, {_COUNTER_SUMS}, MAX(provider), MAX(plan_name) "
            "FROM weckr_django_usageevent WHERE project_id = %s GROUP BY 1, 2, 3, 4, 5",
            [project_id],
        )
        for table in ("usageevent", "monthlyuserspend", "dailyusage"):
            cursor.execute(f"ANALYZE weckr_django_{table}")
    raw.commit()
    return time.perf_counter() - started


def rollups_agree(project_id: uuid.UUID) -> bool:
    from django.db import connection

    with connection.cursor() as cursor:
        totals = []
        for table in ("usageevent", "monthlyuserspend", "dailyusage"):
            calls = "COUNT(*)" if table == "usageevent" else "SUM(calls)"
            cursor.execute(
                f"SELECT {calls}, SUM(cost_usd) FROM weckr_django_{table} WHERE project_id = %s",
                [project_id],
            )
            totals.append(cursor.fetchone())
    return bool(totals[0] == totals[1] == totals[2])


def _post(client: Any, path: str, body: Any, key: str) -> int:
    response = client.post(
        path, data=json.dumps(body), content_type="application/json", headers={"x-api-key": key}
    )
    return int(response.status_code)


def main() -> int:
    parser = argparse.ArgumentParser(description="Weckr server benchmark on PostgreSQL.")
    parser.add_argument("--events", type=int, default=1_000_000, help="Rows to bulk-load.")
    parser.add_argument("--singles", type=int, default=2_000, help="Single-event POSTs.")
    parser.add_argument("--batches", type=int, default=40, help="Batch POSTs of 500 events.")
    parser.add_argument("--checks", type=int, default=3_000, help="GET /check requests.")
    parser.add_argument(
        "--broker", help="Queue follow-up tasks to this Redis URL instead of running them inline."
    )
    options = parser.parse_args()

    database = f"weckr_bench_{os.getpid()}"
    queue = f"weckr-bench-{os.getpid()}"
    _admin(f'CREATE DATABASE "{database}"')
    try:
        _configure(database, options.broker, queue)
        from django.core.management import call_command
        from django.test import Client

        from weckr_django import tasks
        from weckr_django.models import ApiKey, Plan, Project, UsageEvent

        call_command("migrate", interactive=False, verbosity=0)
        project = Project.objects.create(name="bench")
        Plan.objects.create(
            project=project, name="pro", monthly_price_usd=29, monthly_cap_usd=Decimal(50)
        )
        _, key = ApiKey.objects.create_key(project, "bench")
        client = Client()
        rng = random.Random(7)

        print(f"Bulk-loading {options.events:,} events with COPY and rebuilding rollups...")
        seconds = bulk_load(project.pk, options.events)
        print(
            f"  loaded in {seconds:.1f} s; rollups agree with events: {rollups_agree(project.pk)}"
        )

        # Warm up pricing caches and connections.
        for index in range(20):
            _post(client, "/api/v1/log", _event(rng, -index - 1), key)

        started = time.perf_counter()
        statuses = {
            _post(client, "/api/v1/log", _event(rng, i), key) for i in range(options.singles)
        }
        single_rate = options.singles / (time.perf_counter() - started)
        assert statuses == {201}, statuses

        batches = [
            {"events": [_event(rng, 10**7 + b * BATCH + i) for i in range(BATCH)]}
            for b in range(options.batches)
        ]
        started = time.perf_counter()
        for body in batches:
            assert _post(client, "/api/v1/log/batch", body, key) == 200
        batch_rate = options.batches * BATCH / (time.perf_counter() - started)
        # Without a broker the follow-up tasks run on an in-process thread: let them
        # finish so the check latencies below are not measured against that backlog.
        drained = tasks.local_tasks.wait(timeout=300)

        latencies = []
        for _ in range(options.checks):
            params = {
                "userId": f"user-{rng.randrange(USERS)}",
                "planName": "pro",
                "model": "gpt-4o",
            }
            started = time.perf_counter()
            response = client.get("/api/v1/check", params, headers={"x-api-key": key})
            latencies.append((time.perf_counter() - started) * 1000)
            assert response.status_code == 200
        latencies.sort()
        median = statistics.median(latencies)
        p99 = latencies[int(len(latencies) * 0.99) - 1]

        total = UsageEvent.objects.filter(project=project).count()
        follow_ups = (
            f"queued to {options.broker}"
            if options.broker
            else f"in-process background thread (drained before the checks: {drained})"
        )
        print(f"UsageEvent rows during the measurements: {total:,} (PostgreSQL, in-process Client)")
        print(f"Follow-up tasks (loop detection, budget alerts): {follow_ups}")
        print(f"POST /api/v1/log        {single_rate:8.0f} events/s  (1 event per request)")
        print(f"POST /api/v1/log/batch  {batch_rate:8.0f} events/s  ({BATCH} events per request)")
        print(f"GET  /api/v1/check      median {median:.2f} ms, p99 {p99:.2f} ms")
        print(f"Rollups still agree with events: {rollups_agree(project.pk)}")
    finally:
        from django.db import connections

        loaded_tasks = sys.modules.get("weckr_django.tasks")
        if loaded_tasks is not None:  # follow-ups still running would hit the dropped database
            loaded_tasks.local_tasks.wait(timeout=60)
        connections.close_all()
        if options.broker:
            _drop_queue(options.broker, queue)
        _admin(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
    return 0


if __name__ == "__main__":
    sys.exit(main())
