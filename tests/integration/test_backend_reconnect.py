"""DjangoBackend on a thread outside the request cycle, when its connection dies."""

from __future__ import annotations

import threading
from decimal import Decimal

import pytest
from django.db import connection

from weckr_django.backend import DjangoBackend
from weckr_django.models import Plan, Project

from .database import open_test_database

pytestmark = pytest.mark.django_db(transaction=True)


def terminate(pid: int) -> None:
    with open_test_database() as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (pid,))


def test_caps_come_back_on_a_worker_thread_after_its_connection_was_dropped() -> None:
    """A database restart drops every connection; Django replaces a request thread's
    between requests, but nobody does for a worker's or a framework's thread."""
    project = Project.objects.create(name="Acme")
    Plan.objects.create(
        project=project, name="free", monthly_price_usd=Decimal(0), monthly_cap_usd=Decimal(0)
    )
    backend = DjangoBackend(project=str(project.pk), delivery="sync")
    actions: list[str] = []

    def worker() -> None:
        try:
            actions.append(backend.check("u1", "free", "gpt-4o").action)
            terminate(connection.connection.info.backend_pid)
            backend.forget_project()  # as after a minute: the project is read again
            # The check fails: u1, refused a moment ago, stays refused; u2 is new to
            # this process, so its decision needs the database, reconnected.
            actions.append(backend.check("u1", "free", "gpt-4o").action)
            actions.append(backend.check("u2", "free", "gpt-4o").action)
        finally:
            connection.close()

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join(30)

    assert actions == ["block", "block", "block"]
