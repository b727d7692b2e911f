"""Hermetic tests: no provider keys, no network calls home, CrewAI's HOME in a temp dir."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

import weckr_core
from weckr_core import pricing

_PROVIDER_KEYS = (
    "OPENAI_API_KEY",
    "ANTHROPIC_API_KEY",
    "GOOGLE_API_KEY",
    "GEMINI_API_KEY",
    "WECKR_API_KEY",
    "LANGSMITH_API_KEY",
    "LANGCHAIN_API_KEY",
)


@pytest.fixture(autouse=True)
def hermetic(
    monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[None]:
    for key in _PROVIDER_KEYS:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("LANGSMITH_TRACING", "false")
    monkeypatch.setenv("LANGCHAIN_TRACING_V2", "false")
    monkeypatch.setenv("CREWAI_DISABLE_TELEMETRY", "true")
    monkeypatch.setenv("CREWAI_TRACING_ENABLED", "false")
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    home: Path = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("HOME", str(home))
    previous_backend = weckr_core.configure(None)
    weckr_core.configure(previous_backend)
    yield
    weckr_core.configure(previous_backend)


_DB_FIXTURES = {"db", "transactional_db", "django_db_reset_sequences", "live_server"}


@pytest.fixture(autouse=True)
def price_overrides(request: pytest.FixtureRequest) -> Iterator[None]:
    """Tests with a database price through weckr_django's admin overrides, as the app
    does; tests without one price from the bundled table alone. Either way no
    resolved price leaks from one test into the next."""
    uses_db = request.node.get_closest_marker("django_db") is not None or bool(
        _DB_FIXTURES & set(request.fixturenames)
    )
    if uses_db:
        from weckr_django import overrides

        overrides.install()
    else:
        pricing.set_price_overrides(None)
        pricing.set_alternative_overrides(None)
    yield
    pricing.set_price_overrides(None)
    pricing.set_alternative_overrides(None)


@pytest.fixture(autouse=True)
def fresh_django_caches() -> None:
    """The database is emptied between tests: the app's backend and the plan cache
    must not keep a project or plans from an earlier test."""
    from django.conf import settings

    if not settings.configured:
        return
    from weckr_django import managers, plans
    from weckr_django.backend import DjangoBackend

    backend = weckr_core.get_backend()
    if isinstance(backend, DjangoBackend):
        backend.forget_project()
    plans.forget_plans()
    managers.key_projects.clear()


@pytest.fixture
def memory_backend() -> Iterator[weckr_core.MemoryBackend]:
    """A fresh MemoryBackend installed as the process default for one test."""
    backend = weckr_core.MemoryBackend()
    previous = weckr_core.configure(backend)
    yield backend
    weckr_core.configure(previous)
