from __future__ import annotations

from decimal import Decimal

import pytest

from tests.api.conftest import Api, add_plan, event, expected_cost
from weckr_django.api.views import MAX_BODY_BYTES
from weckr_django.models import DailyUsage, MonthlyUserSpend, UsageEvent


def test_an_event_is_stored_with_the_server_computed_cost(api: Api) -> None:
    payload = event(eventId="evt-1", cachedInputTokens=200, reasoningTokens=100)

    response = api.post("log", payload)

    assert response.status_code == 201
    body = response.json()
    cost = expected_cost(payload)
    assert body["ok"] is True
    assert body["eventId"] == "evt-1"
    assert body["duplicate"] is False
    assert body["costUsd"] == pytest.approx(float(cost))
    stored = UsageEvent.objects.get(project=api.project, event_id="evt-1")
    assert stored.cost_usd == pytest.approx(cost, abs=Decimal("1e-10"))
    assert stored.cost_usd != Decimal("123.45")
    assert (stored.user_id, stored.feature, stored.plan_name) == ("user-1", "summary", "pro")
    assert (stored.cached_input_tokens, stored.reasoning_tokens) == (200, 100)


def test_a_resent_event_is_counted_once(api: Api) -> None:
    payload = event(eventId="evt-dup")

    first = api.post("log", payload)
    second = api.post("log", payload)

    assert (first.status_code, second.status_code) == (201, 200)
    assert second.json()["duplicate"] is True
    assert second.json()["costUsd"] == first.json()["costUsd"]
    assert UsageEvent.objects.filter(event_id="evt-dup").count() == 1
    spend = MonthlyUserSpend.objects.get(project=api.project, user_key="user-1")
    assert spend.calls == 1


def test_an_event_without_an_id_gets_one(api: Api) -> None:
    response = api.log()

    assert response.status_code == 201
    assert UsageEvent.objects.filter(event_id=response.json()["eventId"]).exists()


def test_a_2xx_means_the_rollups_are_committed(api: Api) -> None:
    add_plan(api.project, "pro", "29", cap="0.001")
    payload = event(eventId="big", inputTokens=100_000, outputTokens=10_000)

    assert api.post("log", payload).status_code == 201
    decision = api.check("user-1", "pro")

    assert decision["allowed"] is False
    assert decision["currentSpend"] == pytest.approx(float(expected_cost(payload)))
    daily = DailyUsage.objects.get(project=api.project, user_key="user-1")
    assert (daily.feature, daily.model, daily.calls) == ("summary", "gpt-4o", 1)


@pytest.mark.parametrize(
    ("fields", "field", "words"),
    [
        ({"userId": "jane.doe@example.com"}, "userId", "e-mail"),
        ({"feature": "report for bob@example.org"}, "feature", "e-mail"),
        ({"userId": "4111 1111 1111 1111"}, "userId", "card number"),
        ({"feature": "card-4242424242424242"}, "feature", "card number"),
        ({"inputTokens": 0, "outputTokens": 0}, "inputTokens", "zero tokens"),
        ({"inputTokens": -5}, "inputTokens", "negative"),
        ({"outputTokens": 12.5}, "outputTokens", "whole number"),
        ({"outputTokens": "300"}, "outputTokens", "whole number"),
        ({"inputTokens": 10**12}, "inputTokens", "more than one call"),
        ({"model": None}, "model", "required"),
        ({"model": 42}, "model", "string"),
        ({"userId": ["a"]}, "userId", "string"),
        ({"timestamp": "yesterday"}, "timestamp", "ISO 8601"),
        ({"status": "maybe"}, "status", "status"),
        ({"tags": "urgent"}, "tags", "list"),
        ({"eventId": "no spaces allowed"}, "eventId", "eventId"),
    ],
)
def test_invalid_events_are_400_with_the_field(
    api: Api, fields: dict[str, object], field: str, words: str
) -> None:
    payload = event(**fields)
    if fields.get("model", "") is None:
        payload.pop("model", None)

    response = api.post("log", payload)

    assert response.status_code == 400
    body = response.json()
    assert body["field"] == field
    assert words in body["error"]
    assert not UsageEvent.objects.exists()


def test_zero_tokens_are_fine_for_a_failed_call_or_without_a_plan(api: Api) -> None:
    failed = api.log(inputTokens=0, outputTokens=0, status="error", errorType="Timeout")
    no_plan = api.log(inputTokens=0, outputTokens=0, planName=None, planRevenueUsd=None)

    assert (failed.status_code, no_plan.status_code) == (201, 201)


@pytest.mark.parametrize(
    ("raw", "words"),
    [
        (b"{not json", "not valid JSON"),
        (b"", "empty"),
        (b"\xff\xfe{}", "UTF-8"),
        (b'{"model": "gpt-4o", "inputTokens": NaN}', "not valid JSON"),
        (b"[1, 2, 3]", "JSON object"),
        (b'"just a string"', "JSON object"),
        (b"[" * 100_000, "not valid JSON"),
    ],
)
def test_malformed_bodies_are_400(api: Api, raw: bytes, words: str) -> None:
    response = api.post("log", None, raw=raw)

    assert response.status_code == 400
    assert words in response.json()["error"]


def test_an_oversize_body_is_413_before_parsing(api: Api) -> None:
    padding = "x" * MAX_BODY_BYTES
    response = api.post("log", None, raw=b'{"model": "gpt-4o", "pad": "' + padding.encode() + b'"}')

    assert response.status_code == 413
    assert "larger than" in response.json()["error"]
    assert not UsageEvent.objects.exists()
