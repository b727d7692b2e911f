from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from decimal import Decimal
from typing import Any
from unittest import mock

import pytest
from django.core.cache import cache
from django.db.backends.utils import CursorWrapper
from django.test import Client

from weckr_core.pricing import price_usage
from weckr_django.models import ApiKey, Plan, Project


class Api:
    """A test client speaking to the wire API with one project's key."""

    def __init__(self, client: Client, project: Project, key: str) -> None:
        self.client = client
        self.project = project
        self.key = key

    def post(self, path: str, body: Any, *, key: str | None = None, raw: bytes | None = None):
        data = raw if raw is not None else json.dumps(body)
        return self.client.post(
            f"/api/v1/{path}",
            data=data,
            content_type="application/json",
            headers={"x-api-key": key if key is not None else self.key},
        )

    def get(self, path: str, params: dict[str, str] | None = None, *, key: str | None = None):
        return self.client.get(
            f"/api/v1/{path}",
            params or {},
            headers={"x-api-key": key if key is not None else self.key},
        )

    def log(self, **fields: Any):
        return self.post("log", event(**fields))

    def check(self, user_id: str, plan: str, model: str = "gpt-4o") -> dict[str, Any]:
        response = self.get("check", {"userId": user_id, "planName": plan, "model": model})
        assert response.status_code == 200, response.content
        body: dict[str, Any] = response.json()
        return body


def event(**fields: Any) -> dict[str, Any]:
    """A weckr-sdk style payload; keyword arguments override fields (None removes one)."""
    payload: dict[str, Any] = {
        "userId": "user-1",
        "feature": "summary",
        "model": "gpt-4o",
        "provider": "openai",
        "inputTokens": 1200,
        "outputTokens": 300,
        "cachedInputTokens": 0,
        "cacheCreationTokens": 0,
        "latencyMs": 420,
        "planName": "pro",
        "planRevenueUsd": 29,
        "costUsd": 123.45,  # a lie: the server must recompute it
    }
    payload.update(fields)
    return {name: value for name, value in payload.items() if value is not None}


def expected_cost(payload: dict[str, Any]) -> Decimal:
    return price_usage(
        payload["model"],
        input_tokens=payload.get("inputTokens", 0),
        output_tokens=payload.get("outputTokens", 0),
        cached_input_tokens=payload.get("cachedInputTokens", 0),
        cache_creation_tokens=payload.get("cacheCreationTokens", 0),
        reasoning_tokens=payload.get("reasoningTokens", 0),
        provider=payload.get("provider"),
    ).usd


def add_plan(
    project: Project, name: str, price: str, cap: str | None = None, action: str = "block"
) -> Plan:
    return Plan.objects.create(
        project=project,
        name=name,
        monthly_price_usd=Decimal(price),
        monthly_cap_usd=None if cap is None else Decimal(cap),
        cap_action=action,
    )


@pytest.fixture(autouse=True)
def fresh_rate_limits() -> Iterator[None]:
    cache.clear()
    yield
    cache.clear()


@pytest.fixture
def project(db: None) -> Project:
    return Project.objects.create(name="Acme")


@pytest.fixture
def api(client: Client, project: Project) -> Api:
    _, key = ApiKey.objects.create_key(project, "tests")
    return Api(client, project, key)


GoDown = Callable[..., None]


@pytest.fixture
def database_down(api: Api) -> Iterator[GoDown]:
    """``go_down(error, statement="")``: every statement containing ``statement``
    fails with ``error`` from then on, as when the server goes away. Up again before
    the test database is torn down."""
    with ExitStack() as patches:

        def go_down(error: type[Exception], statement: str = "") -> None:
            execute = CursorWrapper._execute  # type: ignore[attr-defined]

            def failing(self: CursorWrapper, sql: str, params: Any, *args: Any) -> Any:
                if statement in sql:
                    raise error("connection to server at 127.0.0.1, port 5432 failed")
                return execute(self, sql, params, *args)

            patches.enter_context(mock.patch.object(CursorWrapper, "_execute", failing))

        yield go_down
