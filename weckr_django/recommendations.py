"""Advice computed from the rollups: cheaper models per feature, and plan prices.

Both are read-only functions over ``DailyUsage`` and ``MonthlyUserSpend`` for one
calendar month in the project's timezone; nothing here scans ``UsageEvent``.

Model swaps
    For each (feature, model) pair of the month whose model has a cheaper
    same-provider alternative (``weckr_core.pricing.cheaper_alternative``, admin
    overrides included) and whose calls are small (average output tokens per call
    ``output_tokens / calls`` below ``max_avg_output_tokens``, default 1,000):

    - current cost = the recorded cost of those calls this month;
    - projected cost = the same token mix priced at the alternative's rates::

          ((input - cached) * input_rate + cached * cache_read_rate
           + cache_writes * cache_write_rate + output * output_rate) / 1,000,000

      where output includes reasoning tokens, and each rate is the alternative's
      tier for the average prompt per call ``(input + cache_writes) // calls``;
    - saving to date = current - projected;
    - monthly saving = saving to date * days_in_month / days_elapsed, where
      days_elapsed counts the month's days up to and including today (project
      timezone), or the whole month for a past month.

    A pair is recommended only with at least ``min_calls`` calls (10) this month and
    a monthly saving of at least ``min_monthly_saving_usd`` ($1). Pairs with calls to
    an unpriced model are skipped (their cost is unknown). Confidence comes from the
    pair's calls: low under 50, medium under 500, high from 500. Sorted by monthly
    saving, largest first.

Plan pricing
    Per plan, over the users (calls with no user excluded) whose latest call this
    month was on the plan:

    - average cost = total cost / users;
    - p90 cost, nearest rank: with the users' costs sorted ascending
      ``c[1] <= ... <= c[n]``, p90 = ``c[ceil(0.9 * n)]`` (the smallest cost that
      at least 90% of the users do not exceed);
    - unprofitable users: cost > plan price; loss = sum of (cost - price) over them;
    - recommended price = ``ceil(p90 / target_share)`` to whole dollars, where
      ``target_share`` is ``Project.target_ai_cost_share`` (default 0.30), offered
      only when it exceeds the current price; monthly gain = users * (recommended
      - current price).

    The plan price is ``Plan.monthly_price_usd``, else the price the clients
    reported (as in ``reports``). Below 5 users or 30 calls the status is
    ``insufficient_data`` and no price is recommended.
"""

from __future__ import annotations

import calendar
import math
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import ROUND_CEILING, ROUND_HALF_UP, Decimal
from typing import Any, Literal

from django.db.models import Max, Sum

from weckr_core.pricing import cheaper_alternative, price_usage, resolve_pricing
from weckr_django.models import ANONYMOUS_KEY, DailyUsage, MonthlyUserSpend, Project
from weckr_django.periods import local_day, month_start, next_month
from weckr_django.reports import account_margins, account_members, plan_prices

Confidence = Literal["low", "medium", "high"]
PlanStatus = Literal["insufficient_data", "no_price", "free", "raise_price", "ok"]

MAX_AVG_OUTPUT_TOKENS = 1_000
MIN_SWAP_CALLS = 10
MIN_MONTHLY_SAVING_USD = Decimal("1")
MIN_PLAN_USERS = 5
MIN_PLAN_CALLS = 30
P90 = Decimal("0.9")

_ZERO = Decimal(0)
_CENTS = Decimal("0.01")
_MICRO = Decimal("0.000001")


@dataclass(frozen=True, slots=True)
class ModelSwap:
    feature: str
    """Empty when the calls carried no feature."""
    provider: str
    current_model: str
    suggested_model: str
    calls: int
    avg_output_tokens: Decimal
    current_cost_usd: Decimal
    """Month to date."""
    projected_cost_usd: Decimal
    """Month to date, had the calls gone to ``suggested_model``."""
    saving_to_date_usd: Decimal
    monthly_saving_usd: Decimal
    confidence: Confidence


@dataclass(frozen=True, slots=True)
class PlanPricing:
    """A plan's price against what its payers cost. A payer is whoever pays the
    price: a user on their own, an account (flat billing), or an account's seat
    (per-seat billing, the account's cost shared over its seats); ``users`` counts
    them and ``payers`` says which they are."""

    plan_name: str
    price_usd: Decimal | None
    users: int
    calls: int
    total_cost_usd: Decimal
    avg_cost_usd: Decimal | None
    p90_cost_usd: Decimal | None
    unprofitable_users: int
    loss_usd: Decimal
    recommended_price_usd: Decimal | None
    monthly_gain_usd: Decimal | None
    status: PlanStatus
    payers: tuple[str, ...] = ("users",)


@dataclass(frozen=True, slots=True)
class MonthProgress:
    month: date
    days_elapsed: int
    days_in_month: int


def month_progress(project: Project, now: datetime | None = None) -> MonthProgress:
    """The month holding ``now`` (project timezone) and how many of its days have begun."""
    now = now or datetime.now(UTC)
    today = local_day(project, now)
    days_in_month = calendar.monthrange(today.year, today.month)[1]
    return MonthProgress(month_start(project, now), today.day, days_in_month)


def confidence_for(calls: int) -> Confidence:
    if calls < 50:
        return "low"
    if calls < 500:
        return "medium"
    return "high"


def percentile_nearest_rank(values: Iterable[Decimal], fraction: Decimal) -> Decimal:
    """Nearest-rank percentile: the ``ceil(fraction * n)``-th smallest value."""
    ordered = sorted(values)
    if not ordered:
        raise ValueError("A percentile of no values is undefined.")
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], not {fraction}.")
    rank = math.ceil(fraction * len(ordered))
    return ordered[rank - 1]


def model_swap_recommendations(
    project: Project,
    *,
    now: datetime | None = None,
    max_avg_output_tokens: int = MAX_AVG_OUTPUT_TOKENS,
    min_calls: int = MIN_SWAP_CALLS,
    min_monthly_saving_usd: Decimal = MIN_MONTHLY_SAVING_USD,
) -> list[ModelSwap]:
    """Cheaper same-provider models per feature for the month holding ``now``."""
    progress = month_progress(project, now)
    rows = (
        DailyUsage.objects.filter(
            project=project, day__gte=progress.month, day__lt=next_month(progress.month)
        )
        .values("feature", "model")
        .annotate(
            provider_name=Max("provider"),
            calls_sum=Sum("calls"),
            unpriced=Sum("unpriced_calls"),
            cost=Sum("cost_usd"),
            input_sum=Sum("input_tokens"),
            output_sum=Sum("output_tokens"),
            cached_sum=Sum("cached_input_tokens"),
            writes_sum=Sum("cache_creation_tokens"),
            reasoning_sum=Sum("reasoning_tokens"),
        )
        .order_by()
    )
    swaps: list[ModelSwap] = []
    for row in rows:
        calls = int(row["calls_sum"] or 0)
        if calls < min_calls or row["unpriced"]:
            continue
        avg_output = Decimal(int(row["output_sum"] or 0)) / calls
        if avg_output >= max_avg_output_tokens:
            continue
        model: str = row["model"]
        provider: str = row["provider_name"] or ""
        suggested = cheaper_alternative(model)
        if not suggested:
            continue
        current_pricing = resolve_pricing(model, provider or None)
        suggested_pricing = resolve_pricing(suggested, provider or None)
        if not (current_pricing.priced and suggested_pricing.priced):
            continue
        if current_pricing.provider != suggested_pricing.provider:
            continue  # never advise switching vendors
        current = Decimal(row["cost"] or 0)
        projected = price_usage(
            suggested,
            provider=provider or None,
            input_tokens=row["input_sum"] or 0,
            output_tokens=row["output_sum"] or 0,
            cached_input_tokens=row["cached_sum"] or 0,
            cache_creation_tokens=row["writes_sum"] or 0,
            reasoning_tokens=row["reasoning_sum"] or 0,
            calls=calls,
        ).usd
        saving = current - projected
        monthly = saving * progress.days_in_month / progress.days_elapsed
        if monthly < min_monthly_saving_usd:
            continue
        swaps.append(
            ModelSwap(
                feature=row["feature"],
                provider=provider,
                current_model=model,
                suggested_model=suggested,
                calls=calls,
                avg_output_tokens=avg_output,
                current_cost_usd=current,
                projected_cost_usd=projected,
                saving_to_date_usd=saving,
                monthly_saving_usd=monthly,
                confidence=confidence_for(calls),
            )
        )
    swaps.sort(key=lambda swap: (-swap.monthly_saving_usd, swap.feature, swap.current_model))
    return swaps


def recommended_price(p90_cost: Decimal, target_share: Decimal) -> Decimal:
    """The whole-dollar price at which the p90 user's AI cost is ``target_share`` of it."""
    if target_share <= 0:
        raise ValueError(f"The target AI cost share must be above 0, not {target_share}.")
    return (p90_cost / target_share).to_integral_value(rounding=ROUND_CEILING)


def plan_pricing_recommendations(
    project: Project,
    *,
    now: datetime | None = None,
    min_users: int = MIN_PLAN_USERS,
    min_calls: int = MIN_PLAN_CALLS,
) -> list[PlanPricing]:
    """One row per plan with payers this month, and per configured plan, cheapest
    first. Where calls name accounts, the account pays: its cost (or its cost per
    seat, on a per-seat plan) is compared with the price, not its users' costs."""
    share = Decimal(project.target_ai_cost_share)
    month = month_progress(project, now).month
    prices = plan_prices(project)
    costs: dict[str, list[Decimal]] = defaultdict(list)
    weights: dict[str, int] = defaultdict(int)  # what pays the price: users, accounts, seats
    payers: dict[str, set[str]] = defaultdict(set)
    calls: dict[str, int] = defaultdict(int)
    reported: dict[str, Decimal] = {}
    members = account_members(project, month)
    rows = (
        MonthlyUserSpend.objects.filter(project=project, month=month)
        .exclude(user_key=ANONYMOUS_KEY)
        .exclude(plan_name__isnull=True)
        .values_list("user_key", "plan_name", "cost_usd", "calls", "plan_revenue_usd")
    )
    for user_key, plan_name, cost, user_calls, revenue in rows:
        if not plan_name or user_key in members:
            continue  # no plan, no price to compare with; or the account pays
        costs[plan_name].append(Decimal(cost))
        weights[plan_name] += 1
        payers[plan_name].add("users")
        calls[plan_name] += user_calls
        if revenue is not None:
            reported[plan_name] = max(revenue, reported.get(plan_name, revenue))
    for account in account_margins(project, month):
        if not account.plan_name:
            continue
        per_seat = account.per_seat and account.seats > 0
        costs[account.plan_name].append(
            account.cost_usd / account.seats if per_seat else account.cost_usd
        )
        weights[account.plan_name] += account.seats if per_seat else 1
        payers[account.plan_name].add("seats" if per_seat else "accounts")
        calls[account.plan_name] += account.calls

    result = [
        _plan_row(
            name,
            prices.get(name, reported.get(name)),
            costs.get(name, []),
            calls.get(name, 0),
            share,
            min_users,
            min_calls,
            weights.get(name, 0),
            tuple(sorted(payers.get(name, {"users"}))),
        )
        for name in set(prices) | set(costs)
    ]
    result.sort(key=lambda row: (row.price_usd is None, row.price_usd or _ZERO, row.plan_name))
    return result


def _plan_row(
    name: str,
    price: Decimal | None,
    costs: list[Decimal],
    calls: int,
    share: Decimal,
    min_users: int,
    min_calls: int,
    paying: int,
    payers: tuple[str, ...],
) -> PlanPricing:
    users = len(costs)
    total = sum(costs, _ZERO)
    avg = total / users if users else None
    p90 = percentile_nearest_rank(costs, P90) if costs else None
    # A $0 plan is the free tier: a cost to watch, with no price to raise or users
    # who lose money on it.
    free = price is not None and price == 0
    losers = [cost - price for cost in costs if price is not None and cost > price and not free]
    status: PlanStatus
    recommended = gain = None
    if free:
        status = "free"
    elif users < min_users or calls < min_calls:
        status = "insufficient_data"
    elif price is None or p90 is None:
        status = "no_price"
    else:
        target = recommended_price(p90, share)
        if target > price:
            status = "raise_price"
            recommended = target
            gain = paying * (target - price)
        else:
            status = "ok"
    return PlanPricing(
        plan_name=name,
        price_usd=price,
        users=users,
        calls=calls,
        total_cost_usd=total,
        avg_cost_usd=avg,
        p90_cost_usd=p90,
        unprofitable_users=len(losers),
        loss_usd=sum(losers, _ZERO),
        recommended_price_usd=recommended,
        monthly_gain_usd=gain,
        status=status,
        payers=payers,
    )


def money(value: Decimal | None, places: Decimal = _CENTS) -> float | None:
    """A JSON number: costs keep micro-dollars, prices and monthly figures cents."""
    return None if value is None else float(value.quantize(places, rounding=ROUND_HALF_UP))


def model_recommendations_payload(
    project: Project, *, now: datetime | None = None
) -> dict[str, Any]:
    """``GET /api/v1/recommendations/models/<project_id>``."""
    progress = month_progress(project, now)
    return {
        "projectId": str(project.pk),
        "month": progress.month.strftime("%Y-%m"),
        "daysElapsed": progress.days_elapsed,
        "daysInMonth": progress.days_in_month,
        "recommendations": [
            {
                "feature": swap.feature or None,
                "provider": swap.provider,
                "currentModel": swap.current_model,
                "suggestedModel": swap.suggested_model,
                "calls": swap.calls,
                "avgOutputTokens": round(float(swap.avg_output_tokens), 1),
                "currentCostUsd": money(swap.current_cost_usd, _MICRO),
                "projectedCostUsd": money(swap.projected_cost_usd, _MICRO),
                "savingToDateUsd": money(swap.saving_to_date_usd, _MICRO),
                "monthlySavingUsd": money(swap.monthly_saving_usd),
                "confidence": swap.confidence,
            }
            for swap in model_swap_recommendations(project, now=now)
        ],
    }


def pricing_recommendations_payload(
    project: Project, *, now: datetime | None = None
) -> dict[str, Any]:
    """``GET /api/v1/recommendations/pricing/<project_id>``."""
    progress = month_progress(project, now)
    return {
        "projectId": str(project.pk),
        "month": progress.month.strftime("%Y-%m"),
        "targetAiCostShare": float(project.target_ai_cost_share),
        "plans": [
            {
                "planName": plan.plan_name,
                "priceUsd": money(plan.price_usd),
                "users": plan.users,
                "calls": plan.calls,
                "avgCostUsd": money(plan.avg_cost_usd, _MICRO),
                "p90CostUsd": money(plan.p90_cost_usd, _MICRO),
                "unprofitableUsers": plan.unprofitable_users,
                "lossUsd": money(plan.loss_usd),
                "recommendedPriceUsd": money(plan.recommended_price_usd),
                "monthlyGainUsd": money(plan.monthly_gain_usd),
                "status": plan.status,
                "pricedPer": list(plan.payers),
            }
            for plan in plan_pricing_recommendations(project, now=now)
        ],
    }
