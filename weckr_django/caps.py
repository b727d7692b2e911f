"""Cap decisions from the monthly rollup: one indexed row read per check."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from weckr_core.backends.base import CapDecision
from weckr_core.pricing import cheaper_alternative
from weckr_django.models import MonthlyUserSpend, Plan, Project
from weckr_django.overrides import alternative_override
from weckr_django.periods import month_start


def monthly_spend(project: Project, user_id: str, when: datetime | None = None) -> Decimal:
    """This month's AI spend of ``user_id`` (project timezone)."""
    spend = (
        MonthlyUserSpend.objects.filter(
            project=project, user_key=user_id, month=month_start(project, when)
        )
        .values_list("cost_usd", flat=True)
        .first()
    )
    return Decimal(0) if spend is None else Decimal(spend)


def decide(project: Project, user_id: str | None, plan_name: str | None, model: str) -> CapDecision:
    """Allow, block or downgrade the next call of ``user_id`` on ``plan_name``.

    No user, an unknown plan or a plan without a cap: allow. At or over the cap:
    the plan's action, falling back to block when there is no cheaper model.
    """
    if not user_id:
        return CapDecision("allow")
    plan = Plan.objects.filter(project=project, name=plan_name).first() if plan_name else None
    if plan is None or plan.monthly_cap_usd is None:
        return CapDecision("allow", None, monthly_spend(project, user_id), None)
    cap = Decimal(plan.monthly_cap_usd)
    spend = monthly_spend(project, user_id)
    if spend < cap:
        return CapDecision("allow", None, spend, cap)
    if plan.cap_action == Plan.CapAction.DOWNGRADE:
        alternative = alternative_override(model) or cheaper_alternative(model)
        if alternative and alternative != model:
            return CapDecision("downgrade", alternative, spend, cap)
    return CapDecision("block", None, spend, cap)
