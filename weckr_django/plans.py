"""Which configured plan applies to a call: name matching, defaults, unknown plans.

The rules, in order:

1. No plan given (a signed-in user the plan resolver found no plan for): the plan
   named by ``WECKR["DEFAULT_PLAN"]``, if set.
2. The name matches a plan of the project ignoring case and surrounding spaces
   ("Free" and " free" are the plan "free"; plan names are unique that way).
3. A project with no plans at all caps nothing (the dashboard and ``manage.py
   check`` say so).
4. Otherwise the plan is unknown and ``WECKR["UNKNOWN_PLAN"]`` decides: "block"
   (the default) refuses the call, "allow" lets it through uncapped, and a plan name
   applies that plan's cap.

Plans are read once per project and kept for ``CAP_CACHE_SECONDS``; a plan saved or
deleted in this process is seen at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Literal

from weckr_django.caching import ExpiringCache
from weckr_django.conf import weckr_settings
from weckr_django.models import Plan, Project

CapActionName = Literal["block", "downgrade"]


@dataclass(frozen=True, slots=True)
class PlanTerms:
    """A configured plan, as caps and margins read it."""

    name: str
    monthly_price_usd: Decimal
    monthly_cap_usd: Decimal | None
    cap_action: CapActionName
    soft_alert_percent: int
    per_seat: bool = False
    account_cap_usd: Decimal | None = None

    @classmethod
    def of(cls, plan: Plan) -> PlanTerms:
        return cls(
            name=plan.name,
            monthly_price_usd=Decimal(plan.monthly_price_usd),
            monthly_cap_usd=_amount(plan.monthly_cap_usd),
            cap_action="downgrade" if plan.cap_action == Plan.CapAction.DOWNGRADE else "block",
            soft_alert_percent=plan.soft_alert_percent,
            per_seat=plan.billing == Plan.Billing.PER_SEAT,
            account_cap_usd=_amount(plan.account_monthly_cap_usd),
        )


def _amount(value: Decimal | None) -> Decimal | None:
    return None if value is None else Decimal(value)


@dataclass(frozen=True, slots=True)
class PlanMatch:
    """The outcome of the rules above for one plan name.

    ``terms`` is the plan whose cap applies (None: no cap); ``known`` says the name
    (or ``DEFAULT_PLAN``) is a configured plan; ``refused`` that the call is refused
    because it is not.
    """

    requested: str | None
    terms: PlanTerms | None
    known: bool
    refused: bool = False

    @property
    def name(self) -> str | None:
        """The plan name to store with the call: the configured spelling when known."""
        if self.known and self.terms is not None:
            return self.terms.name
        return self.requested


def normalized(name: str) -> str:
    return name.strip().casefold()


def match_plan(project: Project, name: str | None) -> PlanMatch:
    plans = configured_plans(project)
    wanted = name if name and name.strip() else weckr_settings.DEFAULT_PLAN
    terms = plans.get(normalized(wanted)) if wanted else None
    if terms is not None:
        return PlanMatch(wanted, terms, known=True)
    if not plans:
        return PlanMatch(wanted, None, known=False)
    rule = weckr_settings.UNKNOWN_PLAN
    if rule == "allow":
        return PlanMatch(wanted, None, known=False)
    fallback = None if rule == "block" else plans.get(normalized(rule))
    # A fallback that names no plan refuses too (``manage.py check`` reports it).
    return PlanMatch(wanted, fallback, known=False, refused=fallback is None)


def unknown_plan_rule() -> str:
    """What happens to calls on unknown plans, in a sentence."""
    rule = weckr_settings.UNKNOWN_PLAN
    if rule == "block":
        return "Their calls are refused (WECKR['UNKNOWN_PLAN'] is 'block')."
    if rule == "allow":
        return "Their calls are not capped (WECKR['UNKNOWN_PLAN'] is 'allow')."
    return f"The cap of plan {rule!r} applies to them (WECKR['UNKNOWN_PLAN'])."


_plans: ExpiringCache[dict[str, PlanTerms]] = ExpiringCache("weckr_plans")


def configured_plans(project: Project) -> dict[str, PlanTerms]:
    """The project's plans by normalized name."""
    return _plans.get(
        project.pk,
        lambda: {normalized(plan.name): PlanTerms.of(plan) for plan in project.plans.all()},
    )


def forget_plans() -> None:
    """Read the plans again on next use."""
    _plans.clear()


def connect_signals() -> None:
    _plans.clear_on_change(Plan)
