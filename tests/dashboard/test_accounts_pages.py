"""Accounts on the dashboard, the API, the MCP tools and the recommendations: an
account pays its plan (flat or per seat), its users earn nothing of their own and
are shown as their share of its cost."""

from __future__ import annotations

from decimal import Decimal

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from tests.django.helpers import make_record
from weckr_django import reports
from weckr_django.ingest import ingest_records
from weckr_django.mcp_server import accounts as mcp_accounts
from weckr_django.mcp_server import users as mcp_users
from weckr_django.models import ApiKey, Plan, Project
from weckr_django.recommendations import plan_pricing_recommendations

pytestmark = pytest.mark.django_db


@pytest.fixture
def b2b(db: None) -> Project:
    """acme: a flat $99 team plan with three users, one of them a power user who
    spends past the price; northwind: per seat at $20, two light users; and one
    user who pays the pro plan on their own."""
    project = Project.objects.create(name="B2B")
    Plan.objects.create(project=project, name="team", monthly_price_usd=Decimal(99))
    Plan.objects.create(
        project=project,
        name="seats",
        monthly_price_usd=Decimal(20),
        billing=Plan.Billing.PER_SEAT,
    )
    Plan.objects.create(project=project, name="pro", monthly_price_usd=Decimal(29))
    records = [
        # gpt-4o at $2.50 per million input tokens: 20M tokens is $50 a call.
        make_record("a1", user_id="power", plan="team", account_id="acme", input_tokens=20_000_000),
        make_record("a2", user_id="power", plan="team", account_id="acme", input_tokens=20_000_000),
        make_record("a3", user_id="ann", plan="team", account_id="acme", feature="search"),
        make_record("a4", user_id="bob", plan="team", account_id="acme", feature="search"),
        make_record("n1", user_id="nia", plan="seats", account_id="northwind"),
        make_record("n2", user_id="ned", plan="seats", account_id="northwind"),
        make_record("s1", user_id="solo", plan="pro"),
    ]
    ingest_records(project, records)
    return project


def test_accounts_are_listed_worst_margin_first_with_their_revenue(b2b: Project) -> None:
    acme, northwind = reports.account_margins(b2b)
    assert (acme.account_key, acme.revenue_usd, acme.seats) == ("acme", Decimal(99), 3)
    assert acme.margin_usd < 0 and acme.status == "unprofitable"
    # Per seat: two active users at $20 each.
    assert (northwind.revenue_usd, northwind.per_seat, northwind.seats) == (Decimal(40), True, 2)


def test_a_user_of_an_account_is_a_share_of_its_cost_not_a_payer(b2b: Project) -> None:
    users = {row.user_key: row for row in reports.user_margins(b2b)}
    power = users["power"]
    assert power.paid_by_account and power.revenue_usd is None
    assert power.status == "paid_by_account"
    assert power.account_share_percent is not None and power.account_share_percent > 99
    solo = users["solo"]
    assert (solo.paid_by_account, solo.revenue_usd, solo.status) == (
        False,
        Decimal(29),
        "profitable",
    )
    # The month's revenue is what the payers pay: solo, acme and northwind's two seats.
    summary = reports.month_summary(b2b)
    assert summary.revenue_usd == Decimal(29 + 99 + 40)
    assert (summary.unprofitable_users, summary.unprofitable_accounts) == (0, 1)
    assert summary.combined_loss_usd == -reports.account_margins(b2b)[0].margin_usd


def test_the_accounts_page_and_an_accounts_page(b2b: Project, staff_client: Client) -> None:
    staff_client.get(f"/weckr/?project={b2b.pk}")

    page = staff_client.get("/weckr/accounts/").content.decode()
    assert page.index('data-account="acme"') < page.index('data-account="northwind"')
    assert "per seat" in page

    detail = staff_client.get("/weckr/accounts/detail/?account=acme").content.decode()
    assert detail.index('data-user="power"') < detail.index('data-user="ann"')
    assert "Users do not pay the plan each: the account does." in detail
    assert "search" in detail  # its features
    # An account with no calls in the month: an empty state, not a 404.
    nobody = staff_client.get("/weckr/accounts/detail/?account=nobody")
    assert nobody.status_code == 200
    assert "No calls from Account nobody in" in nobody.content.decode()

    users = staff_client.get("/weckr/users/").content.decode()
    assert "paid by account" in users and "% of account" in users
    assert 'href="/weckr/accounts/detail/?account=acme"' in users
    member = staff_client.get("/weckr/users/detail/?user=power").content.decode()
    assert "Share of account cost" in member


def test_the_accounts_page_reads_no_more_with_more_accounts(
    b2b: Project, staff_client: Client
) -> None:
    staff_client.get(f"/weckr/?project={b2b.pk}")

    def queries() -> int:
        with CaptureQueriesContext(connection) as context:
            assert staff_client.get("/weckr/accounts/").status_code == 200
        return len(context)

    before = queries()
    ingest_records(
        b2b,
        [
            make_record(f"x{i}", user_id=f"u{i}", plan="team", account_id=f"extra-{i}")
            for i in range(30)
        ],
    )
    assert queries() == before


def test_the_api_and_the_mcp_tools_tell_payers_from_account_users(
    b2b: Project, client: Client
) -> None:
    _, key = ApiKey.objects.create_key(b2b, "api")
    body = client.get(f"/api/v1/users/{b2b.pk}", headers={"x-api-key": key}).json()
    power = next(row for row in body["users"] if row["userId"] == "power")
    assert (power["status"], power["marginUsd"], power["accountIds"]) == (
        "paid_by_account",
        None,
        ["acme"],
    )
    assert power["accountCostSharePct"] > 99

    tool = mcp_accounts(b2b, "unprofitable", 5)
    assert [row["accountId"] for row in tool["accounts"]] == ["acme"]
    assert tool["accounts"][0]["users"][0]["userId"] == "power"
    assert {row["status"] for row in mcp_users(b2b, "all", 10)["users"]} == {
        "paid_by_account",
        "profitable",
    }


def test_plans_are_priced_by_account_and_by_seat_where_accounts_pay(b2b: Project) -> None:
    pricing = {
        row.plan_name: row for row in plan_pricing_recommendations(b2b, min_users=1, min_calls=1)
    }
    team, seats, pro = pricing["team"], pricing["seats"], pricing["pro"]
    # The team plan is paid by one account, whose cost (not its three users') meets
    # the price.
    assert (team.users, team.payers, team.unprofitable_users) == (1, ("accounts",), 1)
    assert team.total_cost_usd == reports.account_margins(b2b)[0].cost_usd
    # A per-seat plan compares the price with the account's cost per seat.
    northwind = reports.account_margins(b2b)[1]
    assert (seats.payers, seats.avg_cost_usd) == (("seats",), northwind.cost_usd / 2)
    assert (pro.users, pro.payers) == (1, ("users",))
