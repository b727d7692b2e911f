"""Cap decisions: reserve a call's worst-case cost, settle its real cost after it.

What counts against a user's monthly cap is what the monthly rollup has recorded
plus what the cap store holds: the estimate of every call in flight, and the real
cost of every call that has ended but whose usage event is not stored yet. A call
goes ahead only if that total plus its own estimate stays within the cap, decided
atomically per user in every process (see ``stores``). When its event is stored,
ingest drops its reservation in the same transaction as it adds the cost to the
rollup, so nothing is counted twice or lost in between.
"""

from __future__ import annotations

import logging
from datetime import date
from decimal import Decimal

from weckr_core.backends.base import ALLOW, CapDecision, CapRequest, Reservation
from weckr_core.pricing import cheaper_alternative
from weckr_core.records import UsageRecord
from weckr_django.conf import weckr_settings
from weckr_django.models import Project
from weckr_django.overrides import alternative_override
from weckr_django.periods import month_start
from weckr_django.plans import PlanMatch, PlanTerms, match_plan
from weckr_django.stores import CapStoreUnavailable, SpendKey, cap_store

logger = logging.getLogger("weckr_django")


def decide(project: Project, user_id: str | None, plan_name: str | None, model: str) -> CapDecision:
    """Allow, block or downgrade the next call of ``user_id``, holding nothing (the
    answer of ``GET /api/v1/check``)."""
    if not user_id:
        return ALLOW
    match = match_plan(project, plan_name)
    if match.refused:
        return _unknown_plan(project, match)
    terms = match.terms
    if terms is None or terms.monthly_cap_usd is None:
        return CapDecision("allow", plan=match.name)
    try:
        spend = cap_store().spend(SpendKey.of(project, user_id))
    except CapStoreUnavailable as error:
        return _store_down(error, user_id, match)
    cap = terms.monthly_cap_usd
    if spend.total < cap:
        return CapDecision("allow", None, spend.total, cap, None, spend.held, terms.name)
    return _over_cap(terms, model, spend.total, spend.held)


def reserve(project: Project, request: CapRequest) -> CapDecision:
    """Decide the call and, under a cap, hold its estimated cost for it."""
    user_id = request.user_id
    if not user_id:
        return ALLOW
    match = match_plan(project, request.plan)
    if match.refused:
        return _unknown_plan(project, match)
    terms = match.terms
    if terms is None or terms.monthly_cap_usd is None:
        return CapDecision("allow", plan=match.name)
    cap = terms.monthly_cap_usd
    store = cap_store()
    key = SpendKey.of(project, user_id)
    ttl = weckr_settings.CAP_RESERVATION_TTL_SECONDS
    default_output = project.default_output_tokens
    try:
        amount = request.estimated_cost(None, default_output)
        hold = store.reserve(key, amount, cap, ttl)
        if hold.reservation_id is not None:
            reservation = Reservation(hold.reservation_id, amount, request.model, user_id)
            return CapDecision(
                "allow", None, hold.spend.total, cap, reservation, hold.spend.held, terms.name
            )
        alternative = _alternative(terms, request.model)
        if alternative is None:
            return CapDecision(
                "block", None, hold.spend.total, cap, None, hold.spend.held, terms.name, "cap"
            )
        # Past the cap on a downgrade plan: the cheaper model, held at its own estimate.
        cheaper = request.estimated_cost(alternative, default_output)
        downgraded = store.reserve(key, cheaper, None, ttl)
    except CapStoreUnavailable as error:
        return _store_down(error, user_id, match)
    assert downgraded.reservation_id is not None
    reservation = Reservation(downgraded.reservation_id, cheaper, alternative, user_id)
    return CapDecision(
        "downgrade",
        alternative,
        hold.spend.total,
        cap,
        reservation,
        hold.spend.held,
        terms.name,
        "cap",
    )


def settle(project: Project, reservation: Reservation, record: UsageRecord) -> None:
    """Replace the estimate held for ``reservation`` with what the call cost."""
    user_id = reservation.user_id or record.user_id or ""
    key = SpendKey.of_reservation(project, user_id, reservation.id)
    cap_store().settle(key, reservation.id, reservation.cost_of(record))


def release(project: Project, reservation_id: str, user_id: str) -> None:
    """The call of a reservation of ``user_id`` was never made."""
    key = SpendKey.of_reservation(project, user_id, reservation_id)
    cap_store().release(key, reservation_id)


def _alternative(terms: PlanTerms, model: str) -> str | None:
    if terms.cap_action != "downgrade":
        return None
    alternative = alternative_override(model) or cheaper_alternative(model)
    return alternative if alternative and alternative != model else None


def _over_cap(terms: PlanTerms, model: str, spend: Decimal, held: Decimal) -> CapDecision:
    """``decide``'s answer at or past the cap: the plan's action, nothing held."""
    cap = terms.monthly_cap_usd
    alternative = _alternative(terms, model)
    if alternative is not None:
        return CapDecision("downgrade", alternative, spend, cap, None, held, terms.name, "cap")
    return CapDecision("block", None, spend, cap, None, held, terms.name, "cap")


def _unknown_plan(project: Project, match: PlanMatch) -> CapDecision:
    _note_refusal(project, match.requested)
    return CapDecision("block", plan=match.requested, reason="unknown_plan")


_refusals_noted: set[tuple[object, str | None, date]] = set()


def _note_refusal(project: Project, plan_name: str | None) -> None:
    """Tell the founder, once per plan name and month from this process: an alert,
    and the dashboard's banner (refused calls leave no usage behind)."""
    key = (project.pk, plan_name, month_start(project))
    if key in _refusals_noted:
        return
    if len(_refusals_noted) > 10_000:
        _refusals_noted.clear()
    _refusals_noted.add(key)
    from weckr_django import tasks

    try:
        tasks.run_task(tasks.unknown_plan_refused, str(project.pk), plan_name)
    except Exception:
        logger.exception("Weckr: could not note calls refused on plan %r.", plan_name)


def _store_down(error: CapStoreUnavailable, user_id: str, match: PlanMatch) -> CapDecision:
    if weckr_settings.CAP_FAIL_CLOSED:
        logger.error(
            "Weckr: cap store unavailable (%s); refusing the call of user %s "
            "(WECKR['CAP_FAIL_CLOSED']).",
            error,
            user_id,
        )
        return CapDecision("block", plan=match.name, reason="cap_store_unavailable")
    logger.error(
        "Weckr: cap store unavailable (%s); allowing the call of user %s uncapped "
        "(set WECKR['CAP_FAIL_CLOSED'] to refuse instead).",
        error,
        user_id,
    )
    return CapDecision("allow", plan=match.name, reason="cap_store_unavailable")
