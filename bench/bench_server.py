"""The server as deployed: ingest rate and ``/check`` latency over sockets, on PostgreSQL.

Run: ``.venv/bin/python -m bench.bench_server [--events 1000000] [--seconds 10]``.

Creates a scratch database on 127.0.0.1:5432 (user postgres), migrates it,
bulk-loads ``--events`` usage events with COPY (5,000 users over 60 days), times
COPY and a multi-row INSERT of fresh rows into the same loaded table (the
database's own speed, the baseline), and rebuilds the rollups from the events in
SQL. Then it starts the example project as in production, ``gunicorn -c
example_project/gunicorn.conf.py`` (DEBUG off, persistent connections), and drives
it with ``--clients`` concurrent clients, each on one keep-alive connection:

- ``POST /api/v1/log``, one event per request;
- ``POST /api/v1/log/batch``, 500 events per request (its rate ÷ COPY's);
- how long after the last batch a looping user's call raises its loop alert (the
  lag of follow-up work);
- ``GET /api/v1/check`` with no writes, for a user and for a user in an account
  (two budgets read: the user's and the account's; its ratio to the user-only
  check), and again while half the clients ingest batches as fast as they can;
- the same with the checks sent to a second server process of their own (a pool
  for the latency-critical endpoints, as a proxy routing by path would give);
- batch ingest again with 1, 2 and 4 web processes (``--web-processes``).

Each phase runs ``--seconds``. Follow-up work (loop detection, budget alerts) runs
where the deployment runs it: in the web workers with no broker, or queued to
``--broker`` (nothing consumes it here; the queue is deleted at the end). At the
end the rollups must still agree with the events. The scratch database is dropped.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg

ROOT = Path(__file__).resolve().parent.parent
PG = {"host": "127.0.0.1", "port": 5432, "user": "postgres"}
USERS = 5_000
ACCOUNT_SIZE = 10  # users per B2B account: user-N is in account-(N // 10)
DAYS = 60
BATCH = 500
BASELINE_ROWS = 50_000
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


def _server_env(database: str, port: int, broker: str | None, queue: str) -> dict[str, str]:
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "DJANGO_SETTINGS_MODULE": "example_project.settings",
        "DATABASE_URL": f"postgres://{PG['user']}@{PG['host']}:{PG['port']}/{database}",
        "WECKR_PROJECT": "bench",
        "WECKR_API_RATE_LIMIT": "",
        "WECKR_BIND": f"127.0.0.1:{port}",
    }
    env.pop("CELERY_BROKER_URL", None)
    if broker:
        env["CELERY_BROKER_URL"] = broker
        env["CELERY_TASK_DEFAULT_QUEUE"] = queue
    return env


def _configure(env: dict[str, str]) -> None:
    """This process uses the server's own settings, to migrate and load the data."""
    import django

    for name in ("DJANGO_SETTINGS_MODULE", "DATABASE_URL", "WECKR_PROJECT"):
        os.environ[name] = env[name]
    os.environ.pop("CELERY_BROKER_URL", None)
    django.setup()


def _drop_queue(broker: str, queue: str) -> None:
    import redis

    client = redis.Redis.from_url(broker)
    for name in client.scan_iter(match=f"*{queue}*"):
        client.delete(name)


def _event(rng: random.Random, index: int) -> dict[str, Any]:
    provider, model = rng.choice(MODELS)
    user = rng.randrange(USERS)
    return {
        "eventId": f"api-{index}-{uuid.uuid4().hex[:12]}",
        "userId": f"user-{user}",
        "accountId": f"account-{user // ACCOUNT_SIZE}",
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
    project_id: uuid.UUID,
    count: int,
    now: datetime,
    mixes: list[tuple[Any, Decimal, bool]],
    prefix: str = "bulk",
) -> Iterator[tuple[Any, ...]]:
    rng = random.Random(prefix)
    span = DAYS * 86_400
    for index in range(count):
        record, cost, priced = mixes[index % len(mixes)]
        user = rng.randrange(USERS)
        moment = now - timedelta(seconds=rng.randrange(span))
        yield (
            project_id,
            f"{prefix}-{index}",
            moment,
            moment,
            f"user-{user}",
            f"account-{user // ACCOUNT_SIZE}",
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
    "project_id, event_id, timestamp, received_at, user_id, account_id, feature, plan_name, "
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


@dataclass
class Baseline:
    """Rows per second the database itself takes into the loaded events table."""

    copy: float
    insert: float


def bulk_load(project_id: uuid.UUID, count: int) -> tuple[float, Baseline]:
    """COPY ``count`` events; time COPY and multi-row INSERTs (500 rows each, the
    statement prepared once) of ``BASELINE_ROWS`` more; then rebuild both rollups from
    the whole table (project timezone UTC), so events and rollups agree. Returns the
    seconds the load took and the baseline."""
    from django.db import connection

    started = time.perf_counter()
    now = datetime.now(UTC)
    connection.ensure_connection()
    mixes = _token_mixes()
    raw = connection.connection
    copy_sql = f"COPY weckr_django_usageevent ({_COPY_COLUMNS}) FROM STDIN"
    with raw.cursor() as cursor:
        with cursor.copy(copy_sql) as copy:
            for row in _rows(project_id, count, now, mixes):
                copy.write_row(row)
        cursor.execute("ANALYZE weckr_django_usageevent")
    raw.commit()
    loaded = time.perf_counter() - started

    rows = list(_rows(project_id, BASELINE_ROWS, now, mixes, prefix="copy"))
    with raw.cursor() as cursor:
        timer = time.perf_counter()
        with cursor.copy(copy_sql) as copy:
            for row in rows:
                copy.write_row(row)
        raw.commit()
        copy_rate = len(rows) / (time.perf_counter() - timer)

    rows = list(_rows(project_id, BASELINE_ROWS, now, mixes, prefix="insert"))
    width = len(rows[0])
    one = "(" + ", ".join(["%s"] * width) + ")"
    insert_sql = f"INSERT INTO weckr_django_usageevent ({_COPY_COLUMNS}) VALUES " + ", ".join(
        [one] * BATCH
    )
    with raw.cursor() as cursor:
        timer = time.perf_counter()
        for start in range(0, len(rows), BATCH):
            params = [value for row in rows[start : start + BATCH] for value in row]
            cursor.execute(insert_sql, params, prepare=True)
        raw.commit()
        insert_rate = len(rows) / (time.perf_counter() - timer)

    timer = time.perf_counter()
    with raw.cursor() as cursor:
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
        cursor.execute(
            "INSERT INTO weckr_django_monthlyaccountspend (project_id, account_key, month, "
            f"{_COUNTERS}, plan_name, updated_at) "
            f"SELECT project_id, account_id, date_trunc('month', {local})::date, "
            f"{_COUNTER_SUMS}, MAX(plan_name), now() "
            "FROM weckr_django_usageevent WHERE project_id = %s GROUP BY 1, 2, 3",
            [project_id],
        )
        cursor.execute(
            "INSERT INTO weckr_django_monthlyaccountuserspend (project_id, month, account_key, "
            f"user_key, {_COUNTERS}) "
            f"SELECT project_id, date_trunc('month', {local})::date, account_id, "
            f"COALESCE(user_id, ''), {_COUNTER_SUMS} "
            "FROM weckr_django_usageevent WHERE project_id = %s GROUP BY 1, 2, 3, 4",
            [project_id],
        )
        cursor.execute(
            "INSERT INTO weckr_django_dailyaccountusage (project_id, account_key, day, feature, "
            f"{_COUNTERS}) "
            f"SELECT project_id, account_id, {local}::date, COALESCE(feature, ''), "
            f"{_COUNTER_SUMS} "
            "FROM weckr_django_usageevent WHERE project_id = %s GROUP BY 1, 2, 3, 4",
            [project_id],
        )
        for table in (
            "usageevent",
            "monthlyuserspend",
            "dailyusage",
            "monthlyaccountspend",
            "monthlyaccountuserspend",
            "dailyaccountusage",
        ):
            cursor.execute(f"ANALYZE weckr_django_{table}")
    raw.commit()
    return loaded + time.perf_counter() - timer, Baseline(copy=copy_rate, insert=insert_rate)


def rollups_agree(project_id: uuid.UUID) -> bool:
    from django.db import connection

    with connection.cursor() as cursor:
        totals = []
        tables = ("usageevent", "monthlyuserspend", "dailyusage", "monthlyaccountspend")
        for table in tables:
            calls = "COUNT(*)" if table == "usageevent" else "SUM(calls)"
            cursor.execute(
                f"SELECT {calls}, SUM(cost_usd) FROM weckr_django_{table} WHERE project_id = %s",
                [project_id],
            )
            totals.append(cursor.fetchone())
    return all(total == totals[0] for total in totals)  # every event names an account


@dataclass
class Phase:
    """What the clients of one phase saw."""

    seconds: float = 0.0
    events: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    failures: dict[int, int] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds else 0.0

    def percentile(self, share: float) -> float:
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(len(ordered) * share))] if ordered else 0.0


class Connection:
    """One client's keep-alive connection to the server."""

    def __init__(self, port: int, key: str) -> None:
        self.port = port
        self.headers = {"x-api-key": key, "Content-Type": "application/json"}
        self.http = http.client.HTTPConnection("127.0.0.1", port, timeout=120)

    def request(self, method: str, path: str, body: bytes | None = None) -> int:
        for attempt in (1, 2):
            try:
                self.http.request(method, path, body=body, headers=self.headers)
                response = self.http.getresponse()
                response.read()
                return response.status
            except (http.client.RemoteDisconnected, ConnectionResetError):
                self.http.close()  # the server closed an idle connection: reconnect once
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")


#: One request of a client: sends it and returns (HTTP status, events it carried).
Work = Callable[[Connection], tuple[int, int]]


def run_phase(
    port: int,
    key: str,
    works: list[tuple[str, Work]],
    seconds: float,
    ports: dict[str, int] | None = None,
) -> dict[str, Phase]:
    """Each work function on a client thread of its own, in a loop, for ``seconds``;
    one ``Phase`` per kind of work (the clients of a kind summed). A kind named in
    ``ports`` goes to that server's port instead of ``port``."""
    phases = {kind: Phase(seconds=seconds) for kind, _ in works}
    lock = threading.Lock()
    ready = threading.Barrier(len(works) + 1)
    deadline = [0.0]

    def client(kind: str, work: Work) -> None:
        connection = Connection((ports or {}).get(kind, port), key)
        connection.request("GET", "/api/v1/me")  # connected before the clock starts
        latencies: list[float] = []
        events = 0
        failures: dict[int, int] = {}
        ready.wait()
        while time.perf_counter() < deadline[0]:
            started = time.perf_counter()
            status, carried = work(connection)
            latencies.append((time.perf_counter() - started) * 1000)
            if status >= 300:
                failures[status] = failures.get(status, 0) + 1
            else:
                events += carried
        with lock:
            phase = phases[kind]
            phase.latencies_ms.extend(latencies)
            phase.events += events
            for status, count in failures.items():
                phase.failures[status] = phase.failures.get(status, 0) + count

    threads = [threading.Thread(target=client, args=work) for work in works]
    for thread in threads:
        thread.start()
    deadline[0] = time.perf_counter() + seconds
    ready.wait()
    for thread in threads:
        thread.join()
    return phases


def single_events(client: int) -> Work:
    rng = random.Random(f"single-{client}")
    sequence = iter(range(10**9))

    def work(connection: Connection) -> tuple[int, int]:
        body = json.dumps(_event(rng, next(sequence))).encode()
        return connection.request("POST", "/api/v1/log", body), 1

    return work


def batches(client: int) -> Work:
    """Batches of fresh events: one template per client, whose event ids get the
    request's sequence number (building 500 events per request would load the
    client side of this machine more than the server)."""
    rng = random.Random(f"batch-{client}")
    events = []
    for index in range(BATCH):
        event = _event(rng, index)
        event["eventId"] = f"batch-{client}-SEQUENCE-{index}"
        events.append(event)
    template = json.dumps({"events": events}).encode()
    sequence = iter(range(10**9))

    def work(connection: Connection) -> tuple[int, int]:
        body = template.replace(b"SEQUENCE", str(next(sequence)).encode())
        return connection.request("POST", "/api/v1/log/batch", body), BATCH

    return work


def checks(client: int, *, accounts: bool = False) -> Work:
    """``/check`` of random users; with ``accounts``, of each user in their account
    (the user's budget and the account's read together)."""
    rng = random.Random(f"check-{client}")

    def work(connection: Connection) -> tuple[int, int]:
        user = rng.randrange(USERS)
        path = f"/api/v1/check?userId=user-{user}&planName=pro&model=gpt-4o"
        if accounts:
            path += f"&accountId=account-{user // ACCOUNT_SIZE}"
        return connection.request("GET", path), 0

    return work


def follow_up_lag(port: int, key: str, project: Any) -> float:
    """Seconds from a looping user's call being logged to its loop alert, right
    after a phase of full-rate ingest: how far follow-up work lags behind."""
    from weckr_django.models import AlertLog

    user = f"loop-probe-{uuid.uuid4().hex[:8]}"
    event = {
        "userId": user,
        "accountId": "account-probe",  # every event names an account (rollups_agree)
        "planName": "pro",
        "model": "gpt-4o-mini",
        "inputTokens": 60_000,
    }
    started = time.perf_counter()
    status = Connection(port, key).request("POST", "/api/v1/log", json.dumps(event).encode())
    assert status == 201, status
    alerts = AlertLog.objects.filter(project=project, kind=AlertLog.Kind.LOOP, user_id=user)
    while not alerts.exists():
        if time.perf_counter() - started > 300:
            return float("inf")
        time.sleep(0.05)
    return time.perf_counter() - started


def start_server(env: dict[str, str], port: int) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "gunicorn"),
            "-c",
            str(ROOT / "example_project" / "gunicorn.conf.py"),
            "example_project.wsgi",
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while True:
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            connection.request("GET", "/api/v1/ready")
            if connection.getresponse().status == 200:
                return process
        except OSError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("the server did not become ready")
        time.sleep(0.2)


def stop_server(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(60)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def line(name: str, measured: str, goal: str = "", met: bool | None = None) -> None:
    verdict = "" if met is None else f"  goal {goal}: {'met' if met else 'MISSED'}"
    print(f"{name:<42} {measured}{verdict}")


def p99(phase: Phase) -> float:
    return phase.percentile(0.99)


def latency_of(phase: Phase) -> str:
    failed = f", failures {phase.failures}" if phase.failures else ""
    return f"p50 {phase.percentile(0.5):.1f} ms, p99 {p99(phase):.1f} ms{failed}"


def rate_of(phase: Phase) -> str:
    return f"{phase.rate:,.0f} events/s ({latency_of(phase)} per request)"


def main() -> int:
    parser = argparse.ArgumentParser(description="Weckr server benchmark on PostgreSQL.")
    parser.add_argument("--events", type=int, default=1_000_000, help="Rows to bulk-load.")
    parser.add_argument("--seconds", type=float, default=10.0, help="Length of each phase.")
    parser.add_argument("--clients", type=int, default=8, help="Concurrent clients.")
    parser.add_argument(
        "--web-processes",
        type=int,
        nargs="*",
        default=[1, 2, 4],
        help="Batch ingest again with each of these numbers of gunicorn workers.",
    )
    parser.add_argument(
        "--broker", help="Queue follow-up work to this Redis URL instead of running it in-process."
    )
    options = parser.parse_args()

    database = f"weckr_bench_{os.getpid()}"
    queue = f"weckr-bench-{os.getpid()}"
    port = _free_port()
    env = _server_env(database, port, options.broker, queue)
    _admin(f'CREATE DATABASE "{database}"')
    server = None
    try:
        _configure(env)
        from django.core.management import call_command
        from django.db import connection

        from weckr_django.models import ApiKey, Plan, Project, UsageEvent

        call_command("migrate", interactive=False, verbosity=0)
        project = Project.objects.create(name="bench")
        Plan.objects.create(
            project=project,
            name="pro",
            monthly_price_usd=29,
            monthly_cap_usd=Decimal(50),
            account_monthly_cap_usd=Decimal(400),
        )
        _, key = ApiKey.objects.create_key(project, "bench")

        print(f"Bulk-loading {options.events:,} events with COPY and rebuilding rollups...")
        seconds, baseline = bulk_load(project.pk, options.events)
        print(f"  loaded in {seconds:.1f} s; rollups agree: {rollups_agree(project.pk)}")
        connection.close()

        server = start_server(env, port)
        clients = options.clients
        run_phase(port, key, [("log", single_events(-1)), ("batch", batches(-1))], 2.0)  # warm-up
        seconds = options.seconds
        single = run_phase(port, key, [("log", single_events(i)) for i in range(clients)], seconds)
        batch = run_phase(port, key, [("batch", batches(i)) for i in range(clients)], seconds)
        lag = follow_up_lag(port, key, project)
        idle = run_phase(port, key, [("check", checks(i)) for i in range(clients)], seconds)
        works = [("check", checks(50 + i, accounts=True)) for i in range(clients)]
        idle_accounts = run_phase(port, key, works, seconds)
        half = max(1, clients // 2)
        mixed = [("batch", batches(100 + i)) for i in range(half)]
        mixed += [("check", checks(100 + i)) for i in range(half)]
        busy = run_phase(port, key, mixed, seconds)
        # The same, with the checks on a pool of their own (one more gunicorn
        # process, as a proxy routing /api/v1/check to it would have them).
        check_port = _free_port()
        check_pool = start_server(
            {**env, "WECKR_BIND": f"127.0.0.1:{check_port}", "WEB_CONCURRENCY": "1"}, check_port
        )
        mixed = [("batch", batches(200 + i)) for i in range(half)]
        mixed += [("check", checks(200 + i)) for i in range(half)]
        split = run_phase(port, key, mixed, seconds, ports={"check": check_port})
        stop_server(check_pool)
        stop_server(server)
        server = None
        scaling = {}
        for processes in options.web_processes:
            server = start_server({**env, "WEB_CONCURRENCY": str(processes)}, port)
            works = [("batch", batches(1000 * processes + i)) for i in range(clients)]
            scaling[processes] = run_phase(port, key, works, seconds)["batch"]
            stop_server(server)
            server = None

        total = UsageEvent.objects.filter(project=project).count()
        print()
        print(
            f"Events stored at the end: {total:,}. Server: gunicorn with "
            f"example_project/gunicorn.conf.py on {os.cpu_count()} CPUs; {clients} clients "
            f"on keep-alive sockets, {options.seconds:g} s per phase."
        )
        follow_ups = f"queued to {options.broker}" if options.broker else "in the web workers"
        print(f"Follow-up work (loop detection, budget alerts): {follow_ups}.")
        print()
        line("PostgreSQL COPY into the loaded table", f"{baseline.copy:,.0f} rows/s")
        line("PostgreSQL INSERT, 500 rows per statement", f"{baseline.insert:,.0f} rows/s")
        line("POST /api/v1/log, 1 event per request", rate_of(single["log"]))
        line("POST /api/v1/log/batch, 500 events", rate_of(batch["batch"]))
        ratio = batch["batch"].rate / baseline.copy
        line("batch ingest ÷ COPY", f"{ratio:.3f}", "≥ 0.5", ratio >= 0.5)
        line(
            "single-event ingest",
            f"{single['log'].rate:,.0f} events/s",
            "≥ 1,000",
            single["log"].rate >= 1000,
        )
        line(
            "loop alert lag after full-rate ingest",
            f"{lag:.1f} s",
            "a few seconds (≤ 5 s)",
            lag <= 5,
        )
        line(
            "GET /api/v1/check, no writes",
            latency_of(idle["check"]),
            "p99 ≤ 10 ms",
            p99(idle["check"]) <= 10,
        )
        ratio = p99(idle_accounts["check"]) / p99(idle["check"])
        line(
            "GET /api/v1/check, user + account budgets",
            f"{latency_of(idle_accounts['check'])}; p99 {ratio:.2f}x the user-only check",
            "the user-only check's budget (p99 ratio ≤ 1.25)",
            ratio <= 1.25,
        )
        line(
            "GET /api/v1/check while batches run",
            latency_of(busy["check"]),
            "p99 ≤ 25 ms",
            p99(busy["check"]) <= 25,
        )
        line("  batches meanwhile", rate_of(busy["batch"]))
        line(
            "/check on its own pool while batches run",
            latency_of(split["check"]),
            "p99 ≤ 25 ms",
            p99(split["check"]) <= 25,
        )
        line("  batches meanwhile", rate_of(split["batch"]))
        for processes, phase in scaling.items():
            line(f"batch ingest, {processes} web process(es)", rate_of(phase))
        print(f"Rollups still agree with events: {rollups_agree(project.pk)}")
    finally:
        from django.db import connections

        if server is not None:
            stop_server(server)
        connections.close_all()
        if options.broker:
            _drop_queue(options.broker, queue)
        _admin(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
    return 0


if __name__ == "__main__":
    sys.exit(main())
