"""``/api/v1/health`` (liveness) and ``/api/v1/ready`` (readiness): no key needed."""

from __future__ import annotations

from typing import Any

import pytest
from django.db import OperationalError

from tests.api.conftest import Api, GoDown


@pytest.mark.django_db
def test_health_and_ready_answer_without_a_key(client: Any) -> None:
    assert client.get("/api/v1/health").json() == {"status": "ok"}
    response = client.get("/api/v1/ready")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}
    assert "no-cache" in response.headers["Cache-Control"]


def test_ready_is_503_naming_the_database_while_it_is_down_and_health_stays_200(
    api: Api, database_down: GoDown
) -> None:
    database_down(OperationalError)

    assert api.client.get("/api/v1/health").status_code == 200
    response = api.client.get("/api/v1/ready")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "unavailable"
    assert "5432" in body["failed"]["database"]


@pytest.mark.django_db
def test_health_accepts_only_get(client: Any) -> None:
    assert client.post("/api/v1/health").status_code == 405
