"""The dashboard in a real headless Chromium (Debian's /usr/bin/chromium, driven by
Playwright; no browser is downloaded): log in through the admin, open every page,
compare figures with the database, save a cap, send a test alert, take screenshots."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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


def log_in(page: Any, live_server: LiveServer, path: str) -> None:
    """Sign in through the admin as the founder, landing on ``path``."""
    page.goto(f"{live_server.url}/admin/login/?next={path}")
    page.fill("#id_username", "founder")
    page.fill("#id_password", "s3cret-pass")
    page.click("input[type=submit]")
    page.wait_for_url(f"{live_server.url}{path}")


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
            log_in(page, live_server, "/weckr/")

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


def test_accounts_in_chromium(live_server: LiveServer, screenshots: Path) -> None:
    """A B2B project: the Accounts page lists the customer who loses money first,
    its page shows its users' shares and its cap, the Users page shows them as paid
    by the account, and an account cap saved on the Settings page holds."""
    from playwright.sync_api import expect, sync_playwright

    from tests.django.helpers import make_record
    from weckr_django.ingest import ingest_records
    from weckr_django.models import Project

    project = Project.objects.create(name="B2B")
    Plan.objects.create(
        project=project,
        name="team",
        monthly_price_usd=99,
        account_monthly_cap_usd=150,
    )
    Plan.objects.create(
        project=project, name="seats", monthly_price_usd=20, billing=Plan.Billing.PER_SEAT
    )
    ingest_records(
        project,
        [
            # gpt-4o input at $2.50 per million tokens: $50 a call for the power user.
            make_record(
                "a1", user_id="power", plan="team", account_id="acme", input_tokens=20_000_000
            ),
            make_record(
                "a2", user_id="power", plan="team", account_id="acme", input_tokens=20_000_000
            ),
            make_record("a3", user_id="ann", plan="team", account_id="acme", feature="search"),
            make_record("n1", user_id="nia", plan="seats", account_id="northwind"),
            make_record("n2", user_id="ned", plan="seats", account_id="northwind"),
        ],
    )
    User.objects.create_superuser("founder", "founder@example.com", "s3cret-pass")

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            log_in(page, live_server, "/weckr/")
            expect(page.locator("#loss-banner")).to_contain_text("1 account losing money")

            page.click("nav >> text=Accounts")
            expect(page.locator("h1")).to_contain_text("Accounts")
            rows = page.locator("#accounts-table tbody tr")
            expect(rows.nth(0)).to_have_attribute("data-account", "acme")
            acme = page.locator('tr[data-account="acme"] td')
            expect(acme.nth(2)).to_have_text("2")  # seats: its active users
            expect(acme.nth(3)).to_have_text("99.00")
            expect(acme.nth(7)).to_have_text("unprofitable")
            northwind = page.locator('tr[data-account="northwind"] td')
            expect(northwind.nth(3)).to_have_text("40.00")  # 2 seats at $20
            page.screenshot(path=str(screenshots / "accounts.png"), full_page=True)

            with page.expect_download() as download:
                page.click("p.export >> text=Download CSV")
            saved = Path(download.value.path()).read_text()
            assert saved.splitlines()[0].startswith("account_id,plan,billing,seats")
            assert saved.splitlines()[1].startswith("acme,team,flat,2,")

            page.select_option("#f-status", "profitable")
            page.click("form.filters button")
            expect(page.locator("#accounts-table tbody tr")).to_have_count(1)
            expect(page.locator("#accounts-table tbody tr")).to_have_attribute(
                "data-account", "northwind"
            )

            page.goto(f"{live_server.url}/weckr/accounts/")
            page.click('tr[data-account="acme"] a')
            expect(page.locator("#cap-status")).to_contain_text(
                "of a $150.00 monthly account cap (66.7%), all its users together"
            )
            expect(page.locator("#cap-status")).to_contain_text("Under the account cap.")
            users = page.locator("#account-users tbody tr")
            expect(users.nth(0)).to_have_attribute("data-user", "power")
            expect(page.locator("#account-features")).to_contain_text("search")
            page.screenshot(path=str(screenshots / "account-acme.png"), full_page=True)

            page.goto(f"{live_server.url}/weckr/users/")
            power = page.locator('tr[data-user="power"] td')
            expect(power.nth(6)).to_have_text("paid by account")
            expect(power.nth(4)).to_contain_text("% of account")

            page.goto(f"{live_server.url}/weckr/settings/")
            row = page.locator("#plans-table tbody tr", has=page.locator('input[value="team"]'))
            row.locator('input[name$="account_monthly_cap_usd"]').fill("120")
            page.click("#save-settings")
            expect(page.locator(".messages")).to_contain_text("Settings saved.")
        finally:
            browser.close()

    team = Plan.objects.get(project=project, name="team")
    assert team.account_monthly_cap_usd == 120
    assert team.billing == Plan.Billing.FLAT
    assert Plan.objects.get(project=project, name="seats").billing == Plan.Billing.PER_SEAT


def test_month_selector_in_chromium(live_server: LiveServer, screenshots: Path) -> None:
    """Choosing last month in the header's selector shows last month on every page,
    until this month is chosen again; an empty state for a user without calls; the
    free tier apart from losses; and a customer under their username."""
    from datetime import UTC, datetime, timedelta

    from playwright.sync_api import expect, sync_playwright

    from tests.django.helpers import make_record
    from weckr_django.ingest import ingest_records
    from weckr_django.models import Project

    now = datetime.now(UTC)
    last_month = now.replace(day=1) - timedelta(days=2)
    project = Project.objects.create(name="Months")
    Plan.objects.create(project=project, name="pro", monthly_price_usd=29)
    Plan.objects.create(project=project, name="free", monthly_price_usd=0)
    grace = User.objects.create_user("grace@example.com")  # a customer of the app
    ingest_records(
        project,
        [
            make_record("old", user_id="autumn", plan="pro", feature="legacy", when=last_month),
            make_record("new", user_id="winter", plan="pro", feature="fresh", when=now),
            make_record("gratis", user_id=str(grace.pk), plan="free", when=now),
        ],
    )
    User.objects.create_superuser("founder", "founder@example.com", "s3cret-pass")

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            log_in(page, live_server, "/weckr/users/")
            expect(page.locator('tr[data-user="winter"]')).to_be_visible()

            page.select_option("#month-select", f"{last_month:%Y-%m}")
            page.wait_for_url(f"**/weckr/users/?month={last_month:%Y-%m}")
            expect(page.locator("h1")).to_contain_text(f"{last_month:%B %Y}")
            expect(page.locator('tr[data-user="autumn"]')).to_be_visible()
            expect(page.locator('tr[data-user="winter"]')).to_have_count(0)
            page.click("nav >> text=Features")
            expect(page.locator("main")).to_contain_text("legacy")
            page.screenshot(path=str(screenshots / "features-last-month.png"), full_page=True)

            page.select_option("#month-select", label=f"{now:%B %Y}")
            expect(page.locator("main")).to_contain_text("fresh")

            # A user with no calls this month: an empty page, not a 404.
            page.goto(f"{live_server.url}/weckr/users/detail/?user=autumn")
            expect(page.locator("#no-calls")).to_contain_text("No calls from autumn in")

            # The free tier apart from losses, under the customer's username.
            page.goto(f"{live_server.url}/weckr/")
            expect(page.locator("#free-tier")).to_contain_text("1 user")
            expect(page.locator("#free-heaviest")).to_contain_text("grace@example.com")
            expect(page.locator("#loss-banner")).to_have_count(0)
            page.goto(f"{live_server.url}/weckr/users/?status=free")
            grace_row = page.locator(f'tr[data-user="{grace.pk}"]')
            expect(grace_row).to_contain_text("grace@example.com")
            expect(grace_row.locator("a", has_text="(admin)")).to_have_attribute(
                "href", f"/admin/auth/user/{grace.pk}/change/"
            )
            page.screenshot(path=str(screenshots / "users-free.png"), full_page=True)
        finally:
            browser.close()


def test_the_admin_project_page_fits_its_plans(live_server: LiveServer, screenshots: Path) -> None:
    """The plans inline (seven fields and "Delete?") stays inside the page at a
    laptop's width."""
    from playwright.sync_api import expect, sync_playwright

    from weckr_django.models import Project

    project = Project.objects.create(name="Admin fit")
    Plan.objects.create(project=project, name="team", monthly_price_usd=99, monthly_cap_usd=5)
    User.objects.create_superuser("founder", "founder@example.com", "s3cret-pass")
    change = f"/admin/weckr_django/project/{project.pk}/change/"

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            log_in(page, live_server, change)
            expect(page.locator("#plans-0 input[name='plans-0-name']")).to_have_value("team")
            assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
            page.screenshot(path=str(screenshots / "admin-project.png"), full_page=True)
        finally:
            browser.close()


def test_recorded_vs_billed_in_chromium(live_server: LiveServer, screenshots: Path) -> None:
    """The providers' stored bill beside the spend Weckr recorded, per day."""
    from datetime import UTC, datetime
    from decimal import Decimal

    from playwright.sync_api import expect, sync_playwright

    from tests.django.helpers import make_record
    from weckr_django.ingest import ingest_records
    from weckr_django.models import BilledCost, Project

    now = datetime.now(UTC)
    project = Project.objects.create(name="Billed")
    ingest_records(project, [make_record("r1", model="gpt-4o", when=now)])
    BilledCost.objects.create(
        project=project,
        provider="openai",
        day=now.date(),
        line_item="gpt-4o-2024-08-06, input",
        model="gpt-4o-2024-08-06",
        amount_usd=Decimal("2.50"),
    )
    User.objects.create_superuser("founder", "founder@example.com", "s3cret-pass")

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            log_in(page, live_server, "/weckr/billing/")
            row = page.locator(f'tr[data-day="{now:%Y-%m-%d}"][data-provider="openai"] td')
            expect(row.nth(2)).to_have_text("2.50")
            expect(row.nth(6)).to_contain_text("gpt-4o $")
            page.screenshot(path=str(screenshots / "billing.png"), full_page=True)
        finally:
            browser.close()
