"""Cap decisions and reservations against the database store (SQLite here; the
integration suite runs the same against PostgreSQL and Redis)."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
from django.test.utils import override_settings
from django.utils import timezone

from weckr_core.backends.base import CapRequest, Reservation
from weckr_core.pricing import price_usage
from weckr_django import caps
from weckr_django.caps import decide
from weckr_django.ingest import ingest_records
from weckr_django.models import CapReservation, ModelAlternative, MonthlyUserSpend, Plan
from weckr_django.periods import month_start
from weckr_django.stores import SpendKey, cap_store

from .helpers import make_plan, make_project, make_record

pytestmark = pytest.mark.django_db


def set_spend(project, user_id: str, usd: str) -> None:
    MonthlyUserSpend.objects.create(
        project=project, user_key=user_id, month=month_start(project), cost_usd=Decimal(usd)
    )


def request(user_id: str = "u1", plan: str | None = "pro", **fields) -> CapRequest:
    fields.setdefault("model", "gpt-4o")
    fields.setdefault("provider", "openai")
    fields.setdefault("input_tokens", 1000)
    fields.setdefault("max_output_tokens", 500)
    return CapRequest(user_id, plan, **fields)


def estimate(model: str = "gpt-4o", input_tokens: int = 1000, output_tokens: int = 500) -> Decimal:
    return price_usage(model, input_tokens=input_tokens, output_tokens=output_tokens).usd


def held(project, user_id: str = "u1") -> Decimal:
    return cap_store().spend(SpendKey.of(project, user_id)).held


# -- decisions (GET /api/v1/check): nothing held ---------------------------------


def test_under_the_cap_is_allowed_with_figures():
    project = make_project()
    make_plan(project, "pro", cap="5")
    set_spend(project, "u1", "1.25")
    decision = decide(project, "u1", "pro", "gpt-4o")
    assert decision.action == "allow"
    assert decision.current_spend == Decimal("1.25")
    assert decision.cap == Decimal("5")
    assert decision.remaining_budget == Decimal("3.75")
    assert not CapReservation.objects.exists()


def test_at_the_cap_blocks():
    project = make_project()
    make_plan(project, "free", cap="0.50")
    set_spend(project, "u1", "0.50")
    decision = decide(project, "u1", "free", "gpt-4o")
    assert decision.action == "block"
    assert decision.alternative_model is None
    assert decision.reason == "cap"


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


def test_no_user_and_a_plan_without_a_cap_allow():
    project = make_project()
    make_plan(project, "pro", cap=None)
    set_spend(project, "u1", "100")
    assert decide(project, None, "pro", "gpt-4o").allowed
    no_cap = decide(project, "u1", "pro", "gpt-4o")
    assert no_cap.allowed
    assert no_cap.cap is None
    assert caps.reserve(project, request()).reservation is None


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


# -- plans Weckr does not know -----------------------------------------------------


def test_an_unknown_plan_is_refused_by_default_never_silently_uncapped():
    project = make_project()
    make_plan(project, "pro", cap="5")
    decision = decide(project, "u1", "enterprise", "gpt-4o")
    assert decision.action == "block"
    assert decision.reason == "unknown_plan"
    assert decision.plan == "enterprise"
    reserved = caps.reserve(project, request(plan="enterprise"))
    assert (reserved.action, reserved.reason, reserved.reservation) == (
        "block",
        "unknown_plan",
        None,
    )


def test_plan_names_match_ignoring_case_and_spaces():
    project = make_project()
    make_plan(project, "free", cap="0.50")
    set_spend(project, "u1", "0.60")
    for spelling in ("Free", "FREE", " free "):
        decision = decide(project, "u1", spelling, "gpt-4o")
        assert (decision.action, decision.reason, decision.plan) == ("block", "cap", "free")


def test_unknown_plan_allow_means_no_cap():
    project = make_project()
    make_plan(project, "pro", cap="5")
    set_spend(project, "u1", "100")
    with override_settings(WECKR={"UNKNOWN_PLAN": "allow"}):
        decision = decide(project, "u1", "enterprise", "gpt-4o")
    assert decision.allowed
    assert decision.cap is None


def test_unknown_plan_can_fall_under_a_named_plan():
    project = make_project()
    make_plan(project, "free", cap="0.50")
    set_spend(project, "u1", "0.75")
    with override_settings(WECKR={"UNKNOWN_PLAN": "free"}):
        decision = decide(project, "u1", "enterprise", "gpt-4o")
        assert (decision.action, decision.cap, decision.plan) == ("block", Decimal("0.50"), "free")
        # A fallback that names no plan refuses rather than uncaps.
    with override_settings(WECKR={"UNKNOWN_PLAN": "no-such-plan"}):
        assert decide(project, "u1", "enterprise", "gpt-4o").reason == "unknown_plan"


def test_a_user_with_no_plan_falls_under_default_plan():
    project = make_project()
    make_plan(project, "free", cap="0.50")
    set_spend(project, "u1", "0.75")
    # No DEFAULT_PLAN: a user with no plan is on an unknown plan, refused.
    assert decide(project, "u1", None, "gpt-4o").reason == "unknown_plan"
    with override_settings(WECKR={"DEFAULT_PLAN": "free"}):
        decision = decide(project, "u1", None, "gpt-4o")
    assert (decision.action, decision.reason, decision.plan) == ("block", "cap", "free")


def test_a_project_with_no_plans_caps_nothing():
    project = make_project()
    set_spend(project, "u1", "100")
    assert decide(project, "u1", "pro", "gpt-4o").allowed
    assert caps.reserve(project, request()).allowed


def test_ingest_stores_the_configured_plan_spelling_and_the_default_plan():
    project = make_project()
    make_plan(project, "free", cap="5")
    with override_settings(WECKR={"DELIVERY": "sync", "DEFAULT_PLAN": "free"}):
        ingest_records(
            project,
            [
                make_record("e1", user_id="u1", plan="FREE"),
                make_record("e2", user_id="u2", plan=None),
                make_record("e3", user_id="u3", plan="enterprise"),
            ],
        )
    plans = dict(MonthlyUserSpend.objects.values_list("user_key", "plan_name"))
    assert plans == {"u1": "free", "u2": "free", "u3": "enterprise"}


# -- reservations --------------------------------------------------------------------


def test_a_reservation_holds_the_estimate_until_settled_with_the_real_cost():
    project = make_project()
    make_plan(project, "pro", cap="5")
    decision = caps.reserve(project, request())
    reservation = decision.reservation
    assert decision.allowed and reservation is not None
    assert reservation.amount_usd == estimate()
    assert reservation.user_id == "u1"
    assert held(project) == estimate()
    # The next call is decided against the first one's hold.
    second = caps.reserve(project, request())
    assert second.current_spend == estimate()
    assert second.in_flight == estimate()

    record = make_record("e1", input_tokens=1000, output_tokens=100)
    caps.settle(project, reservation, record)
    real = price_usage("gpt-4o", input_tokens=1000, output_tokens=100).usd
    assert held(project) == real + estimate()
    assert CapReservation.objects.get(pk=reservation.id).settled


def test_ingest_drops_the_hold_so_the_counter_and_the_rollup_agree():
    project = make_project()
    make_plan(project, "pro", cap="5")
    reservation = caps.reserve(project, request()).reservation
    assert reservation is not None
    record = make_record("e1", input_tokens=1000, output_tokens=100)
    caps.settle(project, reservation, record)
    record.reservation_id = reservation.id
    ingest_records(project, [record])
    rollup = MonthlyUserSpend.objects.get(user_key="u1").cost_usd
    spend = cap_store().spend(SpendKey.of(project, "u1"))
    assert (spend.recorded, spend.held) == (rollup, Decimal(0))
    assert not CapReservation.objects.exists()
    # A resend of the same event changes nothing.
    ingest_records(project, [record])
    assert cap_store().spend(SpendKey.of(project, "u1")).total == rollup


def test_a_call_whose_estimate_would_pass_the_cap_is_refused():
    project = make_project()
    cap = estimate() * 2 + Decimal("0.0001")
    make_plan(project, "pro", cap=str(cap))
    assert caps.reserve(project, request()).allowed
    assert caps.reserve(project, request()).allowed
    third = caps.reserve(project, request())
    assert (third.action, third.reservation) == ("block", None)
    assert third.current_spend == estimate() * 2
    # A smaller call still fits.
    small = caps.reserve(project, request(input_tokens=10, max_output_tokens=5))
    assert small.allowed


def test_without_max_tokens_the_projects_default_output_is_reserved():
    project = make_project(default_output_tokens=2000)
    make_plan(project, "pro", cap="5")
    decision = caps.reserve(project, request(max_output_tokens=None))
    assert decision.reservation is not None
    assert decision.reservation.amount_usd == estimate(output_tokens=2000)


def test_an_expired_reservation_stops_counting():
    project = make_project()
    make_plan(project, "pro", cap=str(estimate() + Decimal("0.00001")))
    first = caps.reserve(project, request())
    assert first.reservation is not None
    assert caps.reserve(project, request()).action == "block"
    # Its caller died: once the TTL is over, the budget is free again.
    CapReservation.objects.filter(pk=first.reservation.id).update(
        expires_at=timezone.now() - timedelta(seconds=1)
    )
    assert caps.reserve(project, request()).allowed


def test_release_drops_the_hold_of_a_call_never_made():
    project = make_project()
    make_plan(project, "pro", cap="5")
    reservation = caps.reserve(project, request()).reservation
    assert reservation is not None
    caps.release(project, reservation.id, "u1")
    assert held(project) == 0


def test_a_settle_after_expiry_still_counts_the_cost():
    project = make_project()
    make_plan(project, "pro", cap="5")
    reservation = caps.reserve(project, request()).reservation
    assert reservation is not None
    CapReservation.objects.all().delete()  # expired and cleaned up meanwhile
    caps.settle(project, reservation, make_record("e1", input_tokens=1000, output_tokens=100))
    assert held(project) == price_usage("gpt-4o", input_tokens=1000, output_tokens=100).usd


def test_past_the_cap_a_downgrade_plan_reserves_the_cheaper_model():
    project = make_project()
    make_plan(project, "pro", cap="1", action=Plan.CapAction.DOWNGRADE)
    set_spend(project, "u1", "1")
    decision = caps.reserve(project, request())
    assert (decision.action, decision.alternative_model) == ("downgrade", "gpt-4o-mini")
    assert decision.reservation is not None
    assert decision.reservation.model == "gpt-4o-mini"
    assert decision.reservation.amount_usd == estimate("gpt-4o-mini")


def test_a_failed_call_settles_at_zero_and_an_unreported_one_keeps_its_estimate():
    project = make_project()
    make_plan(project, "pro", cap="5")
    failed = caps.reserve(project, request()).reservation
    unknown = caps.reserve(project, request()).reservation
    assert failed is not None and unknown is not None
    caps.settle(project, failed, make_record("e1", status="error"))
    caps.settle(project, unknown, make_record("e2", usage_reported=False))
    assert CapReservation.objects.get(pk=failed.id).amount_usd == 0
    assert CapReservation.objects.get(pk=unknown.id).amount_usd == unknown.amount_usd


def test_an_unreachable_store_fails_open_by_default_and_closed_when_asked(caplog):
    project = make_project()
    make_plan(project, "pro", cap="5")
    nowhere = "redis://127.0.0.1:1/0"  # nothing listens on port 1
    with override_settings(WECKR={"CAP_STORE": nowhere}):
        opened = caps.reserve(project, request())
    assert (opened.allowed, opened.reservation) == (True, None)
    assert any("allowing the call of user u1 uncapped" in m for m in caplog.messages)
    with override_settings(WECKR={"CAP_STORE": nowhere, "CAP_FAIL_CLOSED": True}):
        closed = caps.reserve(project, request())
    assert (closed.action, closed.reason) == ("block", "cap_store_unavailable")


def test_a_reservation_id_carries_its_month():
    project = make_project()
    make_plan(project, "pro", cap="5")
    reservation = caps.reserve(project, request()).reservation
    assert isinstance(reservation, Reservation)
    keys = SpendKey.of_reservation(project, reservation.id, "u1", "acme")
    assert keys == (SpendKey.of(project, "u1"), SpendKey.of_account(project, "acme"))
