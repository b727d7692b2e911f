"""In-process delivery, end to end: ``DjangoBackend.record`` on the caller's side to
rows committed in PostgreSQL, with thread delivery and with Celery workers.

Run: ``.venv/bin/python -m bench.bench_delivery [--events 20000] [--workers 1 2 4]``.

Creates a scratch database on 127.0.0.1:5432 and, for Celery, a queue of its own on
the Redis at ``--broker`` (default redis://127.0.0.1:6379/15). Each mode runs in a
child process with the example project's settings, as a deployment would: 8 threads
call ``backend.record`` for ``--events`` usage events (5,000 users), and the clock
stops when every event is a row. Thread delivery ingests on the backend's own
thread; Celery delivery hands batches to ``record_usage`` and ``--workers`` worker
processes (``celery -A example_project worker --pool=solo``, started before the
clock) ingest them. Prints events per second for each, with the rollups checked
against the events. The database and the queue are removed at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from bench.bench_server import PG, ROOT, USERS, _admin, _drop_queue, rollups_agree

THREADS = 8
MODELS = (("openai", "gpt-4o"), ("openai", "gpt-4o-mini"), ("anthropic", "claude-sonnet-4"))


def _env(database: str, broker: str | None, queue: str) -> dict[str, str]:
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "DJANGO_SETTINGS_MODULE": "example_project.settings",
        "DATABASE_URL": f"postgres://{PG['user']}@{PG['host']}:{PG['port']}/{database}",
        "WECKR_PROJECT": "bench",
    }
    env.pop("CELERY_BROKER_URL", None)
    if broker:
        env["CELERY_BROKER_URL"] = broker
        env["CELERY_TASK_DEFAULT_QUEUE"] = queue
    return env


def child(mode: str, events: int) -> None:
    """Record ``events`` from ``THREADS`` threads; print the seconds until all are rows."""
    import django

    django.setup()
    from weckr_core.records import UsageRecord
    from weckr_django.backend import DjangoBackend
    from weckr_django.models import Project, UsageEvent

    project = Project.objects.get(name="bench")
    backend = DjangoBackend(delivery="celery" if mode.startswith("celery") else "thread")
    per_thread = events // THREADS

    def produce(index: int) -> None:
        rng = random.Random(index)
        for i in range(per_thread):
            provider, model = rng.choice(MODELS)
            record = UsageRecord(
                event_id=f"{mode}-{index}-{i}",
                user_id=f"user-{rng.randrange(USERS)}",
                plan="pro",
                feature="chat",
                provider=provider,
                model=model,
            )
            record.input_tokens = rng.randint(200, 8000)
            record.output_tokens = rng.randint(50, 1500)
            backend.record(record)

    started = time.perf_counter()
    threads = [threading.Thread(target=produce, args=(i,)) for i in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    recorded = time.perf_counter() - started
    stored = UsageEvent.objects.filter(project=project, event_id__startswith=f"{mode}-")
    total = per_thread * THREADS
    while stored.count() < total:
        if time.perf_counter() - started > 600:
            raise RuntimeError(f"only {stored.count()} of {total} stored after 10 minutes")
        time.sleep(0.05)
    seconds = time.perf_counter() - started
    print(json.dumps({"events": total, "seconds": seconds, "recorded": recorded}))


def run_mode(
    mode: str, env: dict[str, str], events: int, workers: int, queue: str
) -> dict[str, Any]:
    started: list[subprocess.Popen[bytes]] = []
    try:
        for index in range(workers):
            started.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "celery",
                        "-A",
                        "example_project",
                        "worker",
                        "--pool=solo",
                        "-Q",
                        queue,
                        "--hostname",
                        f"bench-{os.getpid()}-{index}@%h",
                        "--without-gossip",
                        "--without-mingle",
                        "--without-heartbeat",
                        "--loglevel=WARNING",
                    ],
                    cwd=ROOT,
                    env=env,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        if workers:
            time.sleep(6)  # the workers connect and import the app
        output = subprocess.run(
            [
                sys.executable,
                "-m",
                "bench.bench_delivery",
                "--child",
                mode,
                "--events",
                str(events),
            ],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        result: dict[str, Any] = json.loads(output.strip().splitlines()[-1])
        return result
    finally:
        for process in started:
            process.terminate()
        for process in started:
            process.wait(30)


def main() -> int:
    parser = argparse.ArgumentParser(description="Weckr in-process delivery benchmark.")
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--broker", default="redis://127.0.0.1:6379/15")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.child:
        child(options.child, options.events)
        return 0

    database = f"weckr_bench_delivery_{os.getpid()}"
    queue = f"weckr-bench-delivery-{os.getpid()}"
    _admin(f'CREATE DATABASE "{database}"')
    try:
        env = _env(database, None, queue)
        subprocess.run(
            [sys.executable, str(Path(ROOT) / "example_project" / "manage.py"), "migrate", "-v0"],
            env=env,
            check=True,
        )
        for name in ("DJANGO_SETTINGS_MODULE", "DATABASE_URL", "WECKR_PROJECT"):
            os.environ[name] = env[name]
        import django

        django.setup()
        from django.db import connection

        from weckr_django.models import Plan, Project

        project = Project.objects.create(name="bench")
        Plan.objects.create(project=project, name="pro", monthly_price_usd=29)
        connection.close()

        print(f"{options.events:,} events from {THREADS} threads, on {os.cpu_count()} CPUs:")
        result = run_mode("thread", env, options.events, 0, queue)
        rate = result["events"] / result["seconds"]
        print(
            f"  thread delivery            {rate:8,.0f} events/s  goal ≥ 5,000: "
            f"{'met' if rate >= 5000 else 'MISSED'}"
        )
        celery_env = _env(database, options.broker, queue)
        for workers in options.workers:
            result = run_mode(f"celery{workers}", celery_env, options.events, workers, queue)
            rate = result["events"] / result["seconds"]
            print(
                f"  Celery, {workers} worker(s)         {rate:8,.0f} events/s  goal ≥ 5,000: "
                f"{'met' if rate >= 5000 else 'MISSED'}"
            )
        print(f"Rollups agree with events: {rollups_agree(project.pk)}")
    finally:
        from django.db import connections

        connections.close_all()
        _drop_queue(options.broker, queue)
        _admin(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
    return 0


if __name__ == "__main__":
    sys.exit(main())
