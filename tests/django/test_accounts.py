"""Accounts in Django: the middleware's resolver, the wire's ``accountId``, each
event's account and the monthly rollup per account."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from django.core.checks import run_checks
from django.http import HttpRequest, HttpResponse
from django.test import RequestFactory, override_settings

from weckr_core import current_attribution
from weckr_django import ingest
from weckr_django.conf import weckr_settings
from weckr_django.ingest import ingest_payloads, ingest_records
from weckr_django.middleware import WeckrMiddleware
from weckr_django.models import MonthlyAccountSpend, UsageEvent
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
