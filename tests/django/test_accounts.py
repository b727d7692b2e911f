"""Accounts in Django: the middleware's resolver, the wire's ``accountId``, each
event's account and the monthly rollup per account."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.core.checks import run_checks
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from django.http import HttpRequest, HttpResponse
from django.test import RequestFactory, override_settings

from weckr_core import current_attribution
from weckr_django import ingest, reports
from weckr_django.conf import weckr_settings
from weckr_django.ingest import ingest_payloads, ingest_records
from weckr_django.middleware import WeckrMiddleware
from weckr_django.models import DailyAccountUsage, MonthlyAccountSpend, Plan, UsageEvent
from weckr_django.periods import local_day

from .helpers import make_project, make_record


def team_of(request: HttpRequest) -> str:
    return f"team-{request.headers.get('x-team', 'none')}"


def failing_resolver(request: HttpRequest) -> str:
    raise RuntimeError("no team table yet")


def seen(request: HttpRequest) -> HttpResponse:
    found = current_attribution()
    return HttpResponse(json.dumps([found.user_id, found.account_id]))


def through_middleware(resolver: str | None) -> tuple[list[Any], Any]:
    weckr = {} if resolver is None else {"ACCOUNT_RESOLVER": resolver}
    with override_settings(WECKR=weckr):
        weckr_settings.reload()
        try:
            request = RequestFactory().get("/", headers={"x-team": "7"})
            request.user = type("User", (), {"is_authenticated": True, "pk": 5})()
            response = WeckrMiddleware(seen)(request)
            return json.loads(response.content), current_attribution()
        finally:
            weckr_settings.reload()


def test_the_middleware_binds_the_account_its_resolver_names() -> None:
    (user_id, account_id), after = through_middleware("tests.django.test_accounts.team_of")
    assert (user_id, account_id) == ("5", "team-7")
    assert after.account_id is None  # unbound after the request


def test_by_default_there_is_no_account() -> None:
    assert through_middleware(None)[0] == ["5", None]


def test_a_failing_account_resolver_is_logged_and_the_page_served(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.ERROR, logger="weckr_django"):
        found, _ = through_middleware("tests.django.test_accounts.failing_resolver")
    assert found == ["5", None]
    assert "resolving the account" in caplog.text


def test_an_account_resolver_that_does_not_import_fails_the_check() -> None:
    with override_settings(WECKR={"ACCOUNT_RESOLVER": "myapp.nowhere.account"}):
        weckr_settings.reload()
        try:
            errors = [e for e in run_checks() if e.id == "weckr.E002"]
        finally:
            weckr_settings.reload()
    assert errors and "ACCOUNT_RESOLVER" in errors[0].msg


@pytest.mark.django_db
def test_the_wire_takes_account_id_and_refuses_personal_data_in_it() -> None:
    project = make_project()
    result = ingest_payloads(
        project,
        [
            {"eventId": "a1", "model": "gpt-4o", "inputTokens": 5, "accountId": "acme"},
            {"eventId": "a2", "model": "gpt-4o", "inputTokens": 5, "accountId": 1234},
            {"eventId": "a3", "model": "gpt-4o", "inputTokens": 5, "accountId": "ceo@acme.com"},
        ],
    )
    assert [(r.index, r.field) for r in result.rejected] == [(2, "accountId")]
    stored = dict(UsageEvent.objects.values_list("event_id", "account_id"))
    assert stored == {"a1": "acme", "a2": "1234"}


@pytest.fixture(params=["upsert", "row by row"])
def upsert_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "row by row":
        monkeypatch.setattr(ingest, "_supports_returning_upsert", lambda connection: False)
    return str(request.param)


@pytest.mark.django_db
def test_the_monthly_account_rollup_adds_up_its_users_calls(upsert_path: str) -> None:
    project = make_project()
    now = datetime.now(UTC).replace(day=15)
    last_month = now - timedelta(days=31)
    records = [
        make_record(f"e{n}", user_id=f"u{n % 3}", account_id=f"acct-{n % 2}", when=now)
        for n in range(12)
    ]
    records += [make_record("old", user_id="u0", account_id="acct-0", when=last_month)]
    records += [make_record("solo", user_id="u9", when=now)]  # no account
    ingest_records(project, records[:5])
    ingest_records(project, records[3:])  # overlapping: the repeats count once

    expected: dict[tuple[str, Any], tuple[int, Any, int]] = {}
    for event in UsageEvent.objects.filter(project=project, account_id__isnull=False):
        key = (event.account_id, local_day(project, event.timestamp).replace(day=1))
        calls, cost, tokens = expected.get(key, (0, 0, 0))
        expected[key] = (calls + 1, cost + event.cost_usd, tokens + event.input_tokens)
    rollup = {
        (row.account_key, row.month): (row.calls, row.cost_usd, row.input_tokens)
        for row in MonthlyAccountSpend.objects.filter(project=project)
    }
    assert rollup == expected
    assert sum(calls for calls, _, _ in rollup.values()) == 13

    # The daily rollup per account and feature (the Accounts page's spark lines and
    # an account's features) adds up to the same, day by day.
    days: dict[tuple[str, Any, str], tuple[int, Any]] = {}
    for event in UsageEvent.objects.filter(project=project, account_id__isnull=False):
        day = (event.account_id, local_day(project, event.timestamp), event.feature or "")
        calls, cost = days.get(day, (0, 0))
        days[day] = (calls + 1, cost + event.cost_usd)
    assert {
        (row.account_key, row.day, row.feature): (row.calls, row.cost_usd)
        for row in DailyAccountUsage.objects.filter(project=project)
    } == days


def seven_seats(project: Any, account_id: str, month: Any) -> int | None:
    return 7 if account_id == "globex" else None


@pytest.mark.django_db
def test_account_margins_bill_flat_and_per_seat_from_the_rollups() -> None:
    project = make_project()
    Plan.objects.create(project=project, name="team", monthly_price_usd=Decimal(99))
    Plan.objects.create(
        project=project,
        name="seat",
        monthly_price_usd=Decimal(10),
        billing=Plan.Billing.PER_SEAT,
    )
    now = datetime.now(UTC)
    records = [
        # acme: flat $99, three users, a heavy month.
        *(
            make_record(
                f"acme-{n}",
                user_id=f"a{n % 3}",
                account_id="acme",
                plan="team",
                input_tokens=8_000_000,
                when=now,
            )
            for n in range(6)
        ),
        # initech: $10 a seat, two active users.
        make_record("ini-1", user_id="i1", account_id="initech", plan="seat", when=now),
        make_record("ini-2", user_id="i2", account_id="initech", plan="seat", when=now),
        make_record("ini-3", user_id="i2", account_id="initech", plan="seat", when=now),
        # globex: $10 a seat, seats from the resolver.
        make_record("glx-1", user_id="g1", account_id="globex", plan="seat", when=now),
        # hooli: a plan Weckr does not know.
        make_record("hoo-1", user_id="h1", account_id="hooli", plan="gold", when=now),
    ]
    ingest_records(project, records)

    with override_settings(WECKR={"SEATS_RESOLVER": "tests.django.test_accounts.seven_seats"}):
        weckr_settings.reload()
        try:
            margins = {row.account_key: row for row in reports.account_margins(project)}
            response = api_accounts(project)
        finally:
            weckr_settings.reload()

    acme = margins["acme"]
    cost = sum((r.cost_usd for r in UsageEvent.objects.filter(account_id="acme")), start=Decimal(0))
    assert (acme.per_seat, acme.active_users, acme.revenue_usd) == (False, 3, Decimal(99))
    assert acme.cost_usd == cost and acme.margin_usd == Decimal(99) - cost
    assert acme.status == "unprofitable"  # 6 calls of 8M gpt-4o input tokens: $20 each
    initech = margins["initech"]
    assert (initech.per_seat, initech.seats, initech.revenue_usd) == (True, 2, Decimal(20))
    assert initech.calls == 3
    globex = margins["globex"]
    assert (globex.seats, globex.active_users, globex.revenue_usd) == (7, 1, Decimal(70))
    assert margins["hooli"].revenue_usd is None
    assert list(margins) == sorted(margins, key=lambda key: (margins[key].margin_usd, key))

    users = {row.user_key: row.accounts for row in reports.user_margins(project)}
    assert (users["a0"], users["i2"], users["g1"]) == (("acme",), ("initech",), ("globex",))
    body = response.json()["accounts"]
    assert body[0]["accountId"] == "acme" and body[0]["status"] == "unprofitable"
    by_id = {row["accountId"]: row for row in body}
    assert by_id["initech"] == {
        "accountId": "initech",
        "planName": "seat",
        "billing": "per_seat",
        "seats": 2,
        "activeUsers": 2,
        "totalCostUsd": pytest.approx(float(initech.cost_usd)),
        "revenueUsd": 20.0,
        "marginUsd": pytest.approx(float(initech.margin_usd)),
        "requestCount": 3,
        "status": "profitable",
    }


def api_accounts(project: Any) -> Any:
    from django.test import Client

    from weckr_django.models import ApiKey

    _, key = ApiKey.objects.create_key(project, "accounts")
    return Client().get(f"/api/v1/accounts/{project.pk}", headers={"x-api-key": key})


def daily_account_rows(project: Any) -> dict[tuple[str, Any, str], tuple[int, Any]]:
    return {
        (row.account_key, row.day, row.feature): (row.calls, row.cost_usd)
        for row in DailyAccountUsage.objects.filter(project=project)
    }


@pytest.mark.django_db(transaction=True)
def test_the_migration_adds_up_the_account_usage_stored_before_it() -> None:
    project = make_project(timezone="America/New_York")
    late_evening = datetime(2026, 3, 31, 23, 30, tzinfo=UTC)  # March 31 in New York
    ingest_records(
        project,
        [
            make_record("a1", account_id="acme", feature="chat", when=late_evening),
            make_record("a2", account_id="acme", when=late_evening + timedelta(hours=5)),
            make_record("g1", user_id="u2", account_id="globex", when=late_evening),
            make_record("solo", user_id="u3", when=late_evening),
        ],
    )
    expected = daily_account_rows(project)
    assert len(expected) == 3
    executor = MigrationExecutor(connection)
    executor.migrate([("weckr_django", "0008_account_caps")])
    executor.loader.build_graph()
    executor.migrate(executor.loader.graph.leaf_nodes())  # through 0009, which adds them up

    assert daily_account_rows(project) == expected
