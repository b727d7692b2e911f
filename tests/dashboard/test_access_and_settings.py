"""Staff only, bounded queries per page, the project selector, and the Settings page."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from django.contrib.auth.models import Permission, User
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from pytest_django import DjangoAssertNumQueries

from tests.dashboard.traffic import generate_month, make_project
from weckr_core.records import UsageRecord
from weckr_django.ingest import ingest_records
from weckr_django.models import Plan, Project

pytestmark = pytest.mark.django_db

PAGES = (
    "/weckr/",
    "/weckr/users/",
    "/weckr/users/detail/?user=alice",
    "/weckr/accounts/",
    "/weckr/features/",
    "/weckr/models/",
    "/weckr/agents/",
    "/weckr/recommendations/",
    "/weckr/alerts/",
    "/weckr/settings/",
)
#: Session, user and projects, plus the page's own reads (the overview has most:
#: twelve, two of them for accounts).
MAX_QUERIES = 16


def client_for(*, is_staff: bool = False) -> Client:
    user = User.objects.create_user("someone", password="pw", is_staff=is_staff)
    client = Client()
    client.force_login(user)
    return client


@pytest.mark.parametrize("path", PAGES)
def test_anonymous_is_sent_to_the_admin_login(project: Project, path: str) -> None:
    response = Client().get(path)
    assert response.status_code == 302
    assert response["Location"].startswith("/admin/login/?next=")


@pytest.mark.parametrize("path", PAGES)
def test_non_staff_users_are_refused(project: Project, path: str) -> None:
    assert client_for().get(path).status_code == 403


@pytest.mark.parametrize("path", PAGES)
def test_queries_per_page_are_bounded(
    staff_client: Client,
    project: Project,
    path: str,
    django_assert_max_num_queries: DjangoAssertNumQueries,
) -> None:
    staff_client.get("/weckr/")  # the session already holds the project
    with django_assert_max_num_queries(MAX_QUERIES):
        assert staff_client.get(path).status_code == 200


def queries_for(client: Client, path: str) -> int:
    with CaptureQueriesContext(connection) as context:
        assert client.get(path).status_code == 200
    return len(context)


@pytest.mark.parametrize("path", ["/weckr/users/", "/weckr/agents/", "/weckr/features/"])
def test_queries_do_not_grow_with_the_data(
    staff_client: Client, project: Project, path: str
) -> None:
    staff_client.get("/weckr/")
    before = queries_for(staff_client, path)
    records = [
        UsageRecord(
            user_id=f"extra-{number}",
            plan="pro",
            feature=f"feature-{number}",
            model="gpt-4o-mini",
            provider="openai",
            input_tokens=100,
            output_tokens=10,
            run_id=f"extra-run-{number}",
            agent=f"agent-{number}",
            source="langchain",
        )
        for number in range(40)
    ]
    assert ingest_records(project, records).created == 40
    assert queries_for(staff_client, path) == before


def test_project_selector_is_remembered(staff_client: Client, project: Project) -> None:
    other = make_project("Zeta")
    generate_month(other, seed=11)

    assert "<h1>Overview" in staff_client.get("/weckr/").content.decode()
    assert "· Acme</title>" in staff_client.get("/weckr/").content.decode()
    assert "· Zeta</title>" in staff_client.get(f"/weckr/?project={other.pk}").content.decode()
    assert "· Zeta</title>" in staff_client.get("/weckr/users/").content.decode()
    assert "· Acme</title>" in staff_client.get("/weckr/?project=unknown").content.decode()


def test_no_project_yet(staff_client: Client) -> None:
    assert "No project yet" in staff_client.get("/weckr/").content.decode()


def settings_data(project: Project, **changes: Any) -> dict[str, str]:
    """The Settings form as the page submits it, with ``changes`` applied
    (``plan_<name>_<field>`` for a plan's field, else a project field)."""
    plans = list(Plan.objects.filter(project=project).order_by("monthly_price_usd", "name"))
    data = {
        "plans-TOTAL_FORMS": str(len(plans) + 1),
        "plans-INITIAL_FORMS": str(len(plans)),
        "plans-MIN_NUM_FORMS": "0",
        "plans-MAX_NUM_FORMS": "1000",
    }
    for index, plan in enumerate(plans):
        values = {
            "id": plan.pk,
            "name": plan.name,
            "monthly_price_usd": plan.monthly_price_usd,
            "billing": plan.billing,
            "monthly_cap_usd": plan.monthly_cap_usd or "",
            "account_monthly_cap_usd": plan.account_monthly_cap_usd or "",
            "cap_action": plan.cap_action,
            "soft_alert_percent": plan.soft_alert_percent,
        }
        for field in values:
            values[field] = changes.pop(f"plan_{plan.name}_{field}", values[field])
        data.update({f"plans-{index}-{field}": str(value) for field, value in values.items()})
    # The empty row for a new plan, as the browser sends it: the select's and
    # number's initial values.
    data.update(
        {
            f"plans-{len(plans)}-billing": "flat",
            f"plans-{len(plans)}-cap_action": "block",
            f"plans-{len(plans)}-soft_alert_percent": "80",
        }
    )
    project_fields = {
        "loop_window_seconds": project.loop_window_seconds or "",
        "loop_token_threshold": project.loop_token_threshold or "",
        "loop_cooldown_seconds": project.loop_cooldown_seconds or "",
        "slack_webhook_url": project.slack_webhook_url,
        "alert_email": project.alert_email,
        "margin_alert_threshold_usd": project.margin_alert_threshold_usd or "",
        # Edited in percent on the page, as the plans' soft alert is.
        "target_ai_cost_share": project.target_ai_cost_share * 100,
    }
    project_fields.update(changes)
    data.update({f"project-{field}": str(value) for field, value in project_fields.items()})
    return data


def test_settings_save_caps_and_knobs(staff_client: Client, project: Project) -> None:
    data = settings_data(
        project,
        plan_pro_monthly_cap_usd="12.50",
        plan_pro_account_monthly_cap_usd="300",
        plan_pro_billing="per_seat",
        plan_pro_cap_action="downgrade",
        plan_starter_soft_alert_percent="90",
        loop_token_threshold="80000",
        slack_webhook_url="https://hooks.slack.com/services/T0/B0/x",
    )
    data.update(
        {
            "plans-3-name": "enterprise",
            "plans-3-monthly_price_usd": "500",
        }
    )

    response = staff_client.post("/weckr/settings/", data)

    assert response.status_code == 302
    pro = Plan.objects.get(project=project, name="pro")
    assert (pro.monthly_cap_usd, pro.cap_action) == (Decimal("12.50"), "downgrade")
    assert (pro.account_monthly_cap_usd, pro.billing) == (Decimal(300), "per_seat")
    assert Plan.objects.get(project=project, name="starter").soft_alert_percent == 90
    assert Plan.objects.get(project=project, name="enterprise").monthly_price_usd == 500
    project.refresh_from_db()
    assert project.loop_token_threshold == 80_000
    assert project.slack_webhook_url == "https://hooks.slack.com/services/T0/B0/x"
    assert "Settings saved." in staff_client.get("/weckr/settings/").content.decode()


@pytest.mark.parametrize(
    "url", ["http://hooks.slack.com/services/T0/B0/x", "https://internal.example/hook"]
)
def test_settings_reject_unsafe_slack_urls(
    staff_client: Client, project: Project, url: str
) -> None:
    response = staff_client.post(
        "/weckr/settings/",
        settings_data(project, slack_webhook_url=url, plan_pro_monthly_cap_usd="99"),
    )

    assert response.status_code == 400
    html = response.content.decode()
    assert 'class="errorlist"' in html and "Slack webhook" in html
    project.refresh_from_db()
    assert project.slack_webhook_url == ""
    assert Plan.objects.get(project=project, name="pro").monthly_cap_usd == Decimal("10")


def test_settings_link_prefills_a_cap(staff_client: Client, project: Project) -> None:
    html = staff_client.get("/weckr/settings/?plan=pro&cap=12.5&action=downgrade").content.decode()

    assert 'id="prefill-banner"' in html and "nothing has changed yet" in html
    row = html[html.index('<tr class="prefilled">') :]
    row = row[: row.index("</tr>")]
    assert 'value="pro"' in row and 'value="12.5"' in row
    assert '<option value="downgrade" selected>' in row
    assert Plan.objects.get(project=project, name="pro").monthly_cap_usd == Decimal("10")
    unknown = staff_client.get("/weckr/settings/?plan=gold&cap=1").content.decode()
    assert "which this project does not have" in unknown


def test_staff_without_permissions_can_view_but_not_change(project: Project) -> None:
    viewer = client_for(is_staff=True)
    html = viewer.get("/weckr/settings/").content.decode()
    assert "changing them needs the project and plan change permissions" in html
    assert viewer.post("/weckr/settings/", settings_data(project)).status_code == 403
    assert viewer.post("/weckr/settings/test-alert/").status_code == 403

    user = User.objects.get(username="someone")
    user.user_permissions.add(
        *Permission.objects.filter(codename__in=("change_project", "change_plan"))
    )
    viewer.force_login(User.objects.get(pk=user.pk))
    data = settings_data(project, plan_team_monthly_cap_usd="40")
    assert viewer.post("/weckr/settings/", data).status_code == 302
    assert Plan.objects.get(project=project, name="team").monthly_cap_usd == Decimal("40")


def test_settings_read_in_percent_and_plain_amounts(staff_client: Client, project: Project) -> None:
    Plan.objects.filter(project=project, name="pro").update(monthly_cap_usd=Decimal("12.5"))
    page = staff_client.get("/weckr/settings/").content.decode()
    assert 'name="project-target_ai_cost_share" value="30"' in page
    assert 'value="12.50"' in page and "12.5000" not in page

    data = settings_data(project, target_ai_cost_share="25")
    assert staff_client.post("/weckr/settings/", data).status_code == 302
    project.refresh_from_db()
    assert project.target_ai_cost_share == Decimal("0.250")
