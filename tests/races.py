"""Run ``tests.cap_race`` in subprocesses and the Weckr server as a real process.

Shared by the SQLite race tests of the main suite, the PostgreSQL / Redis ones of the
integration suite and ``bench/bench_caps.py``.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Totals:
    spend: Decimal
    calls: int
    store_recorded: Decimal
    store_held: Decimal
    reservations: int
    per_call: Decimal


class Racers:
    """The harness's commands against one database, in subprocesses."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = {**os.environ, "PYTHONPATH": str(ROOT), **env}
        self.project = ""
        self.key = ""

    def run(self, *args: str, timeout: float = 300) -> dict[str, Any]:
        done = subprocess.run(
            [sys.executable, "-m", "tests.cap_race", *args],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"cap_race {args[0]} failed:\n{done.stderr[-4000:]}")
        result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
        return result

    def setup(self, cap: Decimal | str, action: str = "block") -> None:
        made = self.run("setup", "--cap", str(cap), "--action", action)
        self.project, self.key = made["project"], made["key"]
        self.env["WECKR_DEFAULT_PROJECT"] = self.project

    def race(self, processes: int, threads: int, *options: str) -> list[dict[str, Any]]:
        """``processes`` racers of ``threads`` threads each, started together."""
        command = [sys.executable, "-m", "tests.cap_race", "race", "--threads", str(threads)]
        running = [
            subprocess.Popen(
                [*command, *options],
                cwd=ROOT,
                env=self.env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(processes)
        ]
        results = []
        for process in running:
            out, err = process.communicate(timeout=300)
            if process.returncode != 0:
                raise RuntimeError(f"a racer failed:\n{err[-4000:]}")
            result = json.loads(out.strip().splitlines()[-1])
            if result["errors"]:
                raise RuntimeError(f"a racer's call failed: {result['errors']}\n{err[-4000:]}")
            results.append(result)
        return results

    def start_hung_caller(self) -> subprocess.Popen[str]:
        """A racer stuck in its provider call, its reservation made: kill it."""
        process = subprocess.Popen(
            [sys.executable, "-m", "tests.cap_race", "hang"],
            cwd=ROOT,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert process.stdout is not None
        line = process.stdout.readline()
        if '"calling": true' not in line:
            process.kill()
            _, err = process.communicate(timeout=10)
            raise RuntimeError(f"the caller did not start its call:\n{err}")
        return process

    def totals(self) -> Totals:
        found = self.run("totals", "--project", self.project)
        return Totals(
            spend=Decimal(found["spend"]),
            calls=found["calls"],
            store_recorded=Decimal(found["store_recorded"]),
            store_held=Decimal(found["store_held"]),
            reservations=found["reservations"],
            per_call=Decimal(found["per_call"]),
        )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def server_process(env: Mapping[str, str]) -> Iterator[str]:
    """Django's threaded server on a free port, DEBUG off, as its own process; the
    base URL. (A production deployment runs a WSGI server in front of the same app.)"""
    port = free_port()
    # The server logs every request: to a file, as a pipe nobody reads fills up and
    # then blocks the server mid-request.
    with tempfile.TemporaryFile(mode="w+") as log:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "django",
                "runserver",
                f"127.0.0.1:{port}",
                "--noreload",
                "--skip-checks",
            ],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT), **env},
            stdout=subprocess.DEVNULL,
            stderr=log,
            text=True,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    httpx.get(f"{url}/api/v1/me", timeout=1)
                    break
                except httpx.TransportError:
                    if process.poll() is not None or time.monotonic() > deadline:
                        log.seek(0)
                        raise RuntimeError(
                            f"the server did not start:\n{log.read()[-4000:]}"
                        ) from None
                    time.sleep(0.2)
            yield url
        finally:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
