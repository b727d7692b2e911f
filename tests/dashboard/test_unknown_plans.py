"""Plans Weckr does not know are never quiet: the banner, the alert, the user's page."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.core import mail
from django.test import Client
from django.test.utils import override_settings

from tests.django.helpers import expected_cost, make_record
from weckr_core.backends.base import CapRequest
from weckr_django import caps
from weckr_django.ingest import ingest_records
from weckr_django.models import AlertLog, Plan, Project

pytestmark = pytest.mark.django_db

SYNC = {"DELIVERY": "sync"}


def project_with_plans() -> Project:
    project = Project.objects.create(name="Acme", alert_email="ops@example.com")
    Plan.objects.create(project=project, name="free", monthly_price_usd=0, monthly_cap_usd=1)
    return project


def test_calls_on_unknown_plans_and_no_plan_show_with_counts_and_cost(
    staff_client: Client, django_capture_on_commit_callbacks: Any
) -> None:
    project = project_with_plans()
    records = [
        make_record("e1", user_id="u1", plan="enterprise"),
        make_record("e2", user_id="u2", plan="enterprise"),
        make_record("e3", user_id="u3", plan=None),
        make_record("e4", user_id="u4", plan="FREE"),  # known, another spelling
    ]
    with (
        override_settings(WECKR={**SYNC, "UNKNOWN_PLAN": "allow"}),
        django_capture_on_commit_callbacks(execute=True),
    ):
        ingest_records(project, records)
        ingest_records(project, [make_record("e5", user_id="u1", plan="enterprise")])

        html = staff_client.get("/weckr/").content.decode()
        users_html = staff_client.get("/weckr/users/").content.decode()
        detail = staff_client.get("/weckr/users/detail/", {"user": "u1"}).content.decode()

    later = make_record("e5", user_id="u1", plan="enterprise")
    enterprise = sum((expected_cost(r) for r in (*records[:2], later)), Decimal(0))
    assert 'id="unknown-plan-banner"' in html and 'id="unknown-plan-banner"' in users_html
    assert f"<code>enterprise</code> (2 users, 3 calls, ${enterprise:.4f}" in html
    assert f"<code>(no plan)</code> (1 user, 1 call, ${expected_cost(records[2]):.4f}" in html
    assert "Their calls are not capped" in html
    assert "<code>free</code>" not in html and "<code>FREE</code>" not in html
    assert "is not configured in Weckr: this user&#x27;s calls are not capped" in detail
    # One alert per plan name and month, whatever the number of ingests.
    alerts = AlertLog.objects.filter(kind=AlertLog.Kind.UNKNOWN_PLAN)
    assert sorted(alert.details["plan"] for alert in alerts) == ["(no plan)", "enterprise"]
    subjects = sorted(message.subject for message in mail.outbox)
    assert any("plan enterprise, which Weckr does not know" in s for s in subjects)


def test_the_banner_of_a_past_month_speaks_of_that_month(staff_client: Client) -> None:
    project = project_with_plans()
    staff_client.get(f"/weckr/?project={project.pk}")
    now = datetime.now(UTC)
    last_month = (now.replace(day=1) - timedelta(days=1)).replace(day=15, hour=12)
    with override_settings(WECKR={**SYNC, "UNKNOWN_PLAN": "allow"}):
        ingest_records(
            project,
            [
                make_record("old", user_id="u1", plan="legacy", when=last_month),
                make_record("new", user_id="u2", plan="enterprise", when=now),
            ],
        )
        this = staff_client.get("/weckr/").content.decode()
        past = staff_client.get(f"/weckr/?month={last_month:%Y-%m}").content.decode()

    assert "<code>enterprise</code>" in this and "<code>legacy</code>" not in this
    assert "<code>legacy</code>" in past and "<code>enterprise</code>" not in past
    assert f"Calls in {last_month:%B %Y} on plans Weckr does not know" in past


def test_calls_refused_on_an_unknown_plan_are_alerted_once_and_shown(
    staff_client: Client, django_capture_on_commit_callbacks: Any
) -> None:
    project = project_with_plans()
    with override_settings(WECKR=SYNC), django_capture_on_commit_callbacks(execute=True):
        for _ in range(3):
            decision = caps.reserve(project, CapRequest("u1", "enterprise", "gpt-4o"))
            assert (decision.action, decision.reason) == ("block", "unknown_plan")
        html = staff_client.get("/weckr/").content.decode()

    [alert] = AlertLog.objects.filter(kind=AlertLog.Kind.UNKNOWN_PLAN)
    assert alert.details["plan"] == "enterprise" and alert.details["refused"] is True
    assert "Calls on plan enterprise are refused" in mail.outbox[0].subject
    assert "Calls refused this month because their plan is unknown" in html
    assert "<code>enterprise</code>" in html and "Their calls are refused" in html


def test_a_project_without_plans_says_nothing_is_capped(staff_client: Client) -> None:
    Project.objects.create(name="Acme")
    html = staff_client.get("/weckr/").content.decode()
    assert 'id="no-plans-banner"' in html and "no call is capped" in html
