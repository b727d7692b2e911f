"""Every page shows a chosen month (project timezone): picked with ?month=YYYY-MM,
remembered in the session like the project, with empty states for a user or an
account with no calls in it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from django.test import Client

from tests.django.helpers import make_record
from weckr_django.ingest import ingest_records
from weckr_django.models import Plan, Project

pytestmark = pytest.mark.django_db

NOW = datetime.now(UTC)
LAST_MONTH = NOW.replace(day=1) - timedelta(days=2)


@pytest.fixture
def two_months(db: None, staff_client: Client) -> Project:
    project = Project.objects.create(name="Months")
    Plan.objects.create(project=project, name="pro", monthly_price_usd=29)
    ingest_records(
        project,
        [
            make_record("old", user_id="autumn", plan="pro", feature="legacy", when=LAST_MONTH),
            make_record("new", user_id="winter", plan="pro", feature="fresh", when=NOW),
        ],
    )
    staff_client.get(f"/weckr/?project={project.pk}")
    return project


def test_a_past_month_is_shown_and_remembered_across_pages(
    two_months: Project, staff_client: Client
) -> None:
    last = f"{LAST_MONTH:%Y-%m}"
    users = staff_client.get(f"/weckr/users/?month={last}").content.decode()
    assert 'data-user="autumn"' in users and 'data-user="winter"' not in users
    assert f"{LAST_MONTH:%B %Y}, worst margin first" in users

    features = staff_client.get("/weckr/features/").content.decode()  # remembered
    assert "legacy" in features and "fresh" not in features
    assert f'value="{last}" selected' in features  # the selector shows it

    current = staff_client.get("/weckr/users/?month=").content.decode()  # back to now
    assert 'data-user="winter"' in current and 'data-user="autumn"' not in current
    assert f"{NOW:%B %Y}, worst margin first" in current
    features_now = staff_client.get("/weckr/features/").content.decode()
    assert f"{NOW:%B %Y}, month to date" in features_now


def test_the_overview_of_a_past_month_has_its_figures_and_no_advice(
    two_months: Project, staff_client: Client
) -> None:
    page = staff_client.get(f"/weckr/?month={LAST_MONTH:%Y-%m}").content.decode()
    assert f"{LAST_MONTH:%B %Y}" in page
    # Advice reads the month under way: a past month points there, and does not
    # claim there is nothing to recommend.
    assert "Top recommendations" in page and "Advice is for the month under way" in page
    assert "Nothing to recommend yet" not in page
    assert "losing money this month" not in page and " this month:" not in page


def test_a_user_without_calls_in_the_month_gets_an_empty_state(
    two_months: Project, staff_client: Client
) -> None:
    page = staff_client.get("/weckr/users/detail/?user=autumn").content.decode()
    assert "No calls from autumn in" in page
    past = staff_client.get(f"/weckr/users/detail/?user=autumn&month={LAST_MONTH:%Y-%m}")
    assert 'id="user-cost"' in past.content.decode()


def test_a_month_that_is_not_one_shows_this_month(
    two_months: Project, staff_client: Client
) -> None:
    for bad in ("yesterday", "2026-13", "1999-01"):
        response = staff_client.get(f"/weckr/users/?month={bad}")
        assert response.status_code == 200
        assert 'data-user="winter"' in response.content.decode()
    future = staff_client.get(f"/weckr/users/?month={NOW.year + 1}-01").content.decode()
    assert 'data-user="winter"' in future  # no month after this one
