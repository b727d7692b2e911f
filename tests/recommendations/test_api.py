"""The two read endpoints serve the recommendation payloads for the key's project only."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from django.core.cache import cache
from django.test import Client
from django.utils import timezone

from tests.recommendations.usage import add_plan, make_project, record_calls
from weckr_django.models import ApiKey, Project
from weckr_django.recommendations import (
    model_recommendations_payload,
    pricing_recommendations_payload,
)

pytestmark = pytest.mark.django_db

ENDPOINTS = {
    "models": model_recommendations_payload,
    "pricing": pricing_recommendations_payload,
}


@pytest.fixture(autouse=True)
def fresh_rate_limits() -> Iterator[None]:
    cache.clear()
    yield
    cache.clear()


@pytest.fixture
def project() -> Project:
    project = make_project()
    add_plan(project, "pro", "20.00")
    for number in range(1, 6):
        record_calls(
            project,
            6,
            at=timezone.now(),
            user_id=f"u{number}",
            plan="pro",
            input_tokens=400_000,
            output_tokens=200,
        )
    return project


def get(client: Client, path: str, key: str | None) -> tuple[int, dict[str, object]]:
    headers = {} if key is None else {"x-api-key": key}
    response = client.get(f"/api/v1/recommendations/{path}", headers=headers)
    return response.status_code, response.json()


@pytest.mark.parametrize("kind", sorted(ENDPOINTS))
def test_serves_the_payload_for_the_keys_project(
    client: Client, project: Project, kind: str
) -> None:
    _, key = ApiKey.objects.create_key(project)

    status, body = get(client, f"{kind}/{project.pk}", key)

    assert status == 200
    assert body == ENDPOINTS[kind](project)
    assert body["recommendations" if kind == "models" else "plans"]


@pytest.mark.parametrize("kind", sorted(ENDPOINTS))
def test_needs_a_key_and_hides_other_projects(client: Client, project: Project, kind: str) -> None:
    _, key = ApiKey.objects.create_key(project)
    other = make_project("Other")

    assert get(client, f"{kind}/{project.pk}", None)[0] == 401
    assert get(client, f"{kind}/{other.pk}", key)[0] == 404
    assert get(client, f"{kind}/{uuid.uuid4()}", key)[0] == 404
    assert get(client, f"{kind}/not-a-uuid", key)[0] == 404
