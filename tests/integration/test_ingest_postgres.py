"""Ingest on PostgreSQL: batches large enough to go through COPY and the session's
staging tables keep the same guarantees as small ones."""

from __future__ import annotations

import pytest
from django.db import transaction

from weckr_django.ingest import ingest_records
from weckr_django.models import DailyUsage, MonthlyUserSpend, Project, UsageEvent

from ..django.helpers import make_record
from .test_celery_delivery import assert_rollups_match_events

pytestmark = pytest.mark.django_db(transaction=True)


def test_two_large_batches_in_one_transaction_are_each_counted_once() -> None:
    project = Project.objects.create(name="Acme")
    first = [make_record(f"a{i}", user_id=f"u{i % 80}") for i in range(200)]
    second = [make_record(f"b{i}", user_id=f"u{i % 80}") for i in range(200)]

    with transaction.atomic():
        # The staging tables are emptied by the statement that reads them, not only
        # at commit: the second batch must not insert the first one's rows again.
        assert ingest_records(project, first).created == 200
        assert ingest_records(project, second).created == 200
        assert ingest_records(project, first + second).duplicates == 400

    assert UsageEvent.objects.filter(project=project).count() == 400
    assert sum(row.calls for row in MonthlyUserSpend.objects.filter(project=project)) == 400
    assert sum(row.calls for row in DailyUsage.objects.filter(project=project)) == 400
    assert_rollups_match_events(project)


def test_a_large_batch_rolled_back_leaves_nothing_behind_for_the_next() -> None:
    project = Project.objects.create(name="Acme")
    batch = [make_record(f"e{i}", user_id=f"u{i % 60}") for i in range(120)]

    with pytest.raises(RuntimeError), transaction.atomic():
        ingest_records(project, batch)
        raise RuntimeError("the caller's transaction fails after the ingest")

    assert not UsageEvent.objects.filter(project=project).exists()
    assert ingest_records(project, batch).created == 120
    assert_rollups_match_events(project)


def test_an_event_postgresql_refuses_in_a_large_batch_is_rejected_alone() -> None:
    """The wire refuses what the columns cannot hold; a record that got past it (the
    database is the last word) is isolated by halving, through COPY as well."""
    from weckr_django.ingest import BatchResult, _ingest_isolating

    project = Project.objects.create(name="Acme")
    records = [(index, make_record(f"e{index}", user_id=f"u{index % 60}")) for index in range(120)]
    records[77][1].feature = "f" * 300  # longer than the column

    result = BatchResult()
    _ingest_isolating(project, records, result)

    assert result.created == 119
    assert [(item.index, item.event_id) for item in result.rejected] == [(77, "e77")]
    assert "value too long" in result.rejected[0].error
    assert UsageEvent.objects.filter(project=project).count() == 119
    assert_rollups_match_events(project)
