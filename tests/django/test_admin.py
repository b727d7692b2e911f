from __future__ import annotations

import re

import pytest
from django.contrib.auth.models import User
from django.core import mail
from django.urls import reverse

from weckr_django.ingest import ingest_records
from weckr_django.managers import hash_key
from weckr_django.models import AlertLog, ApiKey, Plan, Project

from .helpers import make_plan, make_project, make_record

pytestmark = pytest.mark.django_db


@pytest.fixture
def staff(client):
    user = User.objects.create_superuser("admin", "admin@example.com", "pw")
    client.force_login(user)
    return client


MODELS = (
    "project",
    "apikey",
    "usageevent",
    "monthlyuserspend",
    "alertlog",
    "modelprice",
    "modelalternative",
)


@pytest.mark.parametrize("model", MODELS)
def test_changelists_load(staff, model):
    project = make_project()
    make_plan(project, "pro", cap="5")
    ingest_records(project, [make_record("e1", plan="pro", feature="chat")])
    response = staff.get(reverse(f"admin:weckr_django_{model}_changelist"))
    assert response.status_code == 200


def test_usage_event_filters_and_read_only(staff):
    project = make_project()
    ingest_records(project, [make_record("e1", feature="chat"), make_record("e2", user_id="u2")])
    url = reverse("admin:weckr_django_usageevent_changelist")
    filtered = staff.get(url, {"user_id": "u2"})
    assert filtered.status_code == 200
    assert list(filtered.context["cl"].queryset.values_list("event_id", flat=True)) == ["e2"]
    assert staff.get(url, {"feature": "chat", "model": "gpt-4o"}).status_code == 200
    assert staff.get(reverse("admin:weckr_django_usageevent_add")).status_code == 403


def test_project_with_plans_inline(staff):
    response = staff.post(
        reverse("admin:weckr_django_project_add"),
        {
            "name": "Acme",
            "timezone": "Europe/Berlin",
            "target_ai_cost_share": "0.300",
            "plans-TOTAL_FORMS": "1",
            "plans-INITIAL_FORMS": "0",
            "plans-0-name": "pro",
            "plans-0-monthly_price_usd": "29",
            "plans-0-monthly_cap_usd": "3",
            "plans-0-cap_action": "downgrade",
            "plans-0-billing": "flat",
            "plans-0-soft_alert_percent": "80",
        },
    )
    assert response.status_code == 302, response.content
    plan = Plan.objects.get(project__name="Acme")
    assert (plan.name, plan.cap_action, str(plan.monthly_cap_usd)) == ("pro", "downgrade", "3.0000")


def test_project_form_rejects_bad_timezone_and_slack_host(staff):
    response = staff.post(
        reverse("admin:weckr_django_project_add"),
        {
            "name": "Acme",
            "timezone": "Mars/Olympus",
            "slack_webhook_url": "https://example.com/hook",
            "target_ai_cost_share": "0.300",
            "plans-TOTAL_FORMS": "0",
            "plans-INITIAL_FORMS": "0",
        },
    )
    assert response.status_code == 200
    errors = response.context["adminform"].form.errors
    assert "timezone" in errors
    assert "SLACK_ALLOWED_HOSTS" in errors["slack_webhook_url"][0]
    assert not Project.objects.exists()


def test_creating_a_key_shows_the_plaintext_once(staff):
    project = make_project()
    response = staff.post(
        reverse("admin:weckr_django_apikey_add"), {"project": str(project.pk), "name": "prod"}
    )
    assert response.status_code == 200
    page = response.content.decode()
    plaintext = re.search(r"wk_[A-Za-z0-9_\-]{20,}", page)
    assert plaintext is not None
    key = ApiKey.objects.get()
    assert key.key_hash == hash_key(plaintext.group())
    assert plaintext.group().startswith(key.prefix)
    assert "no-store" in response["Cache-Control"]
    # Nowhere else: not on the change page, not in the list.
    change = staff.get(reverse("admin:weckr_django_apikey_change", args=[key.pk]))
    listing = staff.get(reverse("admin:weckr_django_apikey_changelist"))
    assert plaintext.group() not in change.content.decode()
    assert plaintext.group() not in listing.content.decode()
    assert ApiKey.objects.authenticate(plaintext.group()) == key


def test_revoke_action(staff):
    key, _ = ApiKey.objects.create_key(make_project())
    staff.post(
        reverse("admin:weckr_django_apikey_changelist"),
        {"action": "revoke", "_selected_action": [key.pk]},
    )
    key.refresh_from_db()
    assert key.is_revoked


def test_send_test_alert_action(staff):
    project = make_project(
        alert_email="ops@example.com", slack_webhook_url="https://evil.example.net/hook"
    )
    response = staff.post(
        reverse("admin:weckr_django_project_changelist"),
        {"action": "send_test_alert", "_selected_action": [str(project.pk)]},
        follow=True,
    )
    texts = [str(message) for message in response.context["messages"]]
    assert len(mail.outbox) == 1
    assert mail.outbox[0].to == ["ops@example.com"]
    alert = AlertLog.objects.get(kind=AlertLog.Kind.TEST)
    assert alert.status == AlertLog.Status.PARTIAL
    assert any("SLACK_ALLOWED_HOSTS" in text for text in texts)
