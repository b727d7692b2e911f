from __future__ import annotations

import threading
from decimal import Decimal
from pathlib import Path

import pytest
from asgiref.sync import sync_to_async
from django.core import mail
from django.core.exceptions import ImproperlyConfigured
from django.db import connection
from django.test.utils import CaptureQueriesContext, override_settings

import weckr_core
from weckr_core.backends import CapRequest, RunStop
from weckr_django.backend import DjangoBackend, install_default_backend
from weckr_django.ingest import ingest_records
from weckr_django.models import (
    AlertLog,
    CapReservation,
    MonthlyUserSpend,
    Plan,
    Project,
    UsageEvent,
)
from weckr_django.plans import forget_plans

from .helpers import expected_cost, make_plan, make_project, make_record


@pytest.mark.django_db
def test_the_app_installs_a_django_backend_at_start_up():
    assert isinstance(weckr_core.get_backend(), DjangoBackend)


@pytest.mark.django_db
def test_an_explicitly_configured_backend_is_kept():
    memory = weckr_core.MemoryBackend()
    weckr_core.configure(memory)
    assert install_default_backend() is None
    assert weckr_core.get_backend() is memory


@pytest.mark.django_db
def test_with_nothing_configured_a_default_project_is_created():
    backend = DjangoBackend(delivery="sync")
    backend.record(make_record("e1"))
    project = Project.objects.get()
    assert project.name == "Default"
    assert UsageEvent.objects.get().project == project


@pytest.mark.django_db
def test_default_project_setting_by_name_and_by_id():
    make_project("first")
    second = make_project("second")
    with override_settings(WECKR={"DELIVERY": "sync", "DEFAULT_PROJECT": "second"}):
        assert DjangoBackend().project() == second
    with override_settings(WECKR={"DELIVERY": "sync", "DEFAULT_PROJECT": str(second.pk)}):
        assert DjangoBackend().project() == second
    with (
        override_settings(WECKR={"DELIVERY": "sync", "DEFAULT_PROJECT": "missing"}),
        pytest.raises(ImproperlyConfigured, match="names no project"),
    ):
        DjangoBackend().project()


@pytest.mark.django_db
def test_several_projects_and_no_default_is_said_clearly_not_raised_into_the_view(caplog):
    make_project("first")
    make_project("second")
    backend = DjangoBackend(delivery="sync")
    decision = backend.reserve(CapRequest("u1", "pro", "gpt-4o"))
    assert decision.allowed  # the AI view keeps working...
    assert any("DEFAULT_PROJECT" in message for message in caplog.messages)  # ...loudly
    with override_settings(WECKR={"DELIVERY": "sync", "CAP_FAIL_CLOSED": True}):
        refused = backend.reserve(CapRequest("u1", "pro", "gpt-4o"))
    assert (refused.action, refused.reason) == ("block", "cap_store_unavailable")


@pytest.mark.django_db
def test_reserve_and_settle_go_to_the_cap_store():
    project = make_project()
    make_plan(project, "pro", cap="5")
    backend = DjangoBackend(delivery="sync")
    decision = backend.reserve(CapRequest("u1", "pro", "gpt-4o", input_tokens=100))
    reservation = decision.reservation
    assert reservation is not None
    assert CapReservation.objects.get(pk=reservation.id).amount_usd == reservation.amount_usd
    record = make_record("e1", input_tokens=100, output_tokens=10)
    backend.settle(reservation, record)
    row = CapReservation.objects.get(pk=reservation.id)
    assert row.settled
    assert row.amount_usd == expected_cost(record)
    record.reservation_id = reservation.id
    backend.record(record)
    assert not CapReservation.objects.exists()
    assert MonthlyUserSpend.objects.get(project=project).cost_usd == expected_cost(record)


@pytest.mark.django_db
def test_plan_definitions_are_cached_but_a_saved_plan_is_seen_at_once():
    project = make_project()
    plan = make_plan(project, "pro", cap="0.001")
    backend = DjangoBackend(delivery="sync")
    assert backend.check("u1", "pro", "gpt-4o").allowed  # nothing spent yet
    ingest_records(project, [make_record("e1", input_tokens=100_000)])
    assert backend.check("u1", "pro", "gpt-4o").action == "block"
    plan.monthly_cap_usd = Decimal(100)
    plan.save()
    assert backend.check("u1", "pro", "gpt-4o").allowed


@pytest.mark.django_db
def test_reserve_without_a_user_needs_no_query():
    backend = DjangoBackend(delivery="sync")
    with CaptureQueriesContext(connection) as queries:
        assert backend.reserve(CapRequest(None, "pro", "gpt-4o")).allowed
        assert backend.check(None, "pro", "gpt-4o").allowed
    assert len(queries) == 0


@pytest.mark.django_db(transaction=True)
async def test_areserve_decides_off_the_event_loop():
    project = await Project.objects.acreate(name="Acme")
    await sync_to_async(make_plan)(project, "pro", cap="0.001")
    await sync_to_async(ingest_records)(project, [make_record("e1", input_tokens=100_000)])
    backend = DjangoBackend(delivery="sync")

    # On the event loop's thread Django refuses queries: areserve must not make one here.
    blocked = await backend.areserve(CapRequest("u1", "pro", "gpt-4o", input_tokens=10))
    await Plan.objects.filter(project=project).aupdate(monthly_cap_usd=Decimal(100))
    forget_plans()
    allowed = await backend.areserve(CapRequest("u1", "pro", "gpt-4o", input_tokens=10))

    assert blocked.action == "block"
    assert blocked.current_spend is not None and blocked.current_spend > Decimal("0.001")
    assert allowed.reservation is not None
    # Settling from the event loop does not wait on the database on the loop's thread;
    # flush waits for it.
    backend.settle(allowed.reservation, make_record("e2", input_tokens=10, output_tokens=1))
    assert await sync_to_async(backend.flush)(5)
    row = await CapReservation.objects.aget(pk=allowed.reservation.id)
    assert row.settled
    assert (await backend.areserve(CapRequest(None, "pro", "gpt-4o"))).allowed


@pytest.mark.django_db
def test_sync_delivery_ingests_on_the_callers_thread():
    project = make_project()
    DjangoBackend(delivery="sync").record(make_record("e1"))
    assert MonthlyUserSpend.objects.get(project=project).calls == 1


@pytest.mark.django_db(transaction=True)
async def test_sync_delivery_works_from_async_code():
    project = await Project.objects.acreate(name="Acme")
    DjangoBackend(delivery="sync").record(make_record("e1"))
    assert await UsageEvent.objects.filter(project=project).acount() == 1


@pytest.mark.django_db(transaction=True)
def test_thread_delivery_returns_at_once_and_flush_delivers():
    project = make_project()
    backend = DjangoBackend(delivery="thread")
    records = [make_record(f"e{i}", user_id=f"u{i % 3}") for i in range(50)]
    with CaptureQueriesContext(connection) as queries:
        for record in records:
            backend.record(record)
    assert len(queries) == 0  # the caller's thread never touched the database
    assert backend.flush(10)
    assert UsageEvent.objects.filter(project=project).count() == 50
    assert sum(row.calls for row in MonthlyUserSpend.objects.filter(project=project)) == 50
    spend = sum((row.cost_usd for row in MonthlyUserSpend.objects.all()), Decimal(0))
    assert spend > 0


@pytest.mark.django_db(transaction=True)
def test_thread_delivery_from_many_threads_counts_every_event_once():
    project = make_project()
    backend = DjangoBackend(delivery="thread")

    def work(offset: int) -> None:
        for i in range(40):
            backend.record(make_record(f"t{offset}-{i}"))
            backend.record(make_record(f"t{offset}-{i}"))  # a resend

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert backend.flush(10)
    assert MonthlyUserSpend.objects.get(project=project).calls == 160
    assert UsageEvent.objects.count() == 160


@pytest.mark.django_db(transaction=True)
def test_a_bad_row_does_not_lose_the_rest_of_the_batch(caplog):
    project = make_project()
    backend = DjangoBackend(delivery="thread")
    backend.record(make_record("good-1"))
    backend.record(make_record("bad", input_tokens=-5))  # refused by the wire rules
    backend.record(make_record("good-2"))
    assert backend.flush(10)
    ids = set(UsageEvent.objects.filter(project=project).values_list("event_id", flat=True))
    assert ids == {"good-1", "good-2"}
    assert MonthlyUserSpend.objects.get(project=project).calls == 2
    assert any("bad was not recorded" in message for message in caplog.messages)


@pytest.mark.django_db
def test_sync_recording_never_raises_into_the_caller(caplog):
    make_project()
    DjangoBackend(delivery="sync").record(make_record("broken", input_tokens=-5))
    assert not UsageEvent.objects.exists()
    assert any("broken was not recorded" in message for message in caplog.messages)


@pytest.mark.django_db
def test_in_process_records_follow_the_servers_privacy_rules(caplog):
    make_project()
    DjangoBackend(delivery="sync").record(make_record("e1", user_id="ada@example.com"))
    assert not UsageEvent.objects.exists()
    assert any("e-mail address" in message for message in caplog.messages)


@pytest.mark.django_db
def test_a_reported_run_stop_becomes_one_alert_sent_on_the_projects_channels(
    django_capture_on_commit_callbacks,
):
    project = make_project(alert_email="ops@example.com")
    backend = DjangoBackend()
    stop = RunStop(
        run_id="run-7",
        reason="max_llm_calls=5 reached",
        source="langchain",
        llm_calls=5,
        tokens=6_000,
        cost_usd=Decimal("0.0315"),
        user_id="u1",
        plan="pro",
        agent="researcher",
    )

    with django_capture_on_commit_callbacks(execute=True):
        weckr_core.backends.report_run_stop(backend, stop)
        weckr_core.backends.report_run_stop(backend, stop)  # a resend adds nothing

    alert = AlertLog.objects.get(project=project)
    assert (alert.kind, alert.user_id, alert.status) == (
        AlertLog.Kind.RUN_STOPPED,
        "u1",
        AlertLog.Status.SENT,
    )
    assert (alert.window_tokens, alert.window_cost_usd) == (6_000, Decimal("0.0315"))
    assert alert.details["run_id"] == "run-7"
    assert alert.details["agent"] == "researcher"
    [message] = mail.outbox
    assert "stopped by a loop guard" in message.subject
    assert "max_llm_calls=5 reached" in message.body


def test_the_spool_goes_beside_a_sqlite_database_or_in_a_writable_base_dir(
    tmp_path: Path,
) -> None:
    from weckr_django.backend import SPOOL_FILE_NAME, spool_path

    # The test database is SQLite in memory: no file to sit beside.
    with override_settings(BASE_DIR=tmp_path):
        assert spool_path() == tmp_path / SPOOL_FILE_NAME
    with override_settings(BASE_DIR=tmp_path / "not-there"):  # nowhere to write
        assert spool_path() is None
    with override_settings(WECKR={"SPOOL": str(tmp_path / "mine.db")}):
        assert spool_path() == tmp_path / "mine.db"
    with override_settings(WECKR={"SPOOL": None}, BASE_DIR=tmp_path):
        assert spool_path() is None
