"""``POST /api/v1/otlp/v1/traces``: OpenTelemetry spans with GenAI usage become usage
events. The spans come from the real OpenTelemetry SDK and OpenLLMetry's OpenAI
instrumentation around the real ``openai`` client (on a fake transport), sent by the
SDK's OTLP/HTTP exporter to a live server."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from django.test import Client
from google.protobuf import json_format
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from weckr_core.pricing import price_usage
from weckr_django.models import ApiKey, Project, UsageEvent
from weckr_django.otlp import _ids_as_base64

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.django_db(transaction=True)
def test_openllmetry_spans_of_real_openai_calls_land_once_each(live_server: Any) -> None:
    project = Project.objects.create(name="Polyglot")
    _, key = ApiKey.objects.create_key(project, "otel")
    env = {key_: value for key_, value in os.environ.items() if key_ != "DJANGO_SETTINGS_MODULE"}
    app = subprocess.run(
        [sys.executable, "-m", "tests.api.otel_client", live_server.url, key],
        cwd=ROOT,
        env={**env, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert app.returncode == 0, app.stderr
    sent = json.loads(app.stdout)
    assert sent["exports"] == ["SUCCESS", "SUCCESS"]  # the second: a resend, gzip

    events = list(UsageEvent.objects.filter(project=project).order_by("user_id"))
    assert [event.user_id for event in events] == ["u1", "u2"]  # once each
    expected = price_usage(
        "gpt-4o-mini", input_tokens=1200, output_tokens=300, cached_input_tokens=200
    ).usd.quantize(Decimal("0.0000000001"))
    for event in events:
        assert (event.input_tokens, event.output_tokens, event.cached_input_tokens) == (
            1200,
            300,
            200,
        )
        assert (event.model, event.provider, event.source) == ("gpt-4o-mini", "openai", "otel")
        assert (event.feature, event.plan_name) == ("invoices", "pro")
        assert event.tags == ["service:billing-worker"]
        assert event.cost_usd == expected
    assert {event.event_id for event in events} == {f"otel-{ids}" for ids in sent["spans"]}


def otlp_json(*spans: dict[str, Any], resource: dict[str, Any] | None = None) -> dict[str, Any]:
    attributes = [
        {"key": key, "value": {"stringValue": value}} for key, value in (resource or {}).items()
    ]
    return {
        "resourceSpans": [
            {"resource": {"attributes": attributes}, "scopeSpans": [{"spans": list(spans)}]}
        ]
    }


def span(span_id: str, **attributes: Any) -> dict[str, Any]:
    def value(item: Any) -> dict[str, Any]:
        if isinstance(item, int):
            return {"intValue": str(item)}  # OTLP/JSON writes 64-bit integers as strings
        return {"stringValue": item}

    return {
        "traceId": "5b8efff798038103d269b633813fc60c",
        "spanId": span_id,
        "name": "chat",
        "startTimeUnixNano": "1765000000000000000",
        "endTimeUnixNano": "1765000001500000000",
        "attributes": [{"key": key, "value": value(item)} for key, item in attributes.items()],
    }


def export_json(client: Client, body: dict[str, Any], key: str) -> Any:
    """``body`` sent as an OTLP/JSON export with the project's key as ``x-api-key``."""
    return client.post(
        "/api/v1/otlp/v1/traces",
        json.dumps(body),
        content_type="application/json",
        headers={"x-api-key": key},
    )


@pytest.mark.django_db
def test_the_json_encoding_and_the_older_attribute_names(client: Client) -> None:
    project = Project.objects.create(name="Polyglot")
    _, key = ApiKey.objects.create_key(project, "otel")
    body = otlp_json(
        # The conventions' current names, an Anthropic call, a user on the span.
        span(
            "eee19b7ec3c1b174",
            **{
                "gen_ai.provider.name": "anthropic",
                "gen_ai.request.model": "claude-sonnet-4",
                "gen_ai.usage.input_tokens": 500,
                "gen_ai.usage.output_tokens": 40,
                "gen_ai.usage.cache_creation.input_tokens": 100,
                "enduser.id": "ann",
                "gen_ai.agent.name": "planner",
                "gen_ai.conversation.id": "conv-1",
            },
        ),
        # Older libraries: gen_ai.system and llm.usage.*; the account from the resource.
        span(
            "eee19b7ec3c1b175",
            **{
                "gen_ai.system": "openai",
                "gen_ai.response.model": "gpt-4o",
                "llm.usage.prompt_tokens": 70,
                "llm.usage.completion_tokens": 7,
            },
        ),
        # Not an LLM call: passed over.
        span("eee19b7ec3c1b176", **{"http.route": "/invoices"}),
        resource={"weckr.account": "acme"},
    )

    response = client.post(
        "/api/v1/otlp/v1/traces",
        json.dumps(body),
        content_type="application/json",
        headers={"Authorization": f"Bearer {key}"},
    )

    assert response.status_code == 200, response.content
    assert response["Content-Type"] == "application/json"
    assert response.json() == {}  # a full success
    events = {event.model: event for event in UsageEvent.objects.filter(project=project)}
    claude, gpt = events["claude-sonnet-4"], events["gpt-4o"]
    assert (claude.provider, claude.user_id, claude.agent, claude.run_id) == (
        "anthropic",
        "ann",
        "planner",
        "conv-1",
    )
    # The conventions count cache writes in the input; Weckr keeps them beside it.
    assert (claude.input_tokens, claude.cache_creation_tokens, claude.latency_ms) == (
        400,
        100,
        1500,
    )
    assert (gpt.provider, gpt.input_tokens, gpt.output_tokens, gpt.account_id) == (
        "openai",
        70,
        7,
        "acme",
    )


@pytest.mark.django_db
def test_openllmetry_association_properties_and_langfuse_attributes_attribute_the_call(
    client: Client,
) -> None:
    project = Project.objects.create(name="Associations")
    _, key = ApiKey.objects.create_key(project, "otel")
    association = "traceloop.association.properties."
    body = otlp_json(
        span(
            "aaa19b7ec3c1b171",
            **{
                "gen_ai.system": "openai",
                "gen_ai.request.model": "gpt-4o-mini",
                "gen_ai.usage.input_tokens": 120,
                "gen_ai.usage.output_tokens": 12,
                f"{association}user_id": "u-42",
                f"{association}session_id": "chat-7",
                f"{association}weckr.plan": "pro",
                f"{association}weckr.feature": "support-bot",
                f"{association}weckr.account": "globex",
            },
        ),
        span(
            "aaa19b7ec3c1b172",
            **{
                "gen_ai.system": "anthropic",
                "gen_ai.request.model": "claude-sonnet-4",
                "gen_ai.usage.input_tokens": 300,
                "gen_ai.usage.output_tokens": 30,
                "langfuse.user.id": "u-43",
                "langfuse.session.id": "chat-8",
            },
        ),
    )

    response = export_json(client, body, key)

    assert response.status_code == 200, response.content
    rows = {
        event.user_id: (event.run_id, event.plan_name, event.feature, event.account_id)
        for event in UsageEvent.objects.filter(project=project)
    }
    assert rows == {
        "u-42": ("chat-7", "pro", "support-bot", "globex"),
        "u-43": ("chat-8", None, None, None),
    }


@pytest.mark.django_db
def test_bad_spans_are_a_partial_success_and_bad_bodies_a_400(client: Client) -> None:
    project = Project.objects.create(name="Polyglot")
    _, key = ApiKey.objects.create_key(project, "otel")
    headers = {"x-api-key": key}
    body = otlp_json(
        span(
            "aaa19b7ec3c1b174", **{"gen_ai.request.model": "gpt-4o", "gen_ai.usage.input_tokens": 9}
        ),
        span(
            "aaa19b7ec3c1b175",
            **{"gen_ai.request.model": "gpt-4o", "gen_ai.usage.input_tokens": "lots"},
        ),
    )
    request = ExportTraceServiceRequest()
    json_format.ParseDict(_ids_as_base64(body), request)

    response = client.post(
        "/api/v1/otlp/v1/traces",
        gzip.compress(request.SerializeToString()),
        content_type="application/x-protobuf",
        headers={**headers, "Content-Encoding": "gzip"},
    )

    assert response.status_code == 200
    answer = ExportTraceServiceResponse.FromString(response.content)
    assert answer.partial_success.rejected_spans == 1
    assert "inputTokens" in answer.partial_success.error_message
    assert UsageEvent.objects.filter(project=project).count() == 1

    for content_type, payload, encoding in (
        ("application/x-protobuf", b"\xff\xff not protobuf", ""),
        ("application/json", b"{not json", ""),
        ("application/json", b"[" * 100_000, ""),  # nesting deeper than Python recurses
        ("application/json", b'{"resourceSpans": [1]}', ""),
        ("application/json", b'{"resourceSpans": 5}', ""),
        ("application/json", b'{"resourceSpans": [{"scopeSpans": [{"spans": 5}]}]}', ""),
        ("text/plain", b"hello", ""),
        ("application/x-protobuf", b"not gzip", "gzip"),
    ):
        refused = client.post(
            "/api/v1/otlp/v1/traces",
            payload,
            content_type=content_type,
            headers={**headers, "Content-Encoding": encoding} if encoding else headers,
        )
        assert refused.status_code == 400, (content_type, refused.content)
        assert refused.json()["error"]
    no_key = client.post("/api/v1/otlp/v1/traces", b"", content_type="application/json")
    assert no_key.status_code == 401


@pytest.mark.django_db
def test_odd_token_counts_and_missing_ids_are_refused_spans_not_errors(client: Client) -> None:
    project = Project.objects.create(name="Polyglot")
    _, key = ApiKey.objects.create_key(project, "otel")
    no_ids = span("eee19b7ec3c1b177", **{"gen_ai.usage.input_tokens": 5})
    no_ids["traceId"] = no_ids["spanId"] = ""
    body = otlp_json(
        span("eee19b7ec3c1b174", **{"gen_ai.usage.input_tokens": "\u00b2"}),  # "²"
        span("eee19b7ec3c1b175", **{"gen_ai.usage.output_tokens": "1" * 5000}),
        no_ids,
        span("eee19b7ec3c1b176", **{"gen_ai.usage.input_tokens": 3}),
    )

    response = export_json(client, body, key)

    assert response.status_code == 200, response.content
    partial = response.json()["partialSuccess"]
    assert partial["rejectedSpans"] == "3"  # OTLP/JSON writes int64 as a string
    assert "traceId must be 16 bytes" in partial["errorMessage"]
    assert UsageEvent.objects.filter(project=project).count() == 1
