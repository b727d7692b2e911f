"""``example_project/demo.py --no-serve`` against a fresh SQLite database, twice."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]


def demo_env(database: Path) -> dict[str, str]:
    """This environment without the test settings, on a SQLite database of its own."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("DJANGO_SETTINGS_MODULE", "CELERY_BROKER_URL", "WECKR_PROJECT")
    }
    env["DATABASE_URL"] = f"sqlite:///{database}"
    return env


def run_demo(database: Path) -> str:
    env = demo_env(database)
    result = subprocess.run(
        [sys.executable, str(ROOT / "example_project" / "demo.py"), "--no-serve"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def query(database: Path, sql: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(database) as connection:
        return connection.execute(sql).fetchall()


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, str]:
    database = tmp_path_factory.mktemp("demo") / "demo.sqlite3"
    first = run_demo(database)
    second = run_demo(database)
    return database, first, second


def test_the_demo_prints_the_admin_login_and_a_key(demo: tuple[Path, str, str]) -> None:
    database, first, _ = demo

    assert "/admin/" in first
    assert "login: admin / weckr-demo" in first
    keys = [line for line in first.splitlines() if line.startswith("wk_")]
    assert len(keys) == 1
    assert query(database, "SELECT is_superuser FROM auth_user WHERE username = 'admin'") == [(1,)]


def test_the_demo_loads_a_month_of_varied_traffic(demo: tuple[Path, str, str]) -> None:
    database, _, _ = demo

    [(events, users, features, models, days)] = query(
        database,
        "SELECT COUNT(*), COUNT(DISTINCT user_id), COUNT(DISTINCT feature), "
        "COUNT(DISTINCT model), COUNT(DISTINCT date(timestamp)) FROM weckr_django_usageevent",
    )
    assert events > 3000
    assert users == 13
    assert features >= 5
    assert models >= 5
    assert days >= 28
    [(cached, writes, reasoning, downgraded)] = query(
        database,
        "SELECT SUM(cached_input_tokens), SUM(cache_creation_tokens), SUM(reasoning_tokens), "
        "COUNT(requested_model) FROM weckr_django_usageevent",
    )
    assert cached > 0 and writes > 0 and reasoning > 0 and downgraded > 0
    plans = query(
        database,
        "SELECT name, monthly_price_usd, monthly_cap_usd, cap_action FROM weckr_django_plan "
        "ORDER BY monthly_price_usd",
    )
    assert [row[0] for row in plans] == ["free", "pro", "team"]
    assert all(row[2] is not None for row in plans)


def test_the_rollups_match_the_events(demo: tuple[Path, str, str]) -> None:
    database, _, _ = demo

    [(event_cost, event_calls)] = query(
        database, "SELECT ROUND(SUM(cost_usd), 6), COUNT(*) FROM weckr_django_usageevent"
    )
    [(monthly_cost, monthly_calls)] = query(
        database, "SELECT ROUND(SUM(cost_usd), 6), SUM(calls) FROM weckr_django_monthlyuserspend"
    )
    [(daily_cost, daily_calls)] = query(
        database, "SELECT ROUND(SUM(cost_usd), 6), SUM(calls) FROM weckr_django_dailyusage"
    )
    assert event_calls == monthly_calls == daily_calls
    assert event_cost == pytest.approx(monthly_cost) == pytest.approx(daily_cost)


def test_the_demo_has_capped_downgraded_and_unprofitable_users(
    demo: tuple[Path, str, str],
) -> None:
    _, first, _ = demo
    rows = {line.split()[0]: line for line in first.splitlines() if line.startswith("  ")}

    assert "capped: block" in rows["cleo"]
    assert "capped: downgrade to" in rows["ben"]
    assert "free tier" in rows["cleo"]  # a cost of the free tier, not a losing customer
    assert "-0.00" not in first
    assert " profitable" in rows["eve"] or " watch" in rows["eve"]
    # Users of an account pay nothing themselves: their share of its cost is shown.
    assert "of acme-labs's cost" in rows["ada"]
    assert "of northwind's cost" in rows["dan"]


def test_the_demo_has_b2b_accounts_one_of_them_unprofitable(
    demo: tuple[Path, str, str],
) -> None:
    _, first, _ = demo
    accounts = {
        line.split()[1].rstrip(":"): line
        for line in first.splitlines()
        if line.startswith("  account ")
    }

    assert set(accounts) == {"acme-labs", "northwind"}
    assert "3 users on team" in accounts["acme-labs"]
    assert "of its $150 account cap" in accounts["acme-labs"]
    assert accounts["acme-labs"].endswith("unprofitable")
    assert accounts["northwind"].endswith(" profitable")


def test_a_second_run_adds_nothing(demo: tuple[Path, str, str]) -> None:
    database, first, second = demo

    assert "nothing added" in second
    assert not [line for line in second.splitlines() if line.startswith("wk_")]
    [(events,)] = query(database, "SELECT COUNT(*) FROM weckr_django_usageevent")
    recorded = next(line for line in first.splitlines() if line.startswith("Recorded"))
    assert events == int(recorded.split()[1])
    assert query(database, "SELECT COUNT(*) FROM weckr_django_project") == [(1,)]
    assert query(database, "SELECT COUNT(*) FROM auth_user WHERE username = 'admin'") == [(1,)]


_PAGES_SCRIPT = """
import json, os, sys
sys.path.insert(0, os.environ["WECKR_ROOT"])
os.environ["DJANGO_SETTINGS_MODULE"] = "example_project.settings"
import django
django.setup()
from django.contrib.auth import get_user_model
from django.test import Client
import weckr_core
from weckr_django.models import UsageEvent

admin = get_user_model().objects.get(username="admin")
client = Client(HTTP_HOST="localhost")
client.force_login(admin)
pages = [
    client.post("/", {"text": "Quarterly notes", "model": "gpt-4o", "action": action}).status_code
    for action in ("summarize", "draft")
]
weckr_core.get_backend().flush(10)
events = UsageEvent.objects.filter(user_id=str(admin.pk)).order_by("feature")
print(json.dumps({
    "pages": pages,
    "events": [[e.feature, e.source, e.plan_name, e.model, e.input_tokens > 0, float(e.cost_usd)]
               for e in events],
}))
"""


def test_the_pages_call_the_fake_llm_through_weckr(demo: tuple[Path, str, str]) -> None:
    database, _, _ = demo
    env = {key: value for key, value in os.environ.items() if key != "DJANGO_SETTINGS_MODULE"}
    env.update(DATABASE_URL=f"sqlite:///{database}", WECKR_ROOT=str(ROOT))
    result = subprocess.run(
        [sys.executable, "-c", _PAGES_SCRIPT],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    outcome = json.loads(result.stdout.strip().splitlines()[-1])

    assert outcome["pages"] == [200, 200]
    events = outcome["events"]
    assert [event[:5] for event in events] == [
        ["draft-email", "wrap", "pro", "gpt-4o", True],
        ["summarize", "sdk", "pro", "gpt-4o", True],
    ]
    assert all(event[5] > 0 for event in events)


_ANY_DAY_SCRIPT = """
import json, statistics, sys
from datetime import UTC, datetime, timedelta
from decimal import Decimal
sys.argv = ["demo.py"]
import demo
from django.core.management import call_command
from weckr_core.pricing import price_record

call_command("migrate", verbosity=0)  # prices can be overridden in the database

days = {}
for now in sys.argv_nows:
    now = datetime.fromisoformat(now)
    story = demo.story_month(now.date())
    users = {customer.username: customer.username for customer in demo.CUSTOMERS}
    month, daily = {}, {}
    for record in demo.generate(users, now):
        assert record.timestamp < now
        cost = price_record(record).usd
        day = record.timestamp.date()
        daily[day] = daily.get(day, Decimal(0)) + cost
        if day.replace(day=1) == story:
            month[record.user_id] = month.get(record.user_id, Decimal(0)) + cost
    # The chart's last 30 days, the day under way left out (it has just begun).
    chart = [float(daily.get(now.date() - timedelta(days=n), 0)) for n in range(29, 0, -1)]
    days[now.isoformat()] = {
        "story": story.isoformat(),
        "spend": {user: float(cost) for user, cost in month.items()},
        "chart": chart,
    }
print(json.dumps(days))
"""

MOMENTS = (
    "2026-12-01T09:30:00+00:00",  # the 1st
    "2026-12-02T00:30:00+00:00",
    "2026-12-08T15:00:00+00:00",
    "2026-12-19T23:00:00+00:00",  # the last day told by the previous month
    "2026-12-20T12:00:00+00:00",  # the first told by the month under way
    "2027-02-28T18:00:00+00:00",  # the last day of a short month
    "2027-03-01T12:00:00+00:00",  # the chart starts on January 31
)


def test_the_demo_tells_its_story_on_any_day_with_a_steady_chart(tmp_path: Path) -> None:
    """Caps and margins are per calendar month. Loaded on any day, the demo's story
    month (the month under way from its 20th, else the previous one) shows the loss,
    the caps reached and the user on watch, and its last 30 days of cost have no jump
    that would look like an incident (the first version crowded the month so far
    into a few days: 4x on the 1st, 3x on the 8th)."""
    script = _ANY_DAY_SCRIPT.replace("sys.argv_nows", repr(MOMENTS))
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT / "example_project",
        env=demo_env(tmp_path / "prices.sqlite3"),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    outcome = json.loads(result.stdout)

    assert [outcome[moment]["story"] for moment in MOMENTS] == [
        "2026-11-01",
        "2026-11-01",
        "2026-11-01",
        "2026-11-01",
        "2026-12-01",
        "2027-02-01",
        "2027-02-01",
    ]
    for moment, figures in outcome.items():
        spend = figures["spend"]
        assert spend["ada"] > 99, moment  # the team plan's price: a loss
        assert spend["ben"] >= 25, moment  # the pro cap: downgraded
        assert spend["cleo"] >= 0.5, moment  # the free cap: blocked
        assert 29 * 0.7 <= spend["eve"] < 25, moment  # on watch, under the cap
        assert spend.get("dan", 0) < 29 * 0.7, moment  # light and profitable
        chart = figures["chart"]
        weekdays = sorted(chart)[len(chart) // 3 :]  # weekends are quieter
        typical = weekdays[len(weekdays) // 2]
        assert max(chart) <= 1.8 * typical, (moment, chart)
        assert min(chart) > 0, (moment, chart)


def test_the_demo_shows_off_pricing_advice_and_a_stopped_run(
    demo: tuple[Path, str, str],
) -> None:
    database, _, _ = demo
    # The runaway agent runs (a few minutes ago; and in the story month, when it is the
    # previous one) are reported stopped by their loop guard, once each.
    stops = [
        json.loads(details)["run_id"]
        for (details,) in query(
            database, "SELECT details FROM weckr_django_alertlog WHERE kind = 'run_stopped'"
        )
    ]
    assert 1 <= len(stops) == len(set(stops)) <= 2
    assert all(run_id.startswith("demo-run-") for run_id in stops)
    # Enough payers on pro (five and more) for the pricing advice to speak.
    [(payers,)] = query(
        database,
        "SELECT COUNT(DISTINCT user_key) FROM weckr_django_monthlyuserspend "
        "WHERE plan_name = 'pro' AND user_key NOT IN "
        "(SELECT user_key FROM weckr_django_monthlyaccountuserspend)",
    )
    assert payers >= 5
