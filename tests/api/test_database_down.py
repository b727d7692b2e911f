"""While the database is unreachable the API answers 503 with ``Retry-After``, not 500."""

from __future__ import annotations

from typing import Any

import pytest
from django.db import InterfaceError, OperationalError

from tests.api.conftest import Api, GoDown, event
from weckr_django.api.views import RETRY_AFTER_SECONDS


def assert_unavailable(response: Any) -> None:
    assert response.status_code == 503, response.content
    assert response.headers["Retry-After"] == str(RETRY_AFTER_SECONDS)
    assert response.json() == {"error": "The database is unavailable; try again.", "field": None}


@pytest.mark.parametrize("error", [OperationalError, InterfaceError])
def test_every_endpoint_is_503_while_the_database_is_down(
    api: Api, database_down: GoDown, error: type[Exception]
) -> None:
    database_down(error)

    assert_unavailable(api.get("me"))
    assert_unavailable(api.get("check", {"userId": "u1", "planName": "pro"}))
    assert_unavailable(api.post("log", event()))
    assert_unavailable(api.get(f"stats/{api.project.pk}"))


def test_a_database_lost_in_the_middle_of_an_ingest_is_503(api: Api, database_down: GoDown) -> None:
    database_down(OperationalError, "INSERT INTO")

    assert_unavailable(api.post("log", event()))
    assert_unavailable(api.post("log/batch", {"events": [event(), event()]}))


def test_the_schema_needs_no_database(client: Any, database_down: GoDown) -> None:
    database_down(OperationalError)

    assert client.get("/api/v1/schema").status_code == 200
