from __future__ import annotations

import ast
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from weckr_django import ingest
from weckr_django.ingest import ingest_records
from weckr_django.models import (
    ANONYMOUS_KEY,
    DailyUsage,
    ModelPrice,
    MonthlyUserSpend,
    Project,
    UsageEvent,
)
from weckr_django.periods import local_day, month_bounds, month_start
from weckr_django.signals import usage_ingested

from .helpers import expected_cost, make_project, make_record

pytestmark = pytest.mark.django_db


def spend_row(project, user_key: str, month: date) -> MonthlyUserSpend:
    return MonthlyUserSpend.objects.get(project=project, user_key=user_key, month=month)


def test_ingest_inserts_events_and_rollups_once():
    project = make_project()
    first = [make_record("e1"), make_record("e2", output_tokens=900)]
    result = ingest_records(project, first)
    assert (result.created, result.duplicates) == (2, 0)
    assert sorted(result.created_event_ids) == ["e1", "e2"]

    again = ingest_records(project, [make_record("e2", output_tokens=900), make_record("e3")])
    assert (again.created, again.duplicates, again.created_event_ids) == (1, 1, ["e3"])

    records = [*first, make_record("e3")]
    row = spend_row(project, "u1", month_start(project))
    assert row.calls == 3
    assert row.cost_usd == sum(expected_cost(r) for r in records)
    assert row.input_tokens == 3000
    assert row.output_tokens == 500 + 900 + 500
    assert UsageEvent.objects.filter(project=project).count() == 3


def test_duplicate_inside_one_batch_counts_once():
    project = make_project()
    record = make_record("same")
    result = ingest_records(project, [record, make_record("same", output_tokens=5)])
    assert (result.created, result.duplicates) == (1, 1)
    row = spend_row(project, "u1", month_start(project))
    assert row.calls == 1
    assert row.cost_usd == expected_cost(record)
    daily = DailyUsage.objects.get(project=project)
    assert daily.calls == 1
    assert daily.output_tokens == record.output_tokens


def test_events_are_unique_per_project_not_globally():
    one, two = make_project("one"), make_project("two")
    assert ingest_records(one, [make_record("shared")]).created == 1
    assert ingest_records(two, [make_record("shared")]).created == 1


def test_cost_is_recomputed_and_client_cost_ignored():
    project = make_project()
    record = make_record("e1", cost_usd=Decimal("999"))
    ingest_records(project, [record])
    event = UsageEvent.objects.get(event_id="e1")
    record.cost_usd = None
    assert event.cost_usd == expected_cost(record)
    assert event.cost_usd < Decimal(1)
    assert event.priced


def test_admin_price_override_prices_the_call():
    project = make_project()
    ModelPrice.objects.create(
        model="my-finetune", input_per_mtok=Decimal("10"), output_per_mtok=Decimal("30")
    )
    ingest_records(
        project,
        [make_record("e1", model="my-finetune", input_tokens=1_000_000, output_tokens=100_000)],
    )
    event = UsageEvent.objects.get(event_id="e1")
    assert event.cost_usd == Decimal("13")
    assert event.priced


def test_unknown_model_is_kept_and_flagged_unpriced():
    project = make_project()
    ingest_records(project, [make_record("e1", model="no-such-model-xyz", provider="custom")])
    event = UsageEvent.objects.get(event_id="e1")
    assert not event.priced
    assert event.cost_usd == 0
    assert spend_row(project, "u1", month_start(project)).unpriced_calls == 1


def test_anonymous_calls_group_into_one_row():
    project = make_project()
    ingest_records(project, [make_record("a1", user_id=None), make_record("a2", user_id=None)])
    row = spend_row(project, ANONYMOUS_KEY, month_start(project))
    assert row.calls == 2
    assert MonthlyUserSpend.objects.filter(project=project).count() == 1


def test_month_boundaries_follow_the_project_timezone():
    project = make_project(timezone="America/New_York")
    # 03:30 UTC on 1 March is still 28 February in New York.
    late_february = datetime(2026, 3, 1, 3, 30, tzinfo=UTC)
    early_march = datetime(2026, 3, 1, 5, 30, tzinfo=UTC)
    ingest_records(
        project,
        [make_record("feb", when=late_february), make_record("mar", when=early_march)],
    )
    assert spend_row(project, "u1", date(2026, 2, 1)).calls == 1
    assert spend_row(project, "u1", date(2026, 3, 1)).calls == 1
    assert local_day(project, late_february) == date(2026, 2, 28)
    start, end = month_bounds(project, date(2026, 2, 1))
    assert start.astimezone(UTC) == datetime(2026, 2, 1, 5, 0, tzinfo=UTC)
    assert end.astimezone(UTC) == datetime(2026, 3, 1, 5, 0, tzinfo=UTC)
    assert start <= late_february < end


def test_daily_rollup_splits_feature_and_model_and_keeps_latest_plan():
    project = make_project()
    ingest_records(
        project,
        [
            make_record("e1", feature="summary", plan="free"),
            make_record("e2", feature="summary", plan="pro"),
            make_record("e3", feature="chat", model="gpt-4o-mini", plan="pro"),
        ],
    )
    rows = {
        (row.feature, row.model): row.calls for row in DailyUsage.objects.filter(project=project)
    }
    assert rows == {("summary", "gpt-4o"): 2, ("chat", "gpt-4o-mini"): 1}
    assert spend_row(project, "u1", month_start(project)).plan_name == "pro"


def test_empty_batch_does_nothing():
    project = make_project()
    assert ingest_records(project, []).created == 0
    assert not MonthlyUserSpend.objects.exists()


def test_editing_a_price_override_reprices_new_calls():
    project = make_project()
    ingest_records(project, [make_record("before", model="house-model", provider="custom")])
    assert not UsageEvent.objects.get(event_id="before").priced
    price = ModelPrice.objects.create(
        model="house-model", input_per_mtok=Decimal("1"), output_per_mtok=Decimal("2")
    )
    ingest_records(project, [make_record("after", model="house-model", provider="custom")])
    assert UsageEvent.objects.get(event_id="after").cost_usd == Decimal("0.002")
    price.input_per_mtok = Decimal("3")
    price.save()
    ingest_records(project, [make_record("edited", model="house-model", provider="custom")])
    assert UsageEvent.objects.get(event_id="edited").cost_usd == Decimal("0.004")


def test_record_usage_task_counts_and_logs_invalid_events(caplog):
    from weckr_django.tasks import record_usage

    project = make_project()
    good = make_record("good").to_wire()
    bad = {**make_record("bad").to_wire(), "outputTokens": "many"}
    result = record_usage.delay([good, bad, good], str(project.pk)).get()
    assert result == {"created": 1, "duplicates": 1, "invalid": 1}
    assert any("bad" in m and "outputTokens must be a whole number" in m for m in caplog.messages)
    assert UsageEvent.objects.filter(project=project).count() == 1


def test_ingest_announces_new_usage_after_the_commit(django_capture_on_commit_callbacks):
    project = make_project()
    heard: list[dict[str, object]] = []

    def listen(sender: object, **kwargs: object) -> None:
        heard.append({"sender": sender, **kwargs})

    usage_ingested.connect(listen)
    try:
        with django_capture_on_commit_callbacks(execute=True):
            records = [make_record("e1", user_id="u2"), make_record("e2", user_id=None)]
            ingest_records(project, records)
            assert heard == []  # not before the commit
        with django_capture_on_commit_callbacks(execute=True):
            ingest_records(project, [make_record("e1", user_id="u2")])  # nothing new
    finally:
        usage_ingested.disconnect(listen)
    assert len(heard) == 1
    assert heard[0]["sender"] is Project
    assert heard[0]["project_id"] == str(project.pk)
    assert heard[0]["user_keys"] == [ANONYMOUS_KEY, "u2"]


def test_a_failing_receiver_is_logged_and_the_ingest_stands(
    django_capture_on_commit_callbacks, caplog
):
    project = make_project()

    def broken(sender: object, **kwargs: object) -> None:
        raise RuntimeError("receiver down")

    usage_ingested.connect(broken)
    try:
        with django_capture_on_commit_callbacks(execute=True):
            assert ingest_records(project, [make_record("e1")]).created == 1
    finally:
        usage_ingested.disconnect(broken)
    assert UsageEvent.objects.filter(project=project).count() == 1
    assert any(
        record.name == "weckr_django" and "receiver down" in record.getMessage()
        for record in caplog.records
    )


def test_ingest_does_not_import_the_tasks():
    """The follow-up work hangs on ``signals.usage_ingested``: no import circle."""
    for node in ast.walk(ast.parse(Path(ingest.__file__).read_text())):
        if isinstance(node, ast.ImportFrom):
            assert node.module != "weckr_django.tasks"
            assert all(alias.name != "tasks" for alias in node.names)
        elif isinstance(node, ast.Import):
            assert all(alias.name != "weckr_django.tasks" for alias in node.names)


def test_record_usage_stores_the_valid_events_of_a_message_and_logs_the_rest(caplog):
    from weckr_django.tasks import record_usage

    project = make_project()
    events = [make_record(f"m{index}").to_wire() for index in range(20)]
    events[3]["tags"] = ["\x00"]
    events[11]["userId"] = "\ud800"
    events[15]["feature"] = "jane@example.com"

    result = record_usage.delay(events, str(project.pk)).get()

    assert result == {"created": 17, "duplicates": 0, "invalid": 3}
    assert UsageEvent.objects.filter(project=project).count() == 17
    logged = [
        message for message in caplog.messages if "is invalid and was not recorded" in message
    ]
    assert len(logged) == 3
    assert "m3 (#3 of the batch)" in logged[0] and "tags[0] contains a NUL character" in logged[0]
    assert "m11 (#11 of the batch)" in logged[1] and "surrogate" in logged[1]
    assert "m15 (#15 of the batch)" in logged[2] and "e-mail" in logged[2]


def test_record_usage_for_a_malformed_project_id_records_nothing_and_succeeds():
    from weckr_django.tasks import record_usage

    result = record_usage.delay([make_record("x").to_wire()], "not-a-uuid").get()

    assert result == {"created": 0, "duplicates": 0, "invalid": 1}


def test_ingest_payloads_lists_the_ids_of_the_stored_and_known_events():
    project = make_project()
    ingest.ingest_payloads(project, [make_record("known").to_wire()])

    result = ingest.ingest_payloads(
        project, [make_record("new").to_wire(), {"model": 5}, make_record("known").to_wire()]
    )

    assert (result.created, result.duplicates) == (1, 1)
    assert result.event_ids == ["new", "known"]
    assert [(item.index, item.field) for item in result.rejected] == [(1, "model")]
