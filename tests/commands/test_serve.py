"""``make serve``: the example project under gunicorn as in production (DEBUG off,
static files served, persistent connections), on a fresh SQLite database."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, dict[str, str]]]:
    folder = tmp_path_factory.mktemp("serve")
    port = free_port()
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("DJANGO_SETTINGS_MODULE", "CELERY_BROKER_URL", "DJANGO_DEBUG")
    }
    env.update(
        DATABASE_URL=f"sqlite:///{folder / 'weckr.sqlite3'}",
        DJANGO_STATIC_ROOT=str(folder / "static"),
        WECKR_BIND=f"127.0.0.1:{port}",
        WEB_CONCURRENCY="2",
        WECKR_PROJECT="Served app",
    )
    process = subprocess.Popen(
        ["make", "--no-print-directory", "serve"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=(folder / "serve.log").open("w"),
        start_new_session=True,  # make, gunicorn and its workers: one process group
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{url}/api/v1/ready", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError((folder / "serve.log").read_text()[-4000:])
            time.sleep(0.3)
        yield url, env
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(60)


def manage(env: dict[str, str], *args: str) -> str:
    result = subprocess.run(
        [sys.executable, str(ROOT / "example_project" / "manage.py"), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_the_server_runs_without_debug_and_serves_static_files(
    served: tuple[str, dict[str, str]],
) -> None:
    url, _ = served
    with httpx.Client(base_url=url) as client:
        assert client.get("/api/v1/health").json() == {"status": "ok"}
        stylesheet = client.get("/static/admin/css/base.css")
        assert stylesheet.status_code == 200
        assert "text/css" in stylesheet.headers["content-type"]
        missing = client.get("/no-such-page")
        assert missing.status_code == 404
        assert "URLconf" not in missing.text  # Django's debug page is off
        assert client.get("/weckr/").status_code == 302  # the dashboard asks for a login


def test_a_key_made_with_the_management_command_records_usage(
    served: tuple[str, dict[str, str]],
) -> None:
    url, env = served
    key = manage(env, "weckr_project", "create", "Served app").strip().splitlines()[-1]
    manage(env, "weckr_plan", "set", "Served app", "pro", "--price", "29", "--cap", "5")
    event = {"eventId": "serve-1", "userId": "42", "model": "gpt-4o", "inputTokens": 1000}
    # One keep-alive connection for several requests, as the SDKs keep theirs.
    with httpx.Client(base_url=url, headers={"x-api-key": key}) as client:
        first = client.post("/api/v1/log", content=json.dumps(event))
        again = client.post("/api/v1/log", content=json.dumps(event))
        check = client.get("/api/v1/check", params={"userId": "42", "planName": "pro"})
    assert first.status_code == 201, first.text
    assert again.json()["duplicate"] is True
    assert check.status_code == 200, check.text
    assert check.json()["allowed"] is True
    assert check.json()["currentSpend"] > 0  # the logged call, committed before the answer
