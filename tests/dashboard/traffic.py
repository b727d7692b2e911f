"""A month of generated traffic through the real ingestion path, and the figures
the dashboard should show, aggregated straight from ``UsageEvent``."""

from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal

from django.db.models import Count, QuerySet, Sum
from django.utils import timezone

from weckr_core.records import UsageRecord
from weckr_django.ingest import ingest_records
from weckr_django.models import Plan, Project, UsageEvent
from weckr_django.periods import day_bounds, local_day, month_bounds

PLANS = {"starter": ("5.00", "2.00"), "pro": ("20.00", "10.00"), "team": ("100.00", None)}
# user: (plan, [(feature, model, provider, calls per day, input tokens, output tokens)])
USERS: dict[str | None, tuple[str | None, list[tuple[str, str, str, int, int, int]]]] = {
    "alice": (
        "pro",
        [
            ("chat", "gpt-4o", "openai", 3, 4_000, 300),
            ("summary", "gpt-4o-mini", "openai", 4, 2_000, 200),
        ],
    ),
    "bob": ("pro", [("chat", "gpt-4o", "openai", 1, 1_500, 150)]),
    "carol": (
        "team",
        [
            ("research", "claude-sonnet-4-20250514", "anthropic", 2, 8_000, 600),
            ("research", "acme-llm-1", "custom", 1, 1_000, 100),
        ],
    ),
    "dave": ("starter", [("chat", "gpt-4o", "openai", 6, 30_000, 500)]),
    "erin": ("starter", [("summary", "gpt-4o-mini", "openai", 2, 1_000, 100)]),
    "frank": ("team", [("summary", "claude-3-5-haiku-latest", "anthropic", 3, 3_000, 400)]),
    None: (None, [("summary", "gpt-4o-mini", "openai", 2, 1_200, 120)]),
}
#: A burst today that takes dave past his $5 plan on any day of the month.
BURST = ("dave", "starter", "chat", "gpt-4o", "openai", 100, 30_000, 300)
RUNS = (
    # run id, source, agents, calls, last call's error type (None: ok)
    ("run-ok-1", "langchain", ("researcher", "writer"), 4, None),
    ("run-loop-1", "crewai", ("analyst",), 3, "WeckrLoopError"),
    ("run-fail-1", "langchain", ("planner",), 2, "RateLimitError"),
)


def make_project(name: str = "Acme") -> Project:
    project = Project.objects.create(name=name, alert_email="ops@example.com")
    for plan, (price, cap) in PLANS.items():
        Plan.objects.create(
            project=project,
            name=plan,
            monthly_price_usd=Decimal(price),
            monthly_cap_usd=None if cap is None else Decimal(cap),
        )
    return project


def _moment(project: Project, day_start: datetime, now: datetime, rng: random.Random) -> datetime:
    end = min(day_start + timedelta(days=1), now)
    return day_start + (end - day_start) * rng.uniform(0.05, 0.95)


def generate_month(project: Project, now: datetime | None = None, seed: int = 7) -> int:
    """This month up to ``now`` plus the five days before it; returns the events created."""
    now = now or timezone.now()
    rng = random.Random(seed)
    today = local_day(project, now)
    first_day = today.replace(day=1) - timedelta(days=5)
    records: list[UsageRecord] = []
    day = first_day
    while day <= today:
        day_start, _ = day_bounds(project, day)
        for user_id, (plan, usage) in USERS.items():
            for feature, model, provider, per_day, input_tokens, output_tokens in usage:
                for _ in range(per_day):
                    records.append(
                        UsageRecord(
                            timestamp=_moment(project, day_start, now, rng),
                            user_id=user_id,
                            plan=plan,
                            feature=feature,
                            model=model,
                            provider=provider,
                            input_tokens=int(input_tokens * rng.uniform(0.5, 1.5)),
                            output_tokens=int(output_tokens * rng.uniform(0.5, 1.5)),
                            source="wrap",
                        )
                    )
        day += timedelta(days=1)
    user_id, plan, feature, model, provider, count, input_tokens, output_tokens = BURST
    day_start, _ = day_bounds(project, today)
    records.extend(
        UsageRecord(
            timestamp=_moment(project, day_start, now, rng),
            user_id=user_id,
            plan=plan,
            feature=feature,
            model=model,
            provider=provider,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            source="sdk",
        )
        for _ in range(count)
    )
    for run_id, source, agents, calls, error_type in RUNS:
        start = now - timedelta(minutes=30)
        for step in range(calls):
            last = step == calls - 1
            records.append(
                UsageRecord(
                    timestamp=start + timedelta(seconds=10 * step),
                    user_id="alice",
                    plan="pro",
                    feature="agent",
                    model="gpt-4o-mini",
                    provider="openai",
                    input_tokens=0 if last and error_type else 1_500,
                    output_tokens=0 if last and error_type else 200,
                    status="error" if last and error_type else "ok",
                    error_type=error_type if last else None,
                    source=source,  # type: ignore[arg-type]
                    run_id=run_id,
                    agent=agents[step % len(agents)],
                    step=str(step + 1),
                )
            )
    created = 0
    for offset in range(0, len(records), 500):
        created += ingest_records(project, records[offset : offset + 500]).created
    return created


@dataclass
class Expected:
    cost: Decimal = Decimal(0)
    revenue: Decimal = Decimal(0)
    calls: int = 0
    users: dict[str, tuple[Decimal, int, str | None]] = field(default_factory=dict)
    features: dict[str, tuple[Decimal, int]] = field(default_factory=dict)
    models: dict[str, tuple[Decimal, int, int]] = field(default_factory=dict)

    def margin(self, user_key: str) -> Decimal:
        cost, _, plan = self.users[user_key]
        return plan_price(plan) - cost if user_key else -cost

    @property
    def unprofitable(self) -> list[str]:
        return sorted(key for key in self.users if key and self.margin(key) < 0)


def plan_price(plan: str | None) -> Decimal:
    return Decimal(PLANS[plan][0]) if plan in PLANS else Decimal(0)


def month_events(project: Project, now: datetime | None = None) -> QuerySet[UsageEvent]:
    start, end = month_bounds(project, local_day(project, now or timezone.now()))
    return UsageEvent.objects.filter(project=project, timestamp__gte=start, timestamp__lt=end)


def expected_figures(project: Project) -> Expected:
    """Month-to-date figures aggregated from the raw events, not the rollups."""
    events = month_events(project)
    expected = Expected()
    latest_plan: dict[str, str | None] = {}
    for user_id, plan_name in events.order_by("timestamp").values_list("user_id", "plan_name"):
        latest_plan[user_id or ""] = plan_name
    per_user = events.values_list("user_id").annotate(Sum("cost_usd"), Count("id")).order_by()
    for user_id, cost, calls in per_user:
        key = user_id or ""
        expected.users[key] = (cost, calls, latest_plan[key])
        expected.cost += cost
        expected.calls += calls
        if key:
            expected.revenue += plan_price(latest_plan[key])
    per_feature = events.values_list("feature").annotate(Sum("cost_usd"), Count("id")).order_by()
    for feature, cost, calls in per_feature:
        expected.features[feature or "(no feature)"] = (cost, calls)
    unpriced: dict[str, int] = defaultdict(int)
    for model in events.filter(priced=False).values_list("model", flat=True):
        unpriced[model] += 1
    per_model = events.values_list("model").annotate(Sum("cost_usd"), Count("id")).order_by()
    for model, cost, calls in per_model:
        expected.models[model] = (cost, calls, unpriced[model])
    return expected
