"""``make demo``: migrate, create an admin login and a demo project with two months of
realistic AI traffic, then serve the site.

    .venv/bin/python example_project/demo.py [--no-serve] [--port 8000]

Safe to run again: existing data is kept and nothing is generated twice.
Environment: DATABASE_URL (default SQLite next to this file), WECKR_DEMO_PORT,
WECKR_DEMO_HOST.
"""

from __future__ import annotations

import argparse
import calendar
import math
import os
import random
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from pathlib import Path

HERE = Path(__file__).resolve().parent
# Import the project as the package example_project from the repository root (its
# celery.py must not shadow the celery library).
sys.path[:] = [entry for entry in sys.path if Path(entry or ".").resolve() != HERE]
sys.path.insert(0, str(HERE.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "example_project.settings")
# The demo runs Django's development server, which serves static files with DEBUG.
os.environ.setdefault("DJANGO_DEBUG", "1")

import django  # noqa: E402

django.setup()

from django.contrib.auth import get_user_model  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.db import transaction  # noqa: E402
from django.utils import timezone  # noqa: E402

from example_project.saas.models import Profile  # noqa: E402
from weckr_core.backends.base import RunStop  # noqa: E402
from weckr_core.pricing import cheaper_alternative, price_record  # noqa: E402
from weckr_core.records import Source, UsageRecord  # noqa: E402
from weckr_django import reports, tasks  # noqa: E402
from weckr_django.caps import decide  # noqa: E402
from weckr_django.ingest import ingest_records  # noqa: E402
from weckr_django.models import ApiKey, Plan, Project, UsageEvent  # noqa: E402

PROJECT_NAME = "Demo SaaS"
ADMIN_USERNAME = "admin"
ADMIN_PASSWORD = "weckr-demo"
EVENT_PREFIX = "demo-"
#: From this day of a month on, the month under way tells the demo's story.
STORY_FROM_DAY = 20
SEED = 2026

# name, monthly price, monthly AI cap per user, per account (None: none), action at the cap
PLANS = (
    ("free", "0", "0.50", None, Plan.CapAction.BLOCK),
    ("pro", "29", "25", None, Plan.CapAction.DOWNGRADE),
    ("team", "99", "150", "150", Plan.CapAction.BLOCK),
)


@dataclass(frozen=True)
class Feature:
    name: str
    provider: str
    model: str
    input_tokens: tuple[int, int]
    output_tokens: tuple[int, int]
    #: Share of the prompt served from the provider's cache.
    cache_read_share: float = 0.0
    #: Anthropic prompt-cache writes, on top of the input, on some calls.
    cache_write_tokens: int = 0
    reasoning_tokens: tuple[int, int] = (0, 0)


FEATURES = {
    "summarize": Feature("summarize", "openai", "gpt-4o-mini", (800, 6000), (150, 600)),
    "chat-assistant": Feature(
        "chat-assistant", "openai", "gpt-4o", (1500, 9000), (200, 900), cache_read_share=0.5
    ),
    "draft-email": Feature("draft-email", "openai", "gpt-4o", (400, 1500), (150, 500)),
    "research-agent": Feature(
        "research-agent",
        "anthropic",
        "claude-sonnet-4",
        (8000, 30000),
        (800, 3000),
        cache_read_share=0.6,
        cache_write_tokens=4000,
    ),
    "data-analysis": Feature(
        "data-analysis", "openai", "o3", (2000, 12000), (500, 2500), reasoning_tokens=(400, 6000)
    ),
    "classify": Feature("classify", "google", "gemini-2.5-flash", (300, 1200), (5, 40)),
}


@dataclass(frozen=True)
class Customer:
    username: str
    plan: str
    calls_per_day: float
    features: tuple[tuple[str, int], ...]  # (feature, weight)
    note: str
    #: AI cost this customer reaches in the story month (``story_month``): extra
    #: calls over its days make it up, at a steady pace, as in every other month.
    month_to_date_usd: str | None = None
    #: The B2B account (team) the customer's calls are billed to, if any.
    account: str | None = None


CUSTOMERS = (
    Customer(
        "ada",
        "team",
        100,
        (("research-agent", 6), ("data-analysis", 2), ("summarize", 2)),
        "team power user running agents all day: costs more than the plan earns",
        month_to_date_usd="130",
        account="acme-labs",
    ),
    Customer(
        "ben",
        "pro",
        100,
        (("chat-assistant", 5), ("research-agent", 1), ("draft-email", 2)),
        "heavy pro user: passes the $25 cap, then is downgraded to cheaper models",
        month_to_date_usd="25",
    ),
    Customer(
        "cleo",
        "free",
        25,
        (("chat-assistant", 3), ("summarize", 3)),
        "free user who hits the $0.50 cap and is blocked",
        month_to_date_usd="0.50",
    ),
    Customer(
        "dan",
        "pro",
        6,
        (("summarize", 3), ("draft-email", 2), ("classify", 1)),
        "light pro user",
        account="northwind",
    ),
    Customer(
        "eve",
        "pro",
        55,
        (("chat-assistant", 4), ("data-analysis", 1), ("summarize", 2)),
        "busy pro user close to the cap: on watch",
        month_to_date_usd="21",
    ),
    Customer(
        "finn",
        "team",
        25,
        (("research-agent", 1), ("chat-assistant", 3), ("classify", 3)),
        "steady team user",
        account="acme-labs",
    ),
    Customer("gia", "free", 2, (("summarize", 1), ("classify", 1)), "light free user"),
    Customer("hugo", "free", 1, (("summarize", 1),), "occasional free user"),
    Customer(
        "ivy",
        "pro",
        10,
        (("draft-email", 3), ("summarize", 2)),
        "regular pro user",
        account="northwind",
    ),
    Customer(
        "jon",
        "team",
        8,
        (("classify", 4), ("summarize", 2)),
        "light team user",
        account="acme-labs",
    ),
    # Enough pro customers paying for themselves for the plan-pricing advice to
    # speak (five payers and thirty calls a month at least): light, regular users.
    Customer("kai", "pro", 5, (("summarize", 2), ("draft-email", 1)), "light pro user"),
    Customer("lea", "pro", 8, (("chat-assistant", 1), ("classify", 2)), "regular pro user"),
    Customer("max", "pro", 4, (("draft-email", 2), ("summarize", 1)), "light pro user"),
)
_CUSTOMER_NOTES = {customer.username: customer.note for customer in CUSTOMERS}


def say(message: str = "") -> None:
    sys.stdout.write(message + "\n")
    sys.stdout.flush()


def ensure_admin() -> None:
    users = get_user_model()
    admin = users.objects.filter(username=ADMIN_USERNAME).first()
    if admin is None:
        admin = users.objects.create_superuser(ADMIN_USERNAME, "", ADMIN_PASSWORD)
    elif not admin.check_password(ADMIN_PASSWORD):
        admin.set_password(ADMIN_PASSWORD)
        admin.save(update_fields=["password"])
    Profile.objects.get_or_create(user=admin, defaults={"plan": Profile.Plan.PRO})


def ensure_project() -> tuple[Project, str | None]:
    project, _ = Project.objects.get_or_create(name=PROJECT_NAME)
    for name, price, cap, account_cap, action in PLANS:
        Plan.objects.update_or_create(
            project=project,
            name=name,
            defaults={
                "monthly_price_usd": Decimal(price),
                "monthly_cap_usd": Decimal(cap),
                "account_monthly_cap_usd": None if account_cap is None else Decimal(account_cap),
                "cap_action": action,
            },
        )
    plaintext = None
    if not ApiKey.objects.filter(project=project, revoked_at=None).exists():
        _, plaintext = ApiKey.objects.create_key(project, name="demo")
    return project, plaintext


def ensure_customers() -> dict[str, str]:
    """The demo's customers as Django users on plans; returns username -> user id."""
    users = get_user_model()
    ids: dict[str, str] = {}
    for customer in CUSTOMERS:
        user = users.objects.filter(username=customer.username).first()
        if user is None:
            user = users.objects.create_user(customer.username)  # no password: no login
        Profile.objects.update_or_create(user=user, defaults={"plan": customer.plan})
        ids[customer.username] = str(user.pk)
    return ids


def _call_times(rng: random.Random, day: date, count: int, now: datetime) -> list[datetime]:
    times = []
    for _ in range(count):
        # Mostly working hours, some evening use.
        hour = rng.gauss(14, 3.5)
        seconds = int(min(max(hour, 0.0), 23.99) * 3600)
        moment = datetime.combine(day, time.min, tzinfo=UTC) + timedelta(seconds=seconds)
        if moment < now - timedelta(minutes=10):
            times.append(moment)
    return sorted(times)


def _tokens(rng: random.Random, bounds: tuple[int, int]) -> int:
    low, high = bounds
    # Log-uniform: many small prompts, a few large ones.
    return int(math.exp(rng.uniform(math.log(max(low, 1)), math.log(max(high, 2)))))


def generate(user_ids: dict[str, str], now: datetime) -> Iterator[UsageRecord]:
    """A month of calls per customer, in time order, with their plan's cap applied as a
    real app would have: blocked calls never happen, downgraded ones use the cheaper
    model."""
    plans = {name: (Decimal(price), Decimal(cap), action) for name, price, cap, _, action in PLANS}
    for customer in CUSTOMERS:
        yield from _customer_calls(customer, user_ids[customer.username], plans[customer.plan], now)


def _customer_calls(
    customer: Customer, user_id: str, plan: tuple[Decimal, Decimal, str], now: datetime
) -> Iterator[UsageRecord]:
    price, cap, action = plan
    rng = random.Random(f"{SEED}-{customer.username}")
    spend: dict[date, Decimal] = {}
    names = [name for name, _ in customer.features]
    weights = [weight for _, weight in customer.features]

    def call(moment: datetime, event_id: str, source: Source) -> UsageRecord | None:
        """One call of the customer's, or None when the plan's cap blocks it."""
        feature = FEATURES[rng.choices(names, weights)[0]]
        month = moment.date().replace(day=1)
        model, requested = feature.model, None
        if spend.get(month, Decimal(0)) >= cap:
            if action == Plan.CapAction.BLOCK:
                return None
            requested, model = model, cheaper_alternative(model) or model
        record = _record(rng, feature, model, moment)
        record.event_id = event_id
        record.user_id = user_id
        record.account_id = customer.account
        record.plan = customer.plan
        record.plan_revenue_usd = price
        record.requested_model = requested
        record.source = source
        spend[month] = spend.get(month, Decimal(0)) + _cost(record)
        return record

    today = now.date()
    story = story_month(today)
    # The story month whole, and the chart's last 30 days.
    day = min(_previous_month(today.replace(day=1)), today - timedelta(days=29))
    # Months generated whole (a day or two of an older one can start the chart).
    paced_from = _previous_month(today.replace(day=1))
    while day <= today:
        weekday_factor = 0.35 if day.weekday() >= 5 else 1.0
        count = max(0, round(rng.gauss(customer.calls_per_day, customer.calls_per_day / 4)))
        count = round(count * weekday_factor)
        for index, moment in enumerate(_call_times(rng, day, count, now)):
            event_id = f"{EVENT_PREFIX}{customer.username}-{day:%Y%m%d}-{index}"
            record = call(moment, event_id, "wrap" if index % 3 else "sdk")
            if record is not None:
                yield record
        if customer.month_to_date_usd is not None and day >= paced_from:
            # Calls on top, spread over the day, keep the month on a steady pace to
            # the customer's figure: reached on the month's last day, or today in the
            # story month under way.
            month = day.replace(day=1)
            days = today.day if month == story and month == today.replace(day=1) else _length(month)
            pace = Decimal(customer.month_to_date_usd) * day.day / days
            start = datetime.combine(day, time.min, tzinfo=UTC)
            end = min(start + timedelta(days=1), now - timedelta(minutes=10))
            extra: list[UsageRecord] = []
            while end > start and spend.get(month, Decimal(0)) < pace and len(extra) < 500:
                moment = start + (end - start) * rng.random()
                event_id = f"{EVENT_PREFIX}{customer.username}-{day:%Y%m%d}-extra-{len(extra)}"
                record = call(moment, event_id, "wrap")
                if record is None:
                    break
                extra.append(record)
            yield from sorted(extra, key=lambda record: record.timestamp)
        day += timedelta(days=1)


def story_month(today: date) -> date:
    """The month whose figures tell the demo's story: this month from its 20th day, the
    previous (complete) one before. Early in a month, a month-to-date story (a loss, a
    cap reached) would need calls crowded into a few days, and the cost chart would
    jump on the 1st like an incident."""
    this_month = today.replace(day=1)
    return this_month if today.day >= STORY_FROM_DAY else _previous_month(this_month)


def _previous_month(month: date) -> date:
    return (month - timedelta(days=1)).replace(day=1)


def _length(month: date) -> int:
    return calendar.monthrange(month.year, month.month)[1]


def _record(rng: random.Random, feature: Feature, model: str, moment: datetime) -> UsageRecord:
    input_tokens = _tokens(rng, feature.input_tokens)
    reasoning = _tokens(rng, feature.reasoning_tokens) if feature.reasoning_tokens[1] else 0
    record = UsageRecord(
        timestamp=moment,
        feature=feature.name,
        provider=feature.provider,
        model=model,
        latency_ms=rng.randint(300, 9000),
    )
    record.input_tokens = input_tokens
    record.cached_input_tokens = int(input_tokens * feature.cache_read_share * rng.random())
    record.cache_creation_tokens = feature.cache_write_tokens if rng.random() < 0.2 else 0
    record.output_tokens = _tokens(rng, feature.output_tokens) + reasoning
    record.reasoning_tokens = reasoning
    if rng.random() < 0.01:
        record.status, record.error_type = "error", "RateLimitError"
        record.input_tokens = record.output_tokens = record.reasoning_tokens = 0
        record.cached_input_tokens = record.cache_creation_tokens = 0
    return record


def _cost(record: UsageRecord) -> Decimal:
    return price_record(record).usd


def runaway_agent(user_id: str, now: datetime) -> list[UsageRecord]:
    """A research agent stuck in a loop, ending a few minutes before ``now``."""
    feature = FEATURES["research-agent"]
    records = []
    for step in range(14):
        record = UsageRecord(
            event_id=f"{EVENT_PREFIX}loop-{now:%Y%m%d}-{step}",
            timestamp=now - timedelta(seconds=200 - step * 12),
            user_id=user_id,
            feature=feature.name,
            plan="team",
            plan_revenue_usd=Decimal(99),
            provider=feature.provider,
            model=feature.model,
            run_id=f"demo-run-{now:%Y%m%d}",
            step=str(step),
            agent="researcher",
            source="langchain",
        )
        record.input_tokens = 9000 + step * 400
        record.cached_input_tokens = 6000
        record.output_tokens = 700
        records.append(record)
    return records


def load_traffic(project: Project, user_ids: dict[str, str]) -> int:
    now = timezone.now()
    batch: list[UsageRecord] = []
    created = 0
    for record in generate(user_ids, now):
        batch.append(record)
        if len(batch) == 500:
            created += ingest_records(project, batch).created
            batch = []
    # One a few minutes ago, which the loop check flags; and one in the story month
    # when that month is over, so that its Agents page shows a stopped run too.
    runaways = [runaway_agent(user_ids["ada"], now)]
    story = story_month(now.date())
    if story != now.date().replace(day=1):
        last_day = story.replace(day=_length(story))
        runaways.append(runaway_agent(user_ids["ada"], datetime.combine(last_day, time(15), UTC)))
    for runaway in runaways:
        batch.extend(runaway)
    created += ingest_records(project, batch).created
    if created:
        for runaway in runaways:
            report_runaway_stop(project, runaway)
    return created


def report_runaway_stop(project: Project, calls: list[UsageRecord]) -> None:
    """The loop guard that stopped the runaway run reports it, as the LangChain
    handler does: the Agents page then shows the run as stopped, with an alert."""
    last = calls[-1]
    stop = RunStop(
        run_id=last.run_id,
        reason=f"max_llm_calls reached ({len(calls)} calls)",
        source="langchain",
        llm_calls=len(calls),
        tokens=sum(call.input_tokens + call.output_tokens for call in calls),
        cost_usd=sum((_cost(call) for call in calls), Decimal(0)),
        user_id=last.user_id,
        plan=last.plan,
        feature=last.feature,
        agent=last.agent,
    )
    tasks.record_run_stop(str(project.pk), tasks.run_stop_payload(stop))


def summary(project: Project, user_ids: dict[str, str], month: date) -> None:
    names = {user_id: username for username, user_id in user_ids.items()}
    figures = reports.month_summary(project, month)
    under_way = month == timezone.localdate().replace(day=1)
    say(
        f"{month:%B %Y}{' so far' if under_way else ''}: {figures.calls} calls, AI cost "
        f"${figures.cost_usd:.2f}, revenue ${figures.revenue_usd:.2f}, margin "
        f"${figures.margin_usd:.2f}, {figures.unprofitable_users} unprofitable user(s), "
        f"{figures.unprofitable_accounts} unprofitable account(s); the free tier "
        f"({figures.free_users} user(s)) cost ${figures.free_cost_usd:.2f}."
    )
    plans = {plan.name: plan for plan in Plan.objects.filter(project=project)}
    for row in reports.user_margins(project, month):
        username = names.get(row.user_key, row.label)
        plan = plans.get(row.plan_name or "")
        account = row.accounts[0] if row.accounts else None
        state = ""
        if plan is not None:
            action, alternative = _cap_state(
                project, month, row.user_key, plan, account, row.cost_usd
            )
            if action is not None:
                state = f", capped: {action}" + (f" to {alternative}" if alternative else "")
        if row.paid_by_account:
            share = row.account_share_percent or Decimal(0)
            standing = f"{share:>5.1f}% of {', '.join(row.accounts)}'s cost"
        elif row.is_free:
            standing = "free tier"
        else:
            standing = f"margin ${row.margin_usd:>8.2f}  {row.status}"
        say(
            f"  {username:<6} {row.plan_name or '-':<5} cost ${row.cost_usd:>8.2f}  "
            f"{standing}{state}"
        )
    for margin in reports.account_margins(project, month):
        terms = plans.get(margin.plan_name or "")
        cap = terms.account_monthly_cap_usd if terms is not None else None
        of_cap = (
            f", {margin.cost_usd * 100 / cap:.0f}% of its ${cap:.0f} account cap" if cap else ""
        )
        say(
            f"  account {margin.account_key}: {margin.active_users} users on "
            f"{margin.plan_name}, cost ${margin.cost_usd:.2f}{of_cap}, revenue "
            f"${margin.revenue_usd or 0:.2f}, margin ${margin.margin_usd:.2f}  {margin.status}"
        )


def _cap_state(
    project: Project, month: date, user_key: str, plan: Plan, account: str | None, spent: Decimal
) -> tuple[str | None, str | None]:
    """What the cap does to the customer's next call in the month under way (the
    cap's own decision), or did once the month's spend reached it (a past month)."""
    if month == timezone.localdate().replace(day=1):
        decision = decide(project, user_key, plan.name, "gpt-4o", account)
        return (None, None) if decision.allowed else (decision.action, decision.alternative_model)
    if plan.monthly_cap_usd is None or spent < plan.monthly_cap_usd:
        return None, None
    if plan.cap_action == Plan.CapAction.DOWNGRADE:
        return "downgrade", cheaper_alternative("gpt-4o")
    return "block", None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--no-serve", action="store_true", help="Set up the data and exit.")
    parser.add_argument("--port", default=os.environ.get("WECKR_DEMO_PORT", "8000"))
    parser.add_argument("--host", default=os.environ.get("WECKR_DEMO_HOST", "127.0.0.1"))
    options = parser.parse_args(argv)

    say("Migrating the database...")
    call_command("migrate", interactive=False, verbosity=0)
    with transaction.atomic():
        ensure_admin()
        project, plaintext = ensure_project()
        user_ids = ensure_customers()
    existing = UsageEvent.objects.filter(project=project, event_id__startswith=EVENT_PREFIX)
    if existing.exists():
        say(f"Demo traffic already loaded ({existing.count()} events); nothing added.")
    else:
        say(
            f"Generating two months of AI traffic for {len(CUSTOMERS)} customers on free, pro "
            "and team plans..."
        )
        created = load_traffic(project, user_ids)
        say(f"Recorded {created} LLM calls.")
    month = story_month(timezone.localdate())
    say()
    summary(project, user_ids, month)
    say()
    say(f"Project {project.name!r} id {project.pk}")
    if plaintext:
        say("API key for the weckr-sdk (shown once):")
        say(plaintext)
    base = f"http://{options.host}:{options.port}"
    dashboard = f"{base}/weckr/"
    if month != timezone.localdate().replace(day=1):
        # Early in a month the story is last month's: open the dashboard on it.
        dashboard += f"?month={month:%Y-%m}"
    say(f"Dashboard: {dashboard}   login: {ADMIN_USERNAME} / {ADMIN_PASSWORD}")
    say(f"Admin:  {base}/admin/")
    say(f"App:    {base}/   (signed in as {ADMIN_USERNAME}, plan pro)")
    if options.no_serve:
        return 0
    say("Serving; press Ctrl+C to stop.")
    call_command("runserver", f"{options.host}:{options.port}", use_reloader=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
