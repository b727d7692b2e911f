"""The dashboard in a real headless Chromium (Debian's /usr/bin/chromium, driven by
Playwright; no browser is downloaded): log in through the admin, open every page,
compare figures with the database, save a cap, send a test alert, take screenshots."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.contrib.auth.models import User
from django.core import mail
from pytest_django.live_server_helper import LiveServer

from tests.dashboard.figures import amount, dollars
from tests.dashboard.traffic import expected_figures, generate_month, make_project
from weckr_django import overrides
from weckr_django.models import AlertLog, Plan

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
PAGES = (
    ("overview", "/weckr/", "Overview"),
    ("users", "/weckr/users/", "Users"),
    ("features", "/weckr/features/", "Features"),
    ("models", "/weckr/models/", "Models"),
    ("agents", "/weckr/agents/", "Agent runs"),
    ("recommendations", "/weckr/recommendations/", "Recommendations"),
    ("alerts", "/weckr/alerts/", "Alerts"),
    ("settings", "/weckr/settings/", "Settings"),
)

pytestmark = [
    pytest.mark.browser,
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(
        not CHROMIUM.exists(),
        reason="needs Debian's headless Chromium at /usr/bin/chromium "
        "(apt-get install chromium; .ci/run installs it)",
    ),
]


@pytest.fixture(autouse=True)
def price_overrides() -> Iterator[None]:
    overrides.install()
    yield
    overrides.clear()


@pytest.fixture
def screenshots(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("WECKR_SCREENSHOTS") or tmp_path / "screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def test_dashboard_in_chromium(live_server: LiveServer, screenshots: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    project = make_project()
    generate_month(project)
    User.objects.create_superuser("founder", "founder@example.com", "s3cret-pass")
    expected = expected_figures(project)
    dave_cost, dave_calls, _ = expected.users["dave"]

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": 1280, "height": 900})
            page = context.new_page()
            page.goto(f"{live_server.url}/admin/login/?next=/weckr/")
            page.fill("#id_username", "founder")
            page.fill("#id_password", "s3cret-pass")
            page.click("input[type=submit]")
            page.wait_for_url(f"{live_server.url}/weckr/")

            for name, path, heading in PAGES:
                page.goto(f"{live_server.url}{path}")
                expect(page.locator("h1")).to_contain_text(heading)
                page.screenshot(path=str(screenshots / f"{name}.png"), full_page=True)

            page.goto(f"{live_server.url}/weckr/")
            expect(page.locator("#card-cost .value")).to_have_text(dollars(expected.cost))
            expect(page.locator("#card-revenue .value")).to_have_text(dollars(expected.revenue))
            expect(page.locator("#card-unprofitable .value")).to_have_text("1")
            expect(page.locator("#loss-banner")).to_be_visible()
            assert page.locator("svg.chart polyline").count() == 2

            page.goto(f"{live_server.url}/weckr/users/")
            dave = page.locator('tr[data-user="dave"] td')
            expect(dave.nth(3)).to_have_text(amount(dave_cost, 4))
            expect(dave.nth(5)).to_have_text(str(dave_calls))
            expect(dave.nth(6)).to_have_text("unprofitable")
            page.click('tr[data-user="dave"] a')
            expect(page.locator("#cap-status")).to_contain_text("Cap reached")
            page.screenshot(path=str(screenshots / "user-dave.png"), full_page=True)

            page.goto(f"{live_server.url}/weckr/models/")
            expect(page.locator("#unpriced-banner")).to_contain_text("acme-llm-1")

            page.goto(f"{live_server.url}/weckr/settings/?plan=pro&cap=12.5&action=downgrade")
            expect(page.locator("#prefill-banner")).to_be_visible()
            page.click("#save-settings")
            expect(page.locator(".messages")).to_contain_text("Settings saved.")

            page.click("#send-test-alert")
            page.wait_for_url(f"{live_server.url}/weckr/alerts/")
            expect(page.locator(".messages")).to_contain_text("Test alert: Sent (email).")
            expect(page.locator("#alerts-table tbody tr").first).to_contain_text("Test alert")
            page.screenshot(path=str(screenshots / "alerts-after-test.png"), full_page=True)

            phone = context.new_page()  # same session, a phone-sized viewport
            phone.set_viewport_size({"width": 390, "height": 844})
            phone.goto(f"{live_server.url}/weckr/")
            expect(phone.locator("#card-margin")).to_be_visible()
            phone.screenshot(path=str(screenshots / "overview-phone.png"), full_page=True)
        finally:
            browser.close()

    pro = Plan.objects.get(project=project, name="pro")
    assert (str(pro.monthly_cap_usd), pro.cap_action) == ("12.5000", "downgrade")
    assert AlertLog.objects.filter(project=project, kind=AlertLog.Kind.TEST).count() == 1
    # Budget alerts for the generated traffic go out too (on commit, with a live server).
    test_mails = [message for message in mail.outbox if "Test alert" in message.subject]
    assert [message.to for message in test_mails] == [["ops@example.com"]]
    assert sorted(path.name for path in screenshots.glob("*.png")) == sorted(
        [f"{name}.png" for name, _, _ in PAGES]
        + ["user-dave.png", "alerts-after-test.png", "overview-phone.png"]
    )
