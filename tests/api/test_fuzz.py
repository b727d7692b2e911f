"""Fuzzing the wire API: whatever a client sends, the answer is never a 5xx, a
refusal names the field at fault, and one bad event never sinks its neighbours."""

from __future__ import annotations

import itertools
import json
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.api.conftest import Api, event
from tests.api.nasty import EVENT_FIELDS, NASTY_VALUES
from weckr_django.models import UsageEvent

FUZZ = settings(
    max_examples=100,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
_ids = itertools.count()

# Any character, lone surrogates and NUL included (json.dumps escapes them as \uXXXX).
_any_text = st.text(alphabet=st.characters(exclude_categories=()), max_size=40)
_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=False, allow_infinity=False),
    _any_text,
    st.sampled_from(NASTY_VALUES),
)
json_values = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_any_text, inner, max_size=4),
    max_leaves=12,
)


def fresh_id() -> str:
    return f"fz-{next(_ids)}"


@st.composite
def mutated_events(draw: st.DrawFn) -> dict[str, Any]:
    """A valid event with one to four fields replaced by anything JSON can hold."""
    payload = event(eventId=fresh_id())
    for field in draw(st.lists(st.sampled_from(EVENT_FIELDS), min_size=1, max_size=4, unique=True)):
        payload[field] = draw(json_values)
    return payload


def post(api: Api, path: str, body: Any) -> Any:
    return api.post(path, None, raw=json.dumps(body).encode())


def assert_refusal_names(response: Any, field: str) -> None:
    body = response.json()
    assert body["field"] == field, body
    assert field in body["error"], body


@pytest.mark.parametrize("field", EVENT_FIELDS)
def test_a_nasty_value_in_any_field_is_stored_or_a_400_naming_the_field(
    api: Api, field: str
) -> None:
    for value in NASTY_VALUES:
        response = post(api, "log", {**event(eventId=fresh_id()), field: value})

        assert response.status_code in (200, 201, 400), (value, response.content)
        if response.status_code == 400:
            assert_refusal_names(response, field)


@pytest.mark.parametrize("field", EVENT_FIELDS)
def test_a_batch_keeps_its_valid_events_whatever_the_bad_ones_hold(api: Api, field: str) -> None:
    events = [{**event(eventId=fresh_id()), field: value} for value in NASTY_VALUES]
    neighbour = event(eventId=fresh_id())

    response = post(api, "log/batch", {"events": [*events, neighbour]})

    assert response.status_code == 200, response.content
    body = response.json()
    assert body["accepted"] + body["duplicates"] + len(body["rejected"]) == len(events) + 1
    assert all(item["field"] == field for item in body["rejected"]), body["rejected"]
    assert len(NASTY_VALUES) not in {item["index"] for item in body["rejected"]}
    assert UsageEvent.objects.filter(event_id=neighbour["eventId"]).exists()


@FUZZ
@given(payload=st.one_of(mutated_events(), json_values))
def test_random_events_never_cause_a_server_error(api: Api, payload: Any) -> None:
    response = post(api, "log", payload)

    assert response.status_code in (200, 201, 400), response.content
    assert set(response.json()) >= ({"error", "field"} if response.status_code == 400 else {"ok"})


@FUZZ
@given(events=st.lists(st.one_of(mutated_events(), json_values), max_size=6))
def test_random_batches_store_their_valid_neighbour(api: Api, events: list[Any]) -> None:
    neighbour = event(eventId=fresh_id())

    response = post(api, "log/batch", {"events": [*events, neighbour]})

    assert response.status_code == 200, response.content
    assert len(events) not in {item["index"] for item in response.json()["rejected"]}
    assert UsageEvent.objects.filter(event_id=neighbour["eventId"]).exists()


@FUZZ
@given(
    changes=st.dictionaries(
        st.sampled_from(
            ["userId", "planName", "model", "provider", "inputTokens", "maxOutputTokens"]
        ),
        json_values,
        max_size=4,
    )
)
def test_random_reservations_never_cause_a_server_error(api: Api, changes: dict[str, Any]) -> None:
    body = {"userId": "u1", "planName": "pro", "model": "gpt-4o", "inputTokens": 10, **changes}

    response = post(api, "reserve", body)

    assert response.status_code in (200, 400), response.content


# The test client encodes query strings as UTF-8, which cannot hold a lone surrogate.
_query_text = st.one_of(
    st.text(alphabet=st.characters(codec="utf-8"), max_size=300),
    st.sampled_from(["\x00", "a\x00", "x" * 256, "jane@example.com"]),
)


@FUZZ
@given(user=_query_text, plan=_query_text, model=_query_text, reservation=_query_text)
def test_random_queries_never_cause_a_server_error(
    api: Api, user: str, plan: str, model: str, reservation: str
) -> None:
    check = api.get("check", {"userId": user, "planName": plan, "model": model})
    release = api.client.delete(
        f"/api/v1/reserve/{quote(reservation, safe='')}?userId={quote(user)}",
        headers={"x-api-key": api.key},
    )

    assert check.status_code in (200, 400), check.content
    assert release.status_code in (204, 400, 404), release.content


@FUZZ
@given(raw=st.binary(max_size=300))
def test_random_bytes_are_a_400(api: Api, raw: bytes) -> None:
    for path in ("log", "log/batch", "reserve"):
        response = api.post(path, None, raw=raw)
        assert response.status_code in (200, 201, 400), (path, response.content)


_TOKENR_FIELDS = [
    "provider",
    "model",
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "agent_id",
    "feature_name",
    "team_id",
    "status",
    "latency_ms",
    "tags",
    "requested_at",
]
_TRACKED_FIELDS = ["service_key", "response_id", "timestamp", "payload", "customer_key", "context"]


@FUZZ
@given(
    changes=st.dictionaries(st.sampled_from(_TOKENR_FIELDS), json_values, max_size=4),
)
def test_random_tokenr_calls_are_stored_or_a_400_naming_the_field(
    api: Api, changes: dict[str, Any]
) -> None:
    body = {"provider": "openai", "model": "gpt-4o", "input_tokens": 5, "output_tokens": 1}

    response = post(api, "track", {**body, **changes})

    assert response.status_code in (201, 400), response.content
    if response.status_code == 400:
        assert response.json()["field"] in (*_TOKENR_FIELDS, None), response.json()


@st.composite
def tracked_records(draw: st.DrawFn) -> Any:
    record = {
        "service_key": "openai::gpt-4o-mini",
        "response_id": fresh_id(),
        "timestamp": "1796637600.5",
        "payload": {"prompt_tokens": 10, "completion_tokens": 2},
    }
    for field in draw(st.lists(st.sampled_from(_TRACKED_FIELDS), max_size=3, unique=True)):
        record[field] = draw(json_values)
    payload = record["payload"]
    if isinstance(payload, dict) and draw(st.booleans()):
        payload[draw(st.sampled_from(["prompt_tokens", "prompt_tokens_details"]))] = draw(
            json_values
        )
    return record if draw(st.integers(0, 9)) else draw(json_values)


@FUZZ
@given(records=st.lists(tracked_records(), max_size=6))
def test_random_tracked_records_are_answered_one_by_one(api: Api, records: list[Any]) -> None:
    neighbour = {
        "service_key": "anthropic::claude-haiku-4-5",
        "response_id": fresh_id(),
        "payload": {"input_tokens": 10, "output_tokens": 2},
    }

    response = post(api, "track", {"tracked": [*records, neighbour]})

    assert response.status_code == 200, response.content
    results = response.json()["results"]
    assert len(results) == len(records) + 1
    assert {r["status"] for r in results} <= {"completed", "error", "service_key_unknown"}
    assert all(r["errors"] for r in results if r["status"] != "completed")
    assert results[-1]["status"] == "completed"
    assert UsageEvent.objects.filter(event_id=neighbour["response_id"]).exists()
