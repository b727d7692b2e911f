"""``POST /api/v1/track``: Tokenr's and AICostManager's payloads, as their SDKs send
them, with ``Authorization: Bearer``. (Their published SDKs run against a live server
in ``tests/integration/test_peer_sdks.py``.)"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import pytest
from django.test import Client

from tests.api.conftest import Api
from weckr_core.pricing import price_usage
from weckr_django.models import UsageEvent


def track(api: Api, body: Any, *, bearer: str | None = None) -> Any:
    return api.client.post(
        "/api/v1/track",
        data=json.dumps(body),
        content_type="application/json",
        headers={"Authorization": f"Bearer {bearer or api.key}"},
    )


def usd(model: str, *, input_tokens: int, output_tokens: int, cached_input_tokens: int) -> float:
    cost = price_usage(
        model,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        cached_input_tokens=cached_input_tokens,
    )
    return float(cost.usd)


# -- Tokenr --------------------------------------------------------------------------


def test_a_tokenr_call_is_stored_priced_here_and_answered_with_its_cost(api: Api) -> None:
    response = track(
        api,
        {
            "provider": "openai",
            "model": "gpt-4o",
            "input_tokens": 800,  # without the cache reads, as Tokenr sends it
            "output_tokens": 120,
            "cache_read_tokens": 200,
            "agent_id": "support-bot",
            "feature_name": "triage",
            "team_id": "team-42",
            "status": "success",
            "latency_ms": 950,
            "tags": {"env": "prod", "tier": 2},
            "requested_at": "2026-12-07T10:00:00+00:00",
        },
    )

    assert response.status_code == 201, response.content
    body = response.json()
    expected = usd("gpt-4o", input_tokens=1000, cached_input_tokens=200, output_tokens=120)
    assert body["cost"] == pytest.approx(expected) and body["ok"] is True
    stored = UsageEvent.objects.get(project=api.project, event_id=body["eventId"])
    assert (stored.input_tokens, stored.cached_input_tokens, stored.output_tokens) == (
        1000,
        200,
        120,
    )
    assert (stored.account_id, stored.user_id) == ("team-42", None)
    assert (stored.feature, stored.agent) == ("triage", "support-bot")
    assert sorted(stored.tags) == ["env:prod", "tier:2"]
    assert (stored.latency_ms, stored.status, stored.source) == (950, "ok", "manual")
    assert stored.timestamp.isoformat() == "2026-12-07T10:00:00+00:00"


def test_a_user_id_in_tokenr_tags_is_the_user_of_the_teams_call(api: Api) -> None:
    response = track(
        api,
        {
            "provider": "anthropic",
            "model": "claude-haiku-4-5",
            "input_tokens": 10,
            "output_tokens": 5,
            "cache_write_tokens": 40,
            "team_id": "team-42",
            "tags": {"user_id": "u-9"},
            "status": "error",
        },
    )

    assert response.status_code == 201, response.content
    stored = UsageEvent.objects.get(event_id=response.json()["eventId"])
    assert (stored.user_id, stored.account_id) == ("u-9", "team-42")
    assert (stored.tags, stored.status) == ([], "error")
    assert stored.cache_creation_tokens == 40


@pytest.mark.parametrize(
    ("change", "field", "words"),
    [
        ({"input_tokens": -1}, "input_tokens", "whole number"),
        ({"output_tokens": "12"}, "output_tokens", "whole number"),
        ({"output_tokens": None}, "output_tokens", "required"),
        ({"status": "done"}, "status", "'success' or 'error'"),
        ({"tags": ["a"]}, "tags", "JSON object"),
        ({"team_id": "jane@example.com"}, "team_id", "e-mail"),
        ({"tags": {"user_id": "jane@example.com"}}, "tags.user_id", "tags.user_id"),
        ({"feature_name": "x" * 300}, "feature_name", "255"),
        ({"model": None}, "model", "model"),
    ],
)
def test_a_bad_tokenr_call_is_a_400_naming_its_own_field(
    api: Api, change: dict[str, Any], field: str, words: str
) -> None:
    payload = {"provider": "openai", "model": "gpt-4o", "input_tokens": 5, "output_tokens": 1}
    payload.update(change)
    payload = {name: value for name, value in payload.items() if value is not None}

    response = track(api, payload)

    assert response.status_code == 400, response.content
    body = response.json()
    assert body["field"] == field and words in body["error"], body
    assert not UsageEvent.objects.exists()


# -- AICostManager -------------------------------------------------------------------


def tracked(**fields: Any) -> dict[str, Any]:
    record: dict[str, Any] = {
        "service_key": "openai::gpt-4o-mini",
        "response_id": "chatcmpl-1",
        "timestamp": "1796637600.25",  # epoch seconds, as a string
        "payload": {
            "prompt_tokens": 1000,
            "completion_tokens": 200,
            "total_tokens": 1200,
            "prompt_tokens_details": {"cached_tokens": 600, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0},
        },
        "customer_key": "acme-corp",
        "context": {"plan_tier": "gold"},
    }
    record.update(fields)
    return {name: value for name, value in record.items() if value is not None}


def test_aicostmanager_records_of_every_vendor_are_priced_from_their_raw_usage(
    api: Api,
) -> None:
    records = [
        tracked(),
        tracked(
            service_key="openai::gpt-5",
            response_id="resp-1",
            payload={
                "input_tokens": 500,
                "input_tokens_details": {"cached_tokens": 0},
                "output_tokens": 300,
                "output_tokens_details": {"reasoning_tokens": 100},
            },
        ),
        tracked(
            service_key="anthropic::claude-haiku-4-5",
            response_id="msg-1",
            payload={
                "input_tokens": 100,
                "output_tokens": 50,
                "cache_read_input_tokens": 400,
                "cache_creation_input_tokens": 30,
                "server_tool_use": {},
                "service_tier": "standard",
            },
        ),
        tracked(
            service_key="google::gemini-2.5-flash",
            response_id="gem-1",
            payload={
                "promptTokenCount": 70,
                "toolUsePromptTokenCount": 10,
                "candidatesTokenCount": 20,
                "thoughtsTokenCount": 5,
                "promptTokensDetails": [{"modality": "TEXT", "token_count": 80}],
            },
            context={"user_id": "u-3"},
        ),
        tracked(
            service_key="amazon-bedrock::anthropic.claude-3-5-haiku-20241022-v1:0",
            response_id="bed-1",
            payload={
                "inputTokens": 100,
                "outputTokens": 40,
                "totalTokens": 640,
                "cacheReadInputTokens": 450,
                "cacheWriteInputTokens": 50,
            },
        ),
    ]

    response = track(api, {"tracked": records})

    assert response.status_code == 200, response.content
    results = response.json()["results"]
    assert [(r["response_id"], r["status"], r["errors"]) for r in results] == [
        ("chatcmpl-1", "completed", []),
        ("resp-1", "completed", []),
        ("msg-1", "completed", []),
        ("gem-1", "completed", []),
        ("bed-1", "completed", []),
    ]
    stored = {event.event_id: event for event in UsageEvent.objects.filter(project=api.project)}
    chat = stored["chatcmpl-1"]
    assert (chat.input_tokens, chat.cached_input_tokens, chat.output_tokens) == (1000, 600, 200)
    assert (chat.account_id, chat.user_id) == ("acme-corp", None)
    assert (chat.tags, chat.provider) == (["plan_tier:gold"], "openai")
    assert chat.timestamp.timestamp() == pytest.approx(1796637600.25)
    expected = usd("gpt-4o-mini", input_tokens=1000, cached_input_tokens=600, output_tokens=200)
    assert results[0]["cost"] == pytest.approx(expected)
    assert chat.cost_usd == pytest.approx(Decimal(str(expected)), abs=Decimal("1e-9"))
    assert (stored["resp-1"].output_tokens, stored["resp-1"].reasoning_tokens) == (300, 100)
    claude = stored["msg-1"]
    assert (claude.input_tokens, claude.cached_input_tokens) == (500, 400)
    assert claude.cache_creation_tokens == 30
    gemini = stored["gem-1"]
    assert (gemini.input_tokens, gemini.output_tokens, gemini.reasoning_tokens) == (80, 25, 5)
    assert (gemini.user_id, gemini.account_id, gemini.tags) == ("u-3", "acme-corp", [])
    bedrock = stored["bed-1"]
    assert (bedrock.input_tokens, bedrock.cached_input_tokens, bedrock.output_tokens) == (
        550,
        450,
        40,
    )
    assert (bedrock.cache_creation_tokens, bedrock.provider) == (50, "amazon-bedrock")


def test_a_resent_record_is_stored_once_and_answered_completed_with_its_cost(api: Api) -> None:
    first = track(api, {"tracked": [tracked()]}).json()["results"][0]
    again = track(api, {"tracked": [tracked()]}).json()["results"][0]

    assert again == first
    assert UsageEvent.objects.filter(event_id="chatcmpl-1").count() == 1


def test_bad_records_are_answered_one_by_one_and_the_good_ones_stored(api: Api) -> None:
    records = [
        tracked(response_id="good-1"),
        tracked(response_id="unknown-vendor", service_key="acme::llm-1"),
        tracked(response_id="no-vendor", service_key="gpt-4o"),
        tracked(response_id="junk-count", payload={"prompt_tokens": "many"}),
        tracked(response_id="deep-junk", payload={"prompt_tokens_details": {"cached_tokens": -3}}),
        tracked(response_id="bad-time", timestamp="yesterday"),
        tracked(response_id="bad-id!"),
        tracked(response_id="pii", customer_key="jane@example.com"),
        "not a record",
        tracked(response_id="good-2", payload=None),  # no usage: kept, flagged
        tracked(response_id="list-count", payload={"prompt_tokens": 5, "completion_tokens": [9]}),
        tracked(response_id="no-user", context={"user_id": ""}),
        tracked(response_id="user-pii", context={"user_id": "jane@example.com"}),
    ]

    response = track(api, {"tracked": records})

    assert response.status_code == 200, response.content
    results = response.json()["results"]
    outcome = [(r["response_id"], r["status"]) for r in results]
    assert outcome == [
        ("good-1", "completed"),
        ("unknown-vendor", "service_key_unknown"),
        ("no-vendor", "service_key_unknown"),
        ("junk-count", "error"),
        ("deep-junk", "error"),
        ("bad-time", "error"),
        ("bad-id!", "error"),
        ("pii", "error"),
        (None, "error"),
        ("good-2", "completed"),
        ("list-count", "error"),
        ("no-user", "completed"),
        ("user-pii", "error"),
    ]
    errors = [result["errors"][0] if result["errors"] else "" for result in results]
    assert "payload.prompt_tokens must be a whole number" in errors[3]
    assert "payload.prompt_tokens_details.cached_tokens" in errors[4]
    assert errors[5].startswith("timestamp")
    assert errors[6].startswith("response_id")
    assert errors[7].startswith("customer_key") and "e-mail" in errors[7]
    assert errors[10].startswith("payload.completion_tokens must be a whole number")
    assert errors[12].startswith("context.user_id") and "e-mail" in errors[12], errors[12]
    stored = set(UsageEvent.objects.values_list("event_id", flat=True))
    assert stored == {"good-1", "good-2", "no-user"}
    assert UsageEvent.objects.get(event_id="no-user").user_id is None
    assert UsageEvent.objects.get(event_id="good-2").usage_reported is False


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"tracked": {"service_key": "openai::gpt-4o"}}, "must be a list"),
        ({"tracked": [tracked()] * 1001}, "at most 1000"),
        (["a list"], "JSON object"),
    ],
)
def test_a_malformed_request_is_a_400(api: Api, body: Any, words: str) -> None:
    response = track(api, body)

    assert response.status_code == 400
    assert words in response.json()["error"]


def test_bearer_and_x_api_key_both_authenticate_and_a_bad_bearer_is_401(
    api: Api, client: Client
) -> None:
    body = {"tracked": [tracked()]}
    assert track(api, body, bearer="wk_not-a-key").status_code == 401
    assert api.post("track", body).status_code == 200  # x-api-key
    no_key = client.post("/api/v1/track", data=json.dumps(body), content_type="application/json")
    assert no_key.status_code == 401
    assert "Authorization: Bearer" in no_key.json()["error"]


def test_text_utf8_cannot_hold_is_escaped_in_the_answer_not_a_500(api: Api) -> None:
    # json.dumps escapes lone surrogates as \\udXXX, as a JavaScript client sends them.
    records = [
        tracked(response_id="\ud800"),
        tracked(response_id="s-1", payload={"\udfff_tokens": "many"}),
    ]

    response = api.post("track", None, raw=json.dumps({"tracked": records}).encode())

    assert response.status_code == 200, response.content
    first, second = response.json()["results"]
    assert (first["response_id"], first["status"]) == ("\\ud800", "error")
    assert second["status"] == "error" and "\\udfff_tokens" in second["errors"][0]
