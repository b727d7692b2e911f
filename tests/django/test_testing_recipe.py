"""The README's "Testing an app that uses Weckr" recipe, as written there: a
MemoryBackend fixture, the plan given by a test setting, a cap error turned into a
402 by the app's view, and nothing spent."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from django.http import HttpRequest, JsonResponse
from django.test import Client
from django.urls import path
from pytest_django.fixtures import Settings

import weckr_core
from tests.core import providers as p
from weckr_core import WeckrCapError

pytestmark = [pytest.mark.urls(__name__), pytest.mark.django_db]

PROVIDER = p.FakeProvider(p.openai_chat_body("gpt-4o-mini", p.openai_usage(12, 30)))


def summarize(request: HttpRequest) -> JsonResponse:  # the app's view
    client = weckr_core.wrap(p.openai_client(PROVIDER))
    messages: Any = [{"role": "user", "content": "Summarize this."}]
    try:
        client.chat.completions.create(model="gpt-4o-mini", messages=messages, max_tokens=200)
    except WeckrCapError as error:
        return JsonResponse({"error": str(error)}, status=402)
    return JsonResponse({"ok": True})


urlpatterns = [path("summarize/", summarize)]


@pytest.fixture
def weckr_backend() -> Iterator[weckr_core.MemoryBackend]:
    backend = weckr_core.MemoryBackend()
    previous = weckr_core.configure(backend)
    yield backend
    weckr_core.configure(previous)


@pytest.fixture(autouse=True)
def weckr_settings(settings: Settings) -> None:
    settings.WECKR = {"DELIVERY": "sync", "PLAN_RESOLVER": lambda request: "free"}


def test_a_user_over_the_cap_gets_a_402(
    client: Client, django_user_model: Any, weckr_backend: weckr_core.MemoryBackend
) -> None:
    user = django_user_model.objects.create_user("ada")
    client.force_login(user)
    weckr_backend.set_cap("free", "0.50")
    weckr_backend.set_spend(str(user.pk), "0.50")  # already spent this month
    PROVIDER.requests.clear()

    response = client.post("/summarize/")

    assert response.status_code == 402
    assert "spending cap reached" in response.json()["error"]
    assert weckr_backend.records == []  # refused before the provider was called
    assert PROVIDER.hits == 0


def test_under_the_cap_the_call_is_recorded_for_the_user(
    client: Client, django_user_model: Any, weckr_backend: weckr_core.MemoryBackend
) -> None:
    user = django_user_model.objects.create_user("ada")
    client.force_login(user)
    weckr_backend.set_cap("free", "0.50")

    assert client.post("/summarize/").status_code == 200
    [record] = weckr_backend.records
    assert (record.user_id, record.plan, record.output_tokens) == (str(user.pk), "free", 30)
