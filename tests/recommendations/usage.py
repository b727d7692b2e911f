"""Small helpers that create a month of usage through the real ingestion path."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from weckr_core.records import UsageRecord
from weckr_django.ingest import ingest_records
from weckr_django.models import Plan, Project

MILLION = Decimal(1_000_000)


def make_project(name: str = "Acme", timezone: str = "UTC", **fields: object) -> Project:
    return Project.objects.create(name=name, timezone=timezone, **fields)


def add_plan(project: Project, name: str, price: str) -> Plan:
    return Plan.objects.create(project=project, name=name, monthly_price_usd=Decimal(price))


def record_calls(
    project: Project,
    count: int,
    *,
    at: datetime,
    model: str = "gpt-4o",
    provider: str = "openai",
    feature: str | None = "summary",
    user_id: str | None = None,
    plan: str | None = None,
    plan_revenue_usd: str | None = None,
    input_tokens: int = 1_000,
    output_tokens: int = 100,
    cached_input_tokens: int = 0,
    cache_creation_tokens: int = 0,
    reasoning_tokens: int = 0,
) -> None:
    """Ingest ``count`` identical calls made at ``at``."""
    revenue = None if plan_revenue_usd is None else Decimal(plan_revenue_usd)
    records = [
        UsageRecord(
            timestamp=at,
            user_id=user_id,
            feature=feature,
            plan=plan,
            plan_revenue_usd=revenue,
            provider=provider,
            model=model,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            cached_input_tokens=cached_input_tokens,
            cache_creation_tokens=cache_creation_tokens,
            reasoning_tokens=reasoning_tokens,
        )
        for _ in range(count)
    ]
    result = ingest_records(project, records)
    assert result.created == count
