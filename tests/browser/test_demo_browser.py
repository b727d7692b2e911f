"""``make demo`` on a day early and a day late in a month, every dashboard page in
Chromium: the demo's own server runs in a process whose clock ``time-machine`` moves
(both days are in the future, so the session cookie the server sets is still valid
for the browser), loads its traffic as of that day and serves it; the test signs in,
follows the printed dashboard link, opens every page and takes a screenshot of each
(``WECKR_SCREENSHOTS`` keeps them)."""

from __future__ import annotations

import http.client
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.browser.test_dashboard_browser import CHROMIUM, CHROMIUM_ARGS
from tests.commands.test_demo import ROOT, demo_env

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's headless Chromium"),
]

_SERVE = """
import runpy, sys, time_machine
time_machine.travel(sys.argv[1], tick=True).start()
sys.argv = ["demo.py", "--port", sys.argv[2]]
runpy.run_path("example_project/demo.py", run_name="__main__")
"""

#: (page, link text in the navigation or None for the landing page, a text it shows,
#: whether it shows the month chosen: advice and settings are about the month under way)
PAGES = (
    ("overview", None, "Daily AI cost against revenue", True),
    ("users", "Users", "ada", True),
    ("accounts", "Accounts", "acme-labs", True),
    ("features", "Features", "research-agent", True),
    ("models", "Models", "claude-sonnet-4", True),
    ("agents", "Agents", "stopped by loop guard", True),
    ("recommendations", "Recommendations", "Plan pricing", False),
    ("alerts", "Alerts", "stopped", False),  # the log, newest first
    ("billing", "Billed", "billed", True),
    ("settings", "Settings", "Settings", False),
)


def _in_a_future_month(day: int) -> datetime:
    """10:00 UTC on ``day`` of the month after next."""
    today = date.today()
    month = today.month + 2
    year = today.year + (month - 1) // 12
    return datetime(year, (month - 1) % 12 + 1, day, 10, tzinfo=UTC)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def screenshots(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("WECKR_SCREENSHOTS") or tmp_path / "screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@contextmanager
def _serve_demo(moment: datetime, folder: Path) -> Iterator[tuple[int, str]]:
    """The demo serving as of ``moment``; yields its port and what it printed."""
    port = _free_port()
    log = folder / "demo.log"
    with log.open("w") as output:
        server = subprocess.Popen(
            [sys.executable, "-c", _SERVE, moment.isoformat(), str(port)],
            cwd=ROOT,
            env=demo_env(folder / "demo.sqlite3"),
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                connection.request("GET", "/admin/login/")
                if connection.getresponse().status == 200:
                    break
            except OSError:
                pass
            assert server.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.3)
        yield port, log.read_text()
    finally:
        server.terminate()
        server.wait(30)


@pytest.mark.parametrize(
    ("label", "moment"),
    [("first-week", _in_a_future_month(3)), ("last-week", _in_a_future_month(26))],
)
def test_every_demo_page_early_and_late_in_a_month(
    label: str, moment: datetime, tmp_path: Path, screenshots: Path
) -> None:
    from playwright.sync_api import expect, sync_playwright

    with _serve_demo(moment, tmp_path) as (port, printed):
        link = re.search(r"Dashboard: (\S+)", printed)
        assert link is not None, printed
        dashboard = link.group(1).replace("127.0.0.1:8000", f"127.0.0.1:{port}")
        month = moment.date().replace(day=1)
        if moment.day < 20:  # early in a month the story is the previous month's
            month = (month - timedelta(days=1)).replace(day=1)
            assert f"?month={month:%Y-%m}" in dashboard
        else:
            assert "?month=" not in dashboard
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            errors: list[str] = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            path = dashboard.split(f":{port}", 1)[1]
            page.goto(f"http://127.0.0.1:{port}/admin/login/?next={path}")
            page.fill("#id_username", "admin")
            page.fill("#id_password", "weckr-demo")
            page.click("input[type=submit]")
            page.wait_for_url(dashboard)
            shown = f"{month:%B %Y}"
            for name, link_text, text, monthly in PAGES:
                if link_text is not None:
                    page.get_by_role("link", name=link_text, exact=True).first.click()
                    page.wait_for_load_state()
                expect(page.locator("body")).to_contain_text(text, ignore_case=True)
                if monthly:
                    expect(page.locator("body")).to_contain_text(shown)
                _no_error_page(page)
                page.screenshot(path=str(screenshots / f"demo-{label}-{name}.png"), full_page=True)
                if name in ("users", "accounts"):  # and the first one's own page
                    page.locator("table a").first.click()
                    page.wait_for_load_state()
                    expect(page.locator("body")).to_contain_text(shown)
                    _no_error_page(page)
                    page.screenshot(
                        path=str(screenshots / f"demo-{label}-{name}-detail.png"), full_page=True
                    )
                    page.go_back()
            browser.close()
        assert errors == []


def _no_error_page(page: Any) -> None:
    body = page.locator("body").inner_text()
    assert "Traceback" not in body and "Server Error" not in body, body[:2000]
    assert "Page not found" not in body, body[:2000]
