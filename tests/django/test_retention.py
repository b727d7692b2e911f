"""``WECKR["EVENT_RETENTION_MONTHS"]``: old events are pruned, the rollups keep every
month, and the API refuses what would be pruned (so nothing is counted twice)."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from io import StringIO

import pytest
from django.core.management import call_command
from django.db.models import Sum
from pytest_django.fixtures import Settings

from weckr_django.ingest import ingest_records
from weckr_django.models import DailyUsage, MonthlyUserSpend, UsageEvent
from weckr_django.periods import event_cutoff
from weckr_django.retention import prune_events
from weckr_django.wire import WireError, parse_event

from .helpers import make_project, make_record

pytestmark = pytest.mark.django_db

NOW = datetime(2026, 12, 7, 12, tzinfo=UTC)


@pytest.fixture
def keep_two_months(settings: Settings) -> None:
    settings.WECKR = {**settings.WECKR, "EVENT_RETENTION_MONTHS": 2}


def rollup_totals() -> tuple[Decimal, int, Decimal]:
    monthly = MonthlyUserSpend.objects.aggregate(cost=Sum("cost_usd"), calls=Sum("calls"))
    daily = DailyUsage.objects.aggregate(cost=Sum("cost_usd"))
    return monthly["cost"], monthly["calls"], daily["cost"]


def test_the_cutoff_keeps_whole_months_in_every_timezone(keep_two_months: None) -> None:
    # November and December kept; a day of margin before November 1 (UTC).
    assert event_cutoff(NOW) == datetime(2026, 10, 31, tzinfo=UTC)
    assert event_cutoff(datetime(2026, 1, 15, tzinfo=UTC)) == datetime(2025, 11, 30, tzinfo=UTC)


def test_no_setting_keeps_everything() -> None:
    assert event_cutoff(NOW) is None
    project = make_project()
    ingest_records(project, [make_record("old", when=datetime(2026, 1, 10, tzinfo=UTC))])
    assert prune_events(now=NOW) == 0
    assert UsageEvent.objects.count() == 1


def test_pruning_deletes_old_events_and_keeps_every_rollup(keep_two_months: None) -> None:
    project = make_project()
    months = (8, 9, 10, 11, 12)
    ingest_records(
        project,
        [
            make_record(f"e{month}-{index}", when=datetime(2026, month, 5 + index, tzinfo=UTC))
            for month in months
            for index in range(3)
        ],
    )
    before = rollup_totals()

    assert prune_events(now=NOW, dry_run=True) == 9  # August to October
    assert UsageEvent.objects.count() == 15
    assert prune_events(now=NOW) == 9

    kept = UsageEvent.objects.values_list("timestamp__month", flat=True)
    assert sorted(set(kept)) == [11, 12]
    assert rollup_totals() == before  # the dashboard's months are all still there
    assert MonthlyUserSpend.objects.filter(month__month=8).exists()


def test_the_api_refuses_an_event_older_than_the_retention(keep_two_months: None) -> None:
    with pytest.raises(WireError) as refused:
        parse_event(
            {"model": "gpt-4o", "inputTokens": 10, "timestamp": "2026-10-20T10:00:00Z"}, now=NOW
        )
    assert refused.value.field == "timestamp"
    assert "EVENT_RETENTION_MONTHS" in refused.value.message
    kept = parse_event(
        {"model": "gpt-4o", "inputTokens": 10, "timestamp": "2026-11-01T00:00:00Z"}, now=NOW
    )
    assert kept.timestamp == datetime(2026, 11, 1, tzinfo=UTC)


def test_the_command_reports_what_it_deletes(keep_two_months: None) -> None:
    project = make_project()
    ingest_records(project, [make_record("old", when=datetime(2020, 1, 10, tzinfo=UTC))])
    out = StringIO()
    call_command("weckr_prune_events", "--dry-run", stdout=out)
    assert "1 usage event(s)" in out.getvalue() and "would be deleted" in out.getvalue()
    call_command("weckr_prune_events", stdout=out)
    assert not UsageEvent.objects.exists()


def test_the_command_says_when_nothing_is_pruned() -> None:
    out = StringIO()
    call_command("weckr_prune_events", stdout=out)
    assert "every event is kept" in out.getvalue()


def test_a_bad_setting_is_a_clear_error(settings: Settings) -> None:
    settings.WECKR = {**settings.WECKR, "EVENT_RETENTION_MONTHS": "12"}
    with pytest.raises(ValueError, match="whole number of months"):
        event_cutoff(NOW)


def test_manage_py_check_names_a_bad_setting(settings: Settings) -> None:
    from django.core.checks import run_checks

    settings.WECKR = {**settings.WECKR, "EVENT_RETENTION_MONTHS": -3}
    assert "weckr.E010" in {message.id for message in run_checks()}
    settings.WECKR = {**settings.WECKR, "EVENT_RETENTION_MONTHS": 13}
    assert "weckr.E010" not in {message.id for message in run_checks()}
