"""Free and no-plan users are the cost of the free tier, not customers losing money."""

from __future__ import annotations

from decimal import Decimal

import pytest
from django.test import Client

from tests.django.helpers import make_record
from weckr_django import reports
from weckr_django.ingest import ingest_records
from weckr_django.models import Plan, Project

pytestmark = pytest.mark.django_db


@pytest.fixture
def freemium(db: None) -> Project:
    project = Project.objects.create(name="Freemium")
    Plan.objects.create(project=project, name="free", monthly_price_usd=Decimal(0))
    Plan.objects.create(project=project, name="pro", monthly_price_usd=Decimal(29))
    ingest_records(
        project,
        [
            make_record("f1", user_id="heavy-free", plan="free", input_tokens=400_000),
            make_record("f2", user_id="light-free", plan="free", input_tokens=100),
            make_record("n1", user_id="no-plan", input_tokens=2_000),
            make_record("p1", user_id="payer", plan="pro"),
            make_record("x1", user_id=None),  # calls with no user: not the free tier
        ],
    )
    return project


def test_the_overview_shows_the_free_tier_apart_from_losses(
    freemium: Project, staff_client: Client
) -> None:
    summary = reports.month_summary(freemium)
    free_users = {
        row.user_key: row.cost_usd for row in reports.user_margins(freemium) if row.is_free
    }
    assert set(free_users) == {"heavy-free", "light-free", "no-plan"}
    assert (summary.unprofitable_users, summary.free_users) == (0, 3)
    assert summary.free_cost_usd == sum(free_users.values())

    staff_client.get(f"/weckr/?project={freemium.pk}")
    page = staff_client.get("/weckr/").content.decode()
    assert 'id="loss-banner"' not in page
    assert "3 users</strong> on a $0 plan or none cost" in page
    assert page.index('data-user="heavy-free"') < page.index('data-user="light-free"')

    free = staff_client.get("/weckr/users/?status=free").content.decode()
    assert {"heavy-free", "light-free", "no-plan"} <= {
        user for user in free_users if f'data-user="{user}"' in free
    }
    assert 'data-user="payer"' not in free
    assert "-0.00" not in staff_client.get("/weckr/users/").content.decode()


def test_a_plan_weckr_does_not_know_is_not_the_free_tier(db: None) -> None:
    project = Project.objects.create(name="Mystery")
    Plan.objects.create(project=project, name="pro", monthly_price_usd=Decimal(29))
    ingest_records(project, [make_record("m1", user_id="mystery", plan="enterprise")])
    [row] = reports.user_margins(project)
    assert (row.is_free, row.status) == (False, "unprofitable")  # its price is unknown
