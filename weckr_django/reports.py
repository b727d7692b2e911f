"""Read queries over the rollups: margins per user, cost against revenue per day,
cost per feature, per model and per user. The API and the dashboard both answer
from here; nothing in this module scans ``UsageEvent``.

Margin is per user per calendar month in the project's timezone: the monthly price
of the user's plan (``Plan.monthly_price_usd`` by plan name, else the price the
client reported) minus the cost of the user's calls. Revenue is never summed per
call. Calls made with no user are one "(anonymous)" row with no revenue; they count
in the totals but not as an unprofitable *user*.

An account (the customer who pays for several users) has its own margin: its plan's
price (flat) or the price times its seats (per seat), minus all its users' calls.
"""

from __future__ import annotations

import calendar
from collections import defaultdict
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from datetime import date, timedelta
from decimal import Decimal
from typing import Literal

from django.db.models import Count, Max, Q, QuerySet, Sum
from django.utils import timezone

from weckr_django.conf import weckr_settings
from weckr_django.models import (
    ANONYMOUS_KEY,
    AlertLog,
    DailyAccountUsage,
    DailyUsage,
    MonthlyAccountSpend,
    MonthlyAccountUserSpend,
    MonthlyUserSpend,
    Plan,
    Project,
    user_key_label,
)
from weckr_django.periods import local_day, month_bounds, month_start, next_month
from weckr_django.plans import configured_plans

MarginStatus = Literal["profitable", "watch", "unprofitable"]
#: A user's status: their margin's; "free" for a signed-in user who pays nothing (a
#: $0 plan, or none): a cost of the free tier, not an unprofitable customer; or
#: "paid_by_account" for a user of an account.
UserStatus = Literal["profitable", "watch", "unprofitable", "free", "paid_by_account"]
#: A user whose AI cost reaches this share of their plan's price is on watch.
WATCH_COST_SHARE = Decimal("0.70")
NO_FEATURE_LABEL = "(no feature)"
ZERO = Decimal(0)


class _Margin:
    """The margin and status of a user's or an account's month."""

    __slots__ = ()
    cost_usd: Decimal
    revenue_usd: Decimal | None

    @property
    def margin_usd(self) -> Decimal:
        return margin_of(self.cost_usd, self.revenue_usd)

    @property
    def status(self) -> UserStatus:
        """The margin's status (a user of an account overrides it)."""
        return margin_status(self.cost_usd, self.revenue_usd or ZERO)


@dataclass(frozen=True, slots=True)
class UserMargin(_Margin):
    user_key: str
    plan_name: str | None
    cost_usd: Decimal
    revenue_usd: Decimal | None
    calls: int
    accounts: tuple[str, ...] = ()  # the accounts the user's calls this month ran under
    #: The user's share of those accounts' AI cost this month, in percent.
    account_share_percent: Decimal | None = None

    @property
    def is_anonymous(self) -> bool:
        return self.user_key == ANONYMOUS_KEY

    @property
    def paid_by_account(self) -> bool:
        """The user's calls ran under an account, which pays the plan: the user has a
        share of the account's cost, not a revenue or margin of their own."""
        return bool(self.accounts)

    @property
    def is_free(self) -> bool:
        """A signed-in user who pays nothing, on their own: on a $0 plan, or on no
        plan at all (a plan Weckr does not know is not free: its price is unknown)."""
        if self.is_anonymous or self.paid_by_account:
            return False
        return self.revenue_usd == 0 or (self.revenue_usd is None and self.plan_name is None)

    @property
    def status(self) -> UserStatus:
        if self.paid_by_account:
            return "paid_by_account"
        if self.is_free:
            return "free"
        return margin_status(self.cost_usd, self.revenue_usd or ZERO)

    @property
    def label(self) -> str:
        return user_key_label(self.user_key)

    @classmethod
    def of_spend(
        cls,
        row: MonthlyUserSpend,
        prices: Mapping[str, Decimal],
        membership: Membership | None = None,
    ) -> UserMargin:
        """The margin of one monthly rollup row (``prices`` from ``plan_prices``,
        ``membership`` from ``account_members``): a user of an account earns nothing
        of their own."""
        accounts, share = membership or ((), None)
        return cls(
            user_key=row.user_key,
            plan_name=row.plan_name,
            cost_usd=row.cost_usd,
            revenue_usd=None
            if accounts
            else _revenue(row.user_key, row.plan_name, row.plan_revenue_usd, prices),
            calls=row.calls,
            accounts=accounts,
            account_share_percent=share,
        )


#: The accounts a user's calls of a month ran under, and the user's share in percent
#: of those accounts' AI cost.
Membership = tuple[tuple[str, ...], Decimal | None]


def account_members(
    project: Project, month: date, user_keys: Collection[str] | None = None
) -> dict[str, Membership]:
    """Each user whose calls in ``month`` ran under an account (of ``user_keys``, or
    all): their accounts and their share of those accounts' cost."""
    rows = MonthlyAccountUserSpend.objects.filter(project=project, month=month)
    if user_keys is not None:
        rows = rows.filter(user_key__in=list(user_keys))
    spent: dict[str, list[tuple[str, Decimal]]] = defaultdict(list)
    for account, user_key, cost in rows.order_by("account_key").values_list(
        "account_key", "user_key", "cost_usd"
    ):
        spent[user_key].append((account, cost))
    totals = dict(
        MonthlyAccountSpend.objects.filter(
            project=project,
            month=month,
            account_key__in={account for pairs in spent.values() for account, _ in pairs},
        ).values_list("account_key", "cost_usd")
    )
    members: dict[str, Membership] = {}
    for user_key, pairs in spent.items():
        accounts = tuple(account for account, _ in pairs)
        total = sum((totals.get(account, ZERO) for account in accounts), ZERO)
        own = sum((cost for _, cost in pairs), ZERO)
        members[user_key] = (accounts, own * 100 / total if total else None)
    return members


@dataclass(frozen=True, slots=True)
class FeatureCost:
    feature: str
    cost_usd: Decimal
    calls: int
    share_percent: Decimal

    @property
    def average_cost_usd(self) -> Decimal:
        return self.cost_usd / self.calls if self.calls else ZERO


@dataclass(frozen=True, slots=True)
class DayFigures:
    day: date
    cost_usd: Decimal
    revenue_usd: Decimal


@dataclass(frozen=True, slots=True)
class MonthSummary:
    month: date
    cost_usd: Decimal
    revenue_usd: Decimal
    calls: int
    unprofitable_users: int
    #: What the unprofitable users and accounts lose together, as a positive amount.
    combined_loss_usd: Decimal
    top_cost_feature: str | None
    unprofitable_accounts: int = 0
    #: Signed-in users who pay nothing (a $0 plan or none), and what they cost.
    free_users: int = 0
    free_cost_usd: Decimal = ZERO

    @property
    def margin_usd(self) -> Decimal:
        return margin_of(self.cost_usd, self.revenue_usd)


def margin_of(cost: Decimal, revenue: Decimal | None) -> Decimal:
    """The margin: revenue (none counts as zero) minus AI cost. Every margin Weckr
    shows, and the margin alert, is this."""
    return (revenue or ZERO) - cost


def margin_status(cost: Decimal, revenue: Decimal) -> MarginStatus:
    if margin_of(cost, revenue) < 0:
        return "unprofitable"
    if revenue > 0 and cost >= revenue * WATCH_COST_SHARE:
        return "watch"
    return "profitable"


@dataclass(frozen=True, slots=True)
class UnknownPlanUsage:
    """Signed-in users whose calls this month named a plan Weckr does not know (or
    no plan): their caps come from ``WECKR["UNKNOWN_PLAN"]``, not from a plan."""

    plan_name: str | None
    users: int
    calls: int
    cost_usd: Decimal

    @property
    def label(self) -> str:
        return NO_PLAN_LABEL if self.plan_name is None else self.plan_name


NO_PLAN_LABEL = "(no plan)"


def unknown_plan_usage(
    project: Project, known: Collection[str], month: date | None = None
) -> list[UnknownPlanUsage]:
    """Usage this month on plan names that are not ``known`` (the configured plans),
    costliest first. Plan names are stored in their configured spelling, so an exact
    match is enough."""
    month = _current_month(project, month)
    rows = (
        MonthlyUserSpend.objects.filter(project=project, month=month)
        .exclude(user_key=ANONYMOUS_KEY)
        .exclude(plan_name__in=list(known))
        .values("plan_name")
        .annotate(users=Count("user_key"), calls=Sum("calls"), cost=Sum("cost_usd"))
        .order_by("-cost", "plan_name")
    )
    return [
        UnknownPlanUsage(row["plan_name"], row["users"], row["calls"] or 0, row["cost"] or ZERO)
        for row in rows
    ]


def refused_plan_names(project: Project, month: date | None = None) -> list[str]:
    """Plan names whose calls were refused this month because the project does not
    have them (from their alerts: refused calls leave no usage)."""
    month = _current_month(project, month)
    begins, ends = month_bounds(project, month)
    return sorted(
        {
            str(details.get("plan"))
            for details in AlertLog.objects.filter(
                project=project,
                kind=AlertLog.Kind.UNKNOWN_PLAN,
                created_at__gte=begins,
                created_at__lt=ends,
            ).values_list("details", flat=True)
            if isinstance(details, dict) and details.get("refused")
        }
    )


def plan_prices(project: Project) -> dict[str, Decimal]:
    """Monthly price per plan name (from the plans caps read, cached)."""
    return {terms.name: terms.monthly_price_usd for terms in configured_plans(project).values()}


def _revenue(
    user_key: str,
    plan_name: str | None,
    reported: Decimal | None,
    prices: Mapping[str, Decimal],
) -> Decimal | None:
    if user_key == ANONYMOUS_KEY:
        return None
    if plan_name is not None and plan_name in prices:
        return prices[plan_name]
    return reported


def _current_month(project: Project, month: date | None) -> date:
    return month.replace(day=1) if month is not None else month_start(project)


def user_margins(project: Project, month: date | None = None) -> list[UserMargin]:
    """Every user with calls in ``month`` (default: the current month), worst margin first."""
    month = _current_month(project, month)
    prices = plan_prices(project)
    members = account_members(project, month)
    margins = [
        UserMargin.of_spend(row, prices, members.get(row.user_key))
        for row in MonthlyUserSpend.objects.filter(project=project, month=month).only(
            "user_key", "plan_name", "plan_revenue_usd", "cost_usd", "calls"
        )
    ]
    # Users who pay for themselves, worst margin first; then the users of accounts,
    # whose costs their account's margin carries, most expensive first.
    margins.sort(
        key=lambda row: (
            row.paid_by_account,
            -row.cost_usd if row.paid_by_account else row.margin_usd,
            row.user_key,
        )
    )
    return margins


@dataclass(frozen=True, slots=True)
class AccountMargin(_Margin):
    account_key: str
    plan_name: str | None
    per_seat: bool
    seats: int
    active_users: int
    cost_usd: Decimal
    revenue_usd: Decimal | None  # None: the plan is not configured
    calls: int

    @property
    def billing(self) -> str:
        """How the account pays: ``Plan.Billing``'s "per_seat" or "flat"."""
        return str((Plan.Billing.PER_SEAT if self.per_seat else Plan.Billing.FLAT).value)


def account_margins(
    project: Project, month: date | None = None, accounts: Collection[str] | None = None
) -> list[AccountMargin]:
    """Every account with calls in ``month`` (default: the current month), or those
    of ``accounts`` among them, worst margin first. Seats come from
    ``WECKR["SEATS_RESOLVER"]``, else they are the account's active users this month
    (calls with no user count as one)."""
    month = _current_month(project, month)
    plans = {terms.name: terms for terms in configured_plans(project).values()}
    members = MonthlyAccountUserSpend.objects.filter(project=project, month=month)
    found = MonthlyAccountSpend.objects.filter(project=project, month=month)
    if accounts is not None:
        members = members.filter(account_key__in=list(accounts))
        found = found.filter(account_key__in=list(accounts))
    rows = list(found.values_list("account_key", "plan_name", "cost_usd", "calls"))
    if not rows:
        return []
    users = dict(
        members.values("account_key")
        .annotate(users=Count("user_key"))
        .values_list("account_key", "users")
    )
    seats_of = weckr_settings.seats_resolver()
    margins = []
    for account, plan_name, cost, calls in rows:
        active = users.get(account, 0)
        seats = seats_of(project, account, month) if seats_of is not None else None
        seats = active if seats is None else int(seats)
        terms = plans.get(plan_name) if plan_name is not None else None
        revenue = None
        if terms is not None:
            revenue = terms.monthly_price_usd * (seats if terms.per_seat else 1)
        margins.append(
            AccountMargin(
                account_key=account,
                plan_name=plan_name,
                per_seat=terms is not None and terms.per_seat,
                seats=seats,
                active_users=active,
                cost_usd=cost,
                revenue_usd=revenue,
                calls=calls,
            )
        )
    margins.sort(key=lambda row: (row.margin_usd, row.account_key))
    return margins


def feature_breakdown(project: Project, month: date | None = None) -> list[FeatureCost]:
    """Cost and calls per feature in ``month``, most expensive first."""
    month = _current_month(project, month)
    return _feature_costs(
        DailyUsage.objects.filter(project=project, day__gte=month, day__lt=next_month(month))
    )


def _feature_costs(days: QuerySet[DailyUsage] | QuerySet[DailyAccountUsage]) -> list[FeatureCost]:
    """Cost, calls and share per feature of a daily rollup's rows, most expensive first."""
    rows = days.values("feature").annotate(cost=Sum("cost_usd"), call_count=Sum("calls")).order_by()
    total = sum((row["cost"] or ZERO for row in rows), ZERO)
    features = [
        FeatureCost(
            feature=row["feature"] or NO_FEATURE_LABEL,
            cost_usd=row["cost"] or ZERO,
            calls=row["call_count"] or 0,
            share_percent=(row["cost"] or ZERO) * 100 / total if total else ZERO,
        )
        for row in rows
    ]
    features.sort(key=lambda item: (-item.cost_usd, item.feature))
    return features


def month_summary(
    project: Project,
    month: date | None = None,
    *,
    margins: list[UserMargin] | None = None,
    features: list[FeatureCost] | None = None,
    accounts: list[AccountMargin] | None = None,
) -> MonthSummary:
    """Totals of ``month``; pass ``margins``, ``features`` and ``accounts`` already
    read for it to save their queries. Revenue is what the payers pay: users on
    their own, and accounts (whose users earn nothing of their own)."""
    month = _current_month(project, month)
    margins = user_margins(project, month) if margins is None else margins
    features = feature_breakdown(project, month) if features is None else features
    accounts = account_margins(project, month) if accounts is None else accounts
    losers = [row for row in margins if row.status == "unprofitable" and not row.is_anonymous]
    free = [row for row in margins if row.is_free]
    losing_accounts = [row for row in accounts if row.margin_usd < 0]
    return MonthSummary(
        month=month,
        cost_usd=sum((row.cost_usd for row in margins), ZERO),
        revenue_usd=sum((row.revenue_usd or ZERO for row in [*margins, *accounts]), ZERO),
        calls=sum(row.calls for row in margins),
        unprofitable_users=len(losers),
        combined_loss_usd=-sum((row.margin_usd for row in [*losers, *losing_accounts]), ZERO),
        top_cost_feature=features[0].feature if features and features[0].cost_usd > 0 else None,
        unprofitable_accounts=len(losing_accounts),
        free_users=len(free),
        free_cost_usd=sum((row.cost_usd for row in free), ZERO),
    )


def daily_cost_and_revenue(
    project: Project, days: int = 30, today: date | None = None
) -> list[DayFigures]:
    """Cost and revenue for each of the last ``days`` days (today included), oldest first.

    Daily revenue spreads each paying user's monthly price evenly over the days of
    that month: a user with calls in a month counts for the whole month, so the days
    of one month add up to that month's revenue and no day shows a spike on the day
    a user happened to make their first call.
    """
    today = today or local_day(project, timezone.now())
    first = today - timedelta(days=days - 1)
    cost_by_day: dict[date, Decimal] = {
        day: cost or ZERO
        for day, cost in DailyUsage.objects.filter(project=project, day__gte=first, day__lte=today)
        .values("day")
        .annotate(cost=Sum("cost_usd"))
        .order_by()
        .values_list("day", "cost")
    }

    prices = plan_prices(project)
    revenue_by_month: dict[date, Decimal] = defaultdict(lambda: ZERO)
    months = sorted({first.replace(day=1), today.replace(day=1)})
    # An account pays for its users: its revenue counts, not theirs.
    members = set(
        MonthlyAccountUserSpend.objects.filter(project=project, month__in=months).values_list(
            "month", "user_key"
        )
    )
    for month, user_key, plan_name, reported in MonthlyUserSpend.objects.filter(
        project=project, month__in=months
    ).values_list("month", "user_key", "plan_name", "plan_revenue_usd"):
        if (month, user_key) not in members:
            revenue_by_month[month] += _revenue(user_key, plan_name, reported, prices) or ZERO
    for month in sorted({month for month, _ in members}):
        for account in account_margins(project, month):
            revenue_by_month[month] += account.revenue_usd or ZERO

    figures = []
    for offset in range(days):
        day = first + timedelta(days=offset)
        month = day.replace(day=1)
        days_in_month = calendar.monthrange(day.year, day.month)[1]
        figures.append(
            DayFigures(
                day=day,
                cost_usd=cost_by_day.get(day, ZERO),
                revenue_usd=revenue_by_month[month] / days_in_month,
            )
        )
    return figures


@dataclass(frozen=True, slots=True)
class ModelCost:
    model: str
    provider: str
    cost_usd: Decimal
    calls: int
    unpriced_calls: int
    share_percent: Decimal

    @property
    def average_cost_usd(self) -> Decimal:
        return self.cost_usd / self.calls if self.calls else ZERO

    @property
    def unpriced(self) -> bool:
        return self.unpriced_calls > 0


@dataclass(frozen=True, slots=True)
class FeatureModelUsage:
    """Calls of a month to one model for one feature (of one user, or of everyone)."""

    feature: str
    model: str
    provider: str
    cost_usd: Decimal
    calls: int
    unpriced_calls: int


def feature_model_usage(
    project: Project, month: date | None = None, *, user_key: str | None = None
) -> list[FeatureModelUsage]:
    """Cost, calls and unpriced calls per (feature, model) in ``month``, most expensive
    first: one grouped read from which the per-feature and per-model views derive."""
    month = _current_month(project, month)
    rows = DailyUsage.objects.filter(project=project, day__gte=month, day__lt=next_month(month))
    if user_key is not None:
        rows = rows.filter(user_key=user_key)
    usage = [
        FeatureModelUsage(
            feature=row["feature"] or NO_FEATURE_LABEL,
            model=row["model"],
            provider=row["provider_name"] or "",
            cost_usd=row["cost"] or ZERO,
            calls=row["call_count"] or 0,
            unpriced_calls=row["unpriced"] or 0,
        )
        for row in rows.values("feature", "model")
        .annotate(
            provider_name=Max("provider"),
            cost=Sum("cost_usd"),
            call_count=Sum("calls"),
            unpriced=Sum("unpriced_calls"),
        )
        .order_by()
    ]
    usage.sort(key=lambda item: (-item.cost_usd, item.feature, item.model))
    return usage


def features_of(usage: Iterable[FeatureModelUsage]) -> list[FeatureCost]:
    """``feature_breakdown`` from ``feature_model_usage`` rows, without another query."""
    cost: dict[str, Decimal] = defaultdict(lambda: ZERO)
    calls: dict[str, int] = defaultdict(int)
    for item in usage:
        cost[item.feature] += item.cost_usd
        calls[item.feature] += item.calls
    total = sum(cost.values(), ZERO)
    features = [
        FeatureCost(
            feature=feature,
            cost_usd=cost[feature],
            calls=calls[feature],
            share_percent=cost[feature] * 100 / total if total else ZERO,
        )
        for feature in cost
    ]
    features.sort(key=lambda item: (-item.cost_usd, item.feature))
    return features


def models_of(usage: Iterable[FeatureModelUsage]) -> list[ModelCost]:
    """Cost, calls and unpriced calls per model from ``feature_model_usage`` rows."""
    cost: dict[str, Decimal] = defaultdict(lambda: ZERO)
    calls: dict[str, int] = defaultdict(int)
    unpriced: dict[str, int] = defaultdict(int)
    provider: dict[str, str] = {}
    for item in usage:
        cost[item.model] += item.cost_usd
        calls[item.model] += item.calls
        unpriced[item.model] += item.unpriced_calls
        provider[item.model] = max(provider.get(item.model, ""), item.provider)
    total = sum(cost.values(), ZERO)
    models = [
        ModelCost(
            model=model,
            provider=provider[model],
            cost_usd=cost[model],
            calls=calls[model],
            unpriced_calls=unpriced[model],
            share_percent=cost[model] * 100 / total if total else ZERO,
        )
        for model in cost
    ]
    models.sort(key=lambda item: (-item.cost_usd, item.model))
    return models


def model_breakdown(project: Project, month: date | None = None) -> list[ModelCost]:
    """Cost, calls and unpriced calls per model in ``month``, most expensive first."""
    return models_of(feature_model_usage(project, month))


def user_margin(project: Project, user_key: str, month: date | None = None) -> UserMargin | None:
    """The month's margin of one user (``ANONYMOUS_KEY`` for calls with no user)."""
    month = _current_month(project, month)
    row = MonthlyUserSpend.objects.filter(project=project, month=month, user_key=user_key).first()
    if row is None:
        return None
    prices = plan_prices(project) if row.plan_name else {}
    membership = account_members(project, month, [user_key]).get(user_key)
    return UserMargin.of_spend(row, prices, membership)


def daily_user_costs(
    project: Project, user_keys: Collection[str], days: int = 30, today: date | None = None
) -> dict[str, list[Decimal]]:
    """Cost per day of each of ``user_keys`` over the last ``days`` days, oldest first."""
    return _daily_costs(project, DailyUsage, "user_key", user_keys, days, today)


def daily_free_tier_costs(
    project: Project, days: int = 30, today: date | None = None
) -> list[Decimal]:
    """Cost per day of the free tier (signed-in users on a $0 plan or on none) over
    the last ``days`` days, oldest first."""
    today = today or local_day(project, timezone.now())
    first = today - timedelta(days=days - 1)
    free_plans = [name for name, price in plan_prices(project).items() if price == 0]
    series = [ZERO] * days
    rows = (
        DailyUsage.objects.filter(project=project, day__gte=first, day__lte=today)
        .filter(Q(plan_name__in=free_plans) | Q(plan_name__isnull=True))
        .exclude(user_key=ANONYMOUS_KEY)
        .values("day")
        .annotate(cost=Sum("cost_usd"))
        .order_by()
        .values_list("day", "cost")
    )
    for day, cost in rows:
        series[(day - first).days] = cost or ZERO
    return series


def daily_account_costs(
    project: Project, account_keys: Collection[str], days: int = 30, today: date | None = None
) -> dict[str, list[Decimal]]:
    """Cost per day of each of ``account_keys`` over the last ``days`` days, oldest first."""
    return _daily_costs(project, DailyAccountUsage, "account_key", account_keys, days, today)


def _daily_costs(
    project: Project,
    rollup: type[DailyUsage] | type[DailyAccountUsage],
    key_field: str,
    keys: Collection[str],
    days: int,
    today: date | None,
) -> dict[str, list[Decimal]]:
    today = today or local_day(project, timezone.now())
    first = today - timedelta(days=days - 1)
    series = {key: [ZERO] * days for key in keys}
    if not series:
        return series
    rows = (
        rollup.objects.filter(
            project=project, day__gte=first, day__lte=today, **{f"{key_field}__in": list(series)}
        )
        .values(key_field, "day")
        .annotate(cost=Sum("cost_usd"))
        .order_by()
        .values_list(key_field, "day", "cost")
    )
    for key, day, cost in rows:
        series[key][(day - first).days] = cost or ZERO
    return series


@dataclass(frozen=True, slots=True)
class AccountUser:
    """One user of an account in a month: their cost and share of the account's."""

    user_key: str
    cost_usd: Decimal
    calls: int
    share_percent: Decimal

    @property
    def label(self) -> str:
        return user_key_label(self.user_key)


def account_users(
    project: Project, account_key: str, month: date | None = None
) -> list[AccountUser]:
    """The users of an account in ``month``, most expensive first."""
    month = _current_month(project, month)
    rows = list(
        MonthlyAccountUserSpend.objects.filter(
            project=project, month=month, account_key=account_key
        ).values_list("user_key", "cost_usd", "calls")
    )
    total = sum((cost for _, cost, _ in rows), ZERO)
    users = [
        AccountUser(user_key, cost, calls, cost * 100 / total if total else ZERO)
        for user_key, cost, calls in rows
    ]
    users.sort(key=lambda user: (-user.cost_usd, user.user_key))
    return users


def account_features(
    project: Project, account_key: str, month: date | None = None
) -> list[FeatureCost]:
    """Cost and calls per feature of an account in ``month``, most expensive first."""
    month = _current_month(project, month)
    return _feature_costs(
        DailyAccountUsage.objects.filter(
            project=project, account_key=account_key, day__gte=month, day__lt=next_month(month)
        )
    )
