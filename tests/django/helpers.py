from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from weckr_core.pricing import price_record
from weckr_core.records import UsageRecord
from weckr_django.models import Plan, Project

# The Celery task names Weckr publishes: running workers and queued messages know
# the tasks by these, so they never change.
PUBLISHED_TASK_NAMES = frozenset(
    {
        "weckr_django.record_usage",
        "weckr_django.detect_loops",
        "weckr_django.record_run_stop",
        "weckr_django.check_budgets",
        "weckr_django.unknown_plan_refused",
        "weckr_django.dispatch_alert",
    }
)


def make_project(name: str = "Acme", **fields: Any) -> Project:
    return Project.objects.create(name=name, **fields)


def make_plan(
    project: Project,
    name: str = "pro",
    *,
    price: str = "20",
    cap: str | None = None,
    action: str = Plan.CapAction.BLOCK,
) -> Plan:
    return Plan.objects.create(
        project=project,
        name=name,
        monthly_price_usd=Decimal(price),
        monthly_cap_usd=None if cap is None else Decimal(cap),
        cap_action=action,
    )


def make_record(
    event_id: str,
    *,
    user_id: str | None = "u1",
    model: str = "gpt-4o",
    input_tokens: int = 1000,
    output_tokens: int = 500,
    when: datetime | None = None,
    **fields: Any,
) -> UsageRecord:
    return UsageRecord(
        event_id=event_id,
        timestamp=when or datetime.now(UTC),
        user_id=user_id,
        provider=fields.pop("provider", "openai"),
        model=model,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        **fields,
    )


def expected_cost(record: UsageRecord) -> Decimal:
    return price_record(record).usd.quantize(Decimal("0.0000000001"))
