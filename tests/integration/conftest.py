"""Fixtures of the integration suite: a real Celery worker subprocess against the
test run's PostgreSQL database and Redis queue.

These tests need ``--ds=tests.settings_integration``; under the default SQLite
settings they are skipped.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.core.management import call_command
from django.db import connections

from weckr_core.records import UsageRecord

ROOT = Path(__file__).resolve().parents[2]


def _on_postgres() -> bool:
    return bool(settings.DATABASES["default"]["ENGINE"].endswith("postgresql"))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    skip = pytest.mark.skip(
        reason="integration: run with `pytest tests/integration --ds=tests.settings_integration`"
    )
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.integration)
            if not _on_postgres():
                item.add_marker(skip)


def _admin_connection() -> Any:
    import psycopg

    db = settings.DATABASES["default"]
    return psycopg.connect(
        host=db["HOST"],
        port=db["PORT"],
        user=db["USER"],
        password=db["PASSWORD"] or None,
        dbname="postgres",
        autocommit=True,
    )


@pytest.fixture(scope="session")
def django_db_setup(django_db_blocker: Any) -> Iterator[None]:
    """A fresh database for this run (named by the run token), migrated, dropped at the end."""
    from psycopg import errors, sql

    name = settings.DATABASES["default"]["NAME"]
    with _admin_connection() as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        with django_db_blocker.unblock():
            call_command("migrate", verbosity=0)
        yield
    finally:
        with django_db_blocker.unblock():
            connections.close_all()
        with _admin_connection() as admin:
            # Bounded: on a shared server, another session can hold DROP DATABASE up.
            admin.execute("SET statement_timeout = '30s'")
            try:
                admin.execute(
                    sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
                )
            except errors.QueryCanceled:
                warnings.warn(f"Could not drop test database {name} in time.", stacklevel=1)


def subprocess_env() -> dict[str, str]:
    """Environment of worker subprocesses: same settings and run token, so same database."""
    env = dict(os.environ)
    env.update(
        DJANGO_SETTINGS_MODULE="tests.settings_integration",
        WECKR_IT_TOKEN=os.environ["WECKR_IT_TOKEN"],
        PYTHONPATH=str(ROOT),
    )
    return env


class CeleryWorker:
    """``celery worker`` in a subprocess, on this run's queue."""

    def __init__(self) -> None:
        self.process: subprocess.Popen[str] | None = None
        self.log: list[str] = []
        self._ready = threading.Event()

    def start(self, timeout: float = 60) -> None:
        assert self.process is None
        self._ready.clear()
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "tests.celery_app",
                "worker",
                "--pool=solo",
                "--concurrency=1",
                "-Q",
                getattr(settings, "CELERY_TASK_DEFAULT_QUEUE", "celery"),
                "--hostname",
                f"weckr-it-{os.environ['WECKR_IT_TOKEN']}-{time.monotonic_ns()}@%h",
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
                "--loglevel=INFO",
            ],
            cwd=ROOT,
            env=subprocess_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        threading.Thread(target=self._read, args=(self.process,), daemon=True).start()
        if not self._ready.wait(timeout):
            self.stop()
            raise RuntimeError("Celery worker did not start:\n" + "".join(self.log[-40:]))

    def _read(self, process: subprocess.Popen[str]) -> None:
        assert process.stdout is not None
        for line in process.stdout:
            self.log.append(line)
            if " ready." in line:
                self._ready.set()

    def stop(self, timeout: float = 30) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        process.send_signal(signal.SIGTERM)  # warm shutdown: finish the current task
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture
def celery_worker() -> Iterator[CeleryWorker]:
    """A stopped worker the test starts (and may stop); always stopped at the end."""
    worker = CeleryWorker()
    try:
        yield worker
    finally:
        worker.stop()


def wait_until(condition: Callable[[], bool], timeout: float = 60, interval: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval)
    return condition()


def usage_records(count: int, poisoned_at: int | None = None) -> list[UsageRecord]:
    """``count`` small OpenAI calls of seven users with fresh event ids; the one at
    ``poisoned_at`` carries a NUL character in a tag, which PostgreSQL cannot store."""
    return [
        UsageRecord(
            event_id=str(uuid.uuid4()),
            user_id=f"user-{n % 7}",
            provider="openai",
            model="gpt-4o-mini",
            input_tokens=100,
            output_tokens=20,
            tags=("bad\x00tag",) if n == poisoned_at else ("ok",),
        )
        for n in range(count)
    ]
