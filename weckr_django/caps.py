"""Cap decisions: reserve a call's worst-case cost, settle its real cost after it.

A call counts against up to two budgets: its user's (the plan's per-user cap) and,
when it names an account, the account's (the plan's account cap, all the
account's users together). What counts against a budget's monthly cap is what its
monthly rollup has recorded plus what the cap store holds: the estimate of every
call in flight, and the real cost of every call that has ended but whose usage
event is not stored yet. A call goes ahead only if, for every capped budget, that
total plus its own estimate stays within the cap, decided atomically in every
process (see ``stores``); a refusal names the budget that stopped it. When its
event is stored, ingest drops its reservation in the same transaction as it adds
the cost to the rollups, so nothing is counted twice or lost in between.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import date
from decimal import Decimal

from weckr_core.backends.base import ALLOW, CapAction, CapDecision, CapRequest, Reservation
from weckr_core.caps import budget_to_report
from weckr_core.errors import CapKind
from weckr_core.pricing import cheaper_alternative
from weckr_core.records import UsageRecord
from weckr_django.conf import weckr_settings
from weckr_django.models import Project
from weckr_django.overrides import alternative_override
from weckr_django.periods import month_start
from weckr_django.plans import PlanMatch, PlanTerms, match_plan
from weckr_django.stores import Budget, CapStoreUnavailable, Spend, SpendKey, cap_store

logger = logging.getLogger("weckr_django")


def budgets(
    project: Project, terms: PlanTerms | None, user_id: str | None, account_id: str | None
) -> list[Budget]:
    """The budgets a call of the user in the account counts against, each with the
    plan's cap for it; empty when the plan caps neither."""
    if terms is None:
        return []
    user_cap = terms.monthly_cap_usd if user_id else None
    account_cap = terms.account_cap_usd if account_id else None
    if user_cap is None and account_cap is None:
        return []
    keys = SpendKey.of_call(project, user_id, account_id, month_start(project))
    caps = {"user": user_cap, "account": account_cap}
    return [Budget(key, caps[key.scope]) for key in keys]


def decide(
    project: Project,
    user_id: str | None,
    plan_name: str | None,
    model: str,
    account_id: str | None = None,
) -> CapDecision:
    """Allow, block or downgrade the next call of ``user_id`` (in ``account_id``),
    holding nothing (the answer of ``GET /api/v1/check``)."""
    if not user_id and not account_id:
        return ALLOW
    match = match_plan(project, plan_name)
    if match.refused:
        return _unknown_plan(project, match)
    terms = match.terms
    capped = budgets(project, terms, user_id, account_id)
    if terms is None or not capped:
        return CapDecision("allow", plan=match.name)
    try:
        spends = cap_store().spends([budget.key for budget in capped])
    except CapStoreUnavailable as error:
        return _store_down(error, _caller(user_id, account_id), match)
    at, refused = _reported(capped, spends)
    if not refused:
        return _decision("allow", capped[at], spends[at], terms)
    alternative = _alternative(terms, model)
    action: CapAction = "block" if alternative is None else "downgrade"
    return _decision(action, capped[at], spends[at], terms, alternative=alternative, reason="cap")


def reserve(project: Project, request: CapRequest) -> CapDecision:
    """Decide the call and, under a cap, hold its estimated cost against every budget
    it counts against."""
    user_id, account_id = request.user_id, request.account_id
    if not user_id and not account_id:
        return ALLOW
    match = match_plan(project, request.plan)
    if match.refused:
        return _unknown_plan(project, match)
    terms = match.terms
    capped = budgets(project, terms, user_id, account_id)
    if terms is None or not capped:
        return CapDecision("allow", plan=match.name)
    store = cap_store()
    ttl = weckr_settings.CAP_RESERVATION_TTL_SECONDS
    default_output = project.default_output_tokens
    try:
        amount = request.estimated_cost(None, default_output)
        hold = store.reserve(capped, amount, ttl)
        # The store decided (atomically); the same rule names the budget to report.
        at, _ = _reported(capped, hold.spends, amount)
        if hold.reservation_id is not None:
            reservation = Reservation(
                hold.reservation_id, amount, request.model, user_id, account_id
            )
            return _decision("allow", capped[at], hold.spends[at], terms, reservation)
        alternative = _alternative(terms, request.model)
        if alternative is None:
            return _decision("block", capped[at], hold.spends[at], terms, reason="cap")
        # Past a cap on a downgrade plan: the cheaper model, held at its own estimate.
        cheaper = request.estimated_cost(alternative, default_output)
        uncapped = [Budget(budget.key, None) for budget in capped]
        downgraded = store.reserve(uncapped, cheaper, ttl)
    except CapStoreUnavailable as error:
        return _store_down(error, _caller(user_id, account_id), match)
    assert downgraded.reservation_id is not None
    reservation = Reservation(downgraded.reservation_id, cheaper, alternative, user_id, account_id)
    return _decision(
        "downgrade", capped[at], hold.spends[at], terms, reservation, alternative, "cap"
    )


def settle(project: Project, reservation: Reservation, record: UsageRecord) -> None:
    """Replace the estimate held for ``reservation`` with what the call cost."""
    keys = SpendKey.of_reservation(
        project,
        reservation.id,
        reservation.user_id or record.user_id,
        reservation.account_id or record.account_id,
    )
    if keys:
        cap_store().settle(keys, reservation.id, reservation.cost_of(record))


def release(
    project: Project, reservation_id: str, user_id: str | None, account_id: str | None = None
) -> None:
    """The call of a reservation of ``user_id`` (in ``account_id``) was never made."""
    keys = SpendKey.of_reservation(project, reservation_id, user_id, account_id)
    if keys:
        cap_store().release(keys, reservation_id)


def _reported(
    capped: Sequence[Budget], spends: Sequence[Spend], amount: Decimal | None = None
) -> tuple[int, bool]:
    """``budget_to_report`` for the store's budgets and spends."""
    return budget_to_report(
        [budget.cap for budget in capped], [spend.total for spend in spends], amount
    )


def _decision(
    action: CapAction,
    budget: Budget,
    spend: Spend,
    terms: PlanTerms,
    reservation: Reservation | None = None,
    alternative: str | None = None,
    reason: CapKind | None = None,
) -> CapDecision:
    """The decision, reporting ``budget``'s spend and cap."""
    return CapDecision(
        action,
        alternative,
        spend.total,
        budget.cap,
        reservation,
        spend.held,
        terms.name,
        reason,
        budget.key.key if budget.key.scope == "account" else None,
    )


def _alternative(terms: PlanTerms, model: str) -> str | None:
    if terms.cap_action != "downgrade":
        return None
    alternative = alternative_override(model) or cheaper_alternative(model)
    return alternative if alternative and alternative != model else None


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


def _caller(user_id: str | None, account_id: str | None) -> str:
    """Who a call is for, in words."""
    if user_id and account_id:
        return f"user {user_id} of account {account_id}"
    return f"user {user_id}" if user_id else f"account {account_id}"


def _store_down(error: CapStoreUnavailable, caller: str, match: PlanMatch) -> CapDecision:
    if weckr_settings.CAP_FAIL_CLOSED:
        logger.error(
            "Weckr: cap store unavailable (%s); refusing the call of %s "
            "(WECKR['CAP_FAIL_CLOSED']).",
            error,
            caller,
        )
        return CapDecision("block", plan=match.name, reason="cap_store_unavailable")
    logger.error(
        "Weckr: cap store unavailable (%s); allowing the call of %s uncapped "
        "(set WECKR['CAP_FAIL_CLOSED'] to refuse instead).",
        error,
        caller,
    )
    return CapDecision("allow", plan=match.name, reason="cap_store_unavailable")
