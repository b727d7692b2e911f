"""One bad event in a batch, sent the ways events reach the server: HttpBackend over
HTTP to a server process, and a Celery message to a real worker."""

from __future__ import annotations

import os
from decimal import Decimal

import pytest

from tests.races import server_process
from weckr_core.backends.http import HttpBackend, WeckrBackendError
from weckr_django.models import ApiKey, Project, UsageEvent

from .conftest import CeleryWorker, usage_records, wait_until

pytestmark = pytest.mark.django_db(transaction=True)


def test_httpbackend_batch_with_one_poisoned_event_stores_the_rest_and_reports_it_once() -> None:
    project = Project.objects.create(name="Poison")
    _, key = ApiKey.objects.create_key(project, "poison")
    sent = usage_records(500, poisoned_at=250)
    errors: list[BaseException] = []
    env = {
        "DJANGO_SETTINGS_MODULE": "tests.settings_integration",
        "WECKR_IT_TOKEN": os.environ["WECKR_IT_TOKEN"],
    }
    with server_process(env) as url:
        backend = HttpBackend(
            key, f"{url}/api/v1/log", f"{url}/api/v1/check", on_error=errors.append
        )
        for record in sent:
            backend.record(record)
        assert backend.flush(timeout=60)
        backend.close(timeout=5)

    stored = set(UsageEvent.objects.filter(project=project).values_list("event_id", flat=True))
    poisoned = sent[250].event_id
    assert stored == {record.event_id for record in sent} - {poisoned}  # 499, once each
    [error] = errors  # the poisoned one, reported once, not retried, nothing else lost
    assert isinstance(error, WeckrBackendError)
    assert error.event_ids == (poisoned,)
    assert "tags" in str(error)


def test_a_celery_message_with_one_poisoned_event_stores_the_rest(
    celery_worker: CeleryWorker,
) -> None:
    from weckr_django.tasks import record_usage

    project = Project.objects.create(name="Poison")
    sent = usage_records(20, poisoned_at=3)
    celery_worker.start()
    record_usage.delay([record.to_wire() for record in sent], str(project.pk))

    def stored() -> set[str]:
        rows = UsageEvent.objects.filter(project=project).values_list("event_id", flat=True)
        return set(rows)

    expected = {record.event_id for record in sent} - {sent[3].event_id}
    assert wait_until(lambda: stored() == expected, timeout=60)
    assert UsageEvent.objects.filter(project=project).count() == 19
    assert Decimal(0) < sum(
        (event.cost_usd for event in UsageEvent.objects.filter(project=project)), Decimal(0)
    )
