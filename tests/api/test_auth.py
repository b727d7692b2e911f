from __future__ import annotations

import uuid
from typing import Any

from django.utils import timezone

from tests.api.conftest import Api
from weckr_django.managers import key_projects
from weckr_django.models import ApiKey, Project


def test_me_answers_the_keys_project(api: Api) -> None:
    response = api.get("me")

    assert response.status_code == 200
    assert response.json() == {
        "project": {
            "id": str(api.project.pk),
            "name": "Acme",
            "created_at": api.project.created_at.isoformat(),
        }
    }


def test_a_missing_key_is_401(api: Api) -> None:
    response = api.client.get("/api/v1/me")

    assert response.status_code == 401
    assert "x-api-key" in response.json()["error"]


def test_an_unknown_key_is_401_for_every_endpoint(api: Api) -> None:
    wrong = "wk_" + "x" * 43
    responses = [
        api.get("me", key=wrong),
        api.get("check", {"userId": "u", "planName": "pro"}, key=wrong),
        api.post("log", {"model": "gpt-4o"}, key=wrong),
        api.post("log/batch", {"events": []}, key=wrong),
        api.get(f"stats/{api.project.pk}", key=wrong),
        api.get(f"users/{api.project.pk}", key=wrong),
    ]

    assert [response.status_code for response in responses] == [401] * len(responses)
    assert responses[0].json()["error"] == "Unknown API key."


def test_a_revoked_key_is_403(api: Api) -> None:
    ApiKey.objects.filter(project=api.project).update(revoked_at=timezone.now())

    response = api.get("me")

    assert response.status_code == 403
    assert "revoked" in response.json()["error"]


def test_a_key_revoked_elsewhere_is_refused_at_once(api: Api) -> None:
    """The key row is read on every request: a revocation by another process (an
    update that sends no signal here) applies to the very next request."""
    assert api.get("me").status_code == 200

    ApiKey.objects.filter(project=api.project).update(revoked_at=timezone.now())

    assert api.get("me").status_code == 403


def test_a_project_saved_here_is_seen_at_once_and_elsewhere_within_the_cache_time(
    api: Api, settings: Any
) -> None:
    # Kept long enough that the test cannot outlive the copy.
    settings.WECKR = {**settings.WECKR, "CAP_CACHE_SECONDS": 300}
    assert api.get("me").json()["project"]["name"] == "Acme"

    api.project.name = "Acme Inc"
    api.project.save()
    assert api.get("me").json()["project"]["name"] == "Acme Inc"

    # Saved by another process: no signal here; the kept copy serves until it expires.
    Project.objects.filter(pk=api.project.pk).update(name="Acme Ltd")
    assert api.get("me").json()["project"]["name"] == "Acme Inc"
    settings.WECKR = {**settings.WECKR, "CAP_CACHE_SECONDS": 0}
    key_projects.clear()
    assert api.get("me").json()["project"]["name"] == "Acme Ltd"
    Project.objects.filter(pk=api.project.pk).update(name="Acme GmbH")
    assert api.get("me").json()["project"]["name"] == "Acme GmbH"


def test_a_url_naming_another_project_is_404(api: Api) -> None:
    other = Project.objects.create(name="Other")

    for path in ("stats", "users"):
        assert api.get(f"{path}/{other.pk}").status_code == 404
        assert api.get(f"{path}/{uuid.uuid4()}").status_code == 404
        assert api.get(f"{path}/not-a-uuid").status_code == 404
        assert api.get(f"{path}/{api.project.pk}").status_code == 200


def test_use_of_a_key_is_recorded(api: Api) -> None:
    assert api.get("me").status_code == 200

    key = ApiKey.objects.get(project=api.project)
    assert key.last_used_at is not None
