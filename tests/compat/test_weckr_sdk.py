"""The unmodified, published weckr-sdk 0.3.0 against this server.

A live test server runs the API; the SDK drives a real ``openai.OpenAI`` client whose
HTTP goes to a fake transport, so the SDK's own request/response handling runs.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import httpx
import openai
import pytest
import weckr
from django.utils import timezone

from weckr_core.pricing import cheaper_alternative, price_usage
from weckr_core.records import UsageRecord
from weckr_django.ingest import ingest_records
from weckr_django.models import ApiKey, Plan, Project, UsageEvent

pytestmark = pytest.mark.django_db(transaction=True)

PLANS = {"free": 0, "pro": 29, "team": 99}
PROMPT_TOKENS, CACHED_TOKENS, COMPLETION_TOKENS = 1800, 1024, 250


@dataclass
class FakeOpenAI:
    """What the provider saw; answers every chat call with fixed usage."""

    models: list[str] = field(default_factory=list)

    def handle(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        self.models.append(body["model"])
        return httpx.Response(
            200,
            json={
                "id": "chatcmpl-1",
                "object": "chat.completion",
                "created": 1_700_000_000,
                "model": body["model"],
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": "ok"},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {
                    "prompt_tokens": PROMPT_TOKENS,
                    "completion_tokens": COMPLETION_TOKENS,
                    "total_tokens": PROMPT_TOKENS + COMPLETION_TOKENS,
                    "prompt_tokens_details": {"cached_tokens": CACHED_TOKENS},
                },
            },
        )

    def client(self) -> openai.OpenAI:
        return openai.OpenAI(
            api_key="sk-test",
            base_url="https://api.openai.test/v1",
            http_client=httpx.Client(transport=httpx.MockTransport(self.handle)),
            max_retries=0,
        )


@dataclass
class Server:
    url: str
    project: Project
    key: str

    def sdk(self, key: str | None = None) -> weckr.Weckr:
        return weckr.Weckr(
            api_key=key or self.key,
            plans=PLANS,
            endpoint=f"{self.url}/api/v1/log",
            check_endpoint=f"{self.url}/api/v1/check",
        )


@pytest.fixture
def server(live_server: Any) -> Iterator[Server]:
    project = Project.objects.create(name="SDK compat")
    Plan.objects.create(project=project, name="team", monthly_price_usd=99)
    Plan.objects.create(
        project=project, name="free", monthly_price_usd=0, monthly_cap_usd=Decimal("0.05")
    )
    Plan.objects.create(
        project=project,
        name="pro",
        monthly_price_usd=29,
        monthly_cap_usd=Decimal("0.05"),
        cap_action=Plan.CapAction.DOWNGRADE,
    )
    _, key = ApiKey.objects.create_key(project, "sdk")
    yield Server(live_server.url, project, key)


def chat(wk: weckr.Weckr, client: openai.OpenAI, user: str, plan: str, model: str = "gpt-4o"):
    return wk.chat(
        client,
        {
            "model": model,
            "messages": [{"role": "user", "content": "Summarize this."}],
            "user_id": user,
            "feature": "summary",
            "plan": plan,
        },
    )


def wait_for_event(project: Project, user_id: str) -> UsageEvent:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        event: UsageEvent | None = UsageEvent.objects.filter(
            project=project, user_id=user_id
        ).first()
        if event is not None:
            return event
        time.sleep(0.05)
    raise AssertionError(f"no usage event for {user_id} reached the server")


def overspend(project: Project, user_id: str, plan: str) -> None:
    """A month's worth of spend for ``user_id``, well past the 0.05 USD caps."""
    record = UsageRecord(
        user_id=user_id, plan=plan, provider="openai", model="gpt-4o", timestamp=timezone.now()
    )
    record.input_tokens, record.output_tokens = 50_000, 5_000
    ingest_records(project, [record])


def expected_cost(model: str) -> Decimal:
    return price_usage(
        model,
        input_tokens=PROMPT_TOKENS,
        output_tokens=COMPLETION_TOKENS,
        cached_input_tokens=CACHED_TOKENS,
        provider="openai",
    ).usd


def test_calls_land_with_the_server_computed_cost(server: Server) -> None:
    provider = FakeOpenAI()
    wk = server.sdk()

    response = chat(wk, provider.client(), "u-team", "team")
    wk.flush()

    assert response.choices[0].message.content == "ok"
    event = wait_for_event(server.project, "u-team")
    assert event.event_id == wk.last_event_id
    assert (event.model, event.provider, event.feature, event.plan_name) == (
        "gpt-4o",
        "openai",
        "summary",
        "team",
    )
    assert (event.input_tokens, event.cached_input_tokens, event.output_tokens) == (
        PROMPT_TOKENS,
        CACHED_TOKENS,
        COMPLETION_TOKENS,
    )
    assert event.cost_usd == expected_cost("gpt-4o").quantize(event.cost_usd)
    assert event.plan_revenue_usd == Decimal(99)


def test_block_raises_the_sdks_cap_error_before_the_call(server: Server) -> None:
    overspend(server.project, "u-free", "free")
    provider = FakeOpenAI()

    with pytest.raises(weckr.WeckrCapError) as raised:
        chat(server.sdk(), provider.client(), "u-free", "free")

    assert provider.models == []
    assert raised.value.cap == pytest.approx(0.05)
    assert raised.value.current_spend > 0.05


def test_downgrade_swaps_the_model(server: Server) -> None:
    overspend(server.project, "u-pro", "pro")
    provider = FakeOpenAI()
    wk = server.sdk()
    cheaper = cheaper_alternative("gpt-4o")

    with pytest.warns(weckr.WeckrDowngradeWarning):
        chat(wk, provider.client(), "u-pro", "pro", model="gpt-4o")
    wk.flush()

    assert cheaper is not None
    assert provider.models == [cheaper]
    event = UsageEvent.objects.get(event_id=wk.last_event_id)
    assert event.model == cheaper
    assert event.cost_usd == expected_cost(cheaper).quantize(event.cost_usd)


def test_a_wrong_key_raises_the_sdks_config_error(server: Server) -> None:
    provider = FakeOpenAI()

    with pytest.raises(weckr.WeckrConfigError) as raised:
        chat(server.sdk(key="wk_not-a-real-key"), provider.client(), "u-team", "team")

    assert raised.value.code == "invalid_api_key"
    assert provider.models == []


def test_a_revoked_key_raises_the_sdks_config_error(server: Server) -> None:
    ApiKey.objects.filter(project=server.project).update(revoked_at=timezone.now())

    with pytest.raises(weckr.WeckrConfigError) as raised:
        chat(server.sdk(), FakeOpenAI().client(), "u-team", "team")

    assert raised.value.code == "forbidden"
