from __future__ import annotations

from decimal import Decimal

import pytest

from weckr_django.caps import decide
from weckr_django.ingest import ingest_records
from weckr_django.models import ModelAlternative, MonthlyUserSpend, Plan
from weckr_django.periods import month_start

from .helpers import make_plan, make_project, make_record

pytestmark = pytest.mark.django_db


def set_spend(project, user_id: str, usd: str) -> None:
    MonthlyUserSpend.objects.create(
        project=project, user_key=user_id, month=month_start(project), cost_usd=Decimal(usd)
    )


def test_under_the_cap_is_allowed_with_figures():
    project = make_project()
    make_plan(project, "pro", cap="5")
    set_spend(project, "u1", "1.25")
    decision = decide(project, "u1", "pro", "gpt-4o")
    assert decision.action == "allow"
    assert decision.current_spend == Decimal("1.25")
    assert decision.cap == Decimal("5")
    assert decision.remaining_budget == Decimal("3.75")


def test_at_the_cap_blocks():
    project = make_project()
    make_plan(project, "free", cap="0.50")
    set_spend(project, "u1", "0.50")
    decision = decide(project, "u1", "free", "gpt-4o")
    assert decision.action == "block"
    assert decision.alternative_model is None


def test_downgrade_uses_the_built_in_cheaper_model():
    project = make_project()
    make_plan(project, "pro", cap="1", action=Plan.CapAction.DOWNGRADE)
    set_spend(project, "u1", "2")
    decision = decide(project, "u1", "pro", "gpt-4o")
    assert decision.action == "downgrade"
    assert decision.alternative_model == "gpt-4o-mini"


def test_downgrade_prefers_the_admin_alternative():
    project = make_project()
    make_plan(project, "pro", cap="1", action=Plan.CapAction.DOWNGRADE)
    set_spend(project, "u1", "2")
    ModelAlternative.objects.create(model="gpt-4o", alternative="gpt-4.1-nano")
    assert decide(project, "u1", "pro", "gpt-4o").alternative_model == "gpt-4.1-nano"


def test_downgrade_without_an_alternative_blocks():
    project = make_project()
    make_plan(project, "pro", cap="1", action=Plan.CapAction.DOWNGRADE)
    set_spend(project, "u1", "2")
    assert decide(project, "u1", "pro", "some-house-model").action == "block"


def test_no_user_unknown_plan_and_no_cap_allow():
    project = make_project()
    make_plan(project, "pro", cap=None)
    set_spend(project, "u1", "100")
    assert decide(project, None, "pro", "gpt-4o").allowed
    unknown = decide(project, "u1", "enterprise", "gpt-4o")
    assert unknown.allowed
    assert unknown.current_spend == Decimal("100")
    no_cap = decide(project, "u1", "pro", "gpt-4o")
    assert no_cap.allowed
    assert no_cap.cap is None


def test_spend_from_ingest_is_seen_by_the_next_check():
    project = make_project()
    make_plan(project, "pro", cap="0.001")
    assert decide(project, "u1", "pro", "gpt-4o").allowed
    ingest_records(project, [make_record("e1", input_tokens=100_000, output_tokens=10_000)])
    assert decide(project, "u1", "pro", "gpt-4o").action == "block"


def test_caps_are_per_project():
    one, two = make_project("one"), make_project("two")
    make_plan(one, "pro", cap="1")
    make_plan(two, "pro", cap="1")
    set_spend(one, "u1", "5")
    assert decide(one, "u1", "pro", "gpt-4o").action == "block"
    assert decide(two, "u1", "pro", "gpt-4o").allowed
