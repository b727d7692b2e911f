from __future__ import annotations

from typing import Any

import pytest
from django.db import DataError
from django.db.backends.utils import CursorWrapper
from django.test import override_settings

from tests.api.conftest import Api, event, expected_cost
from weckr_django.models import MonthlyUserSpend, UsageEvent


def test_valid_events_are_stored_and_invalid_ones_listed(api: Api) -> None:
    events: list[Any] = [
        event(eventId="b-1"),
        event(eventId="b-2", userId="someone@example.com"),
        event(eventId="b-3", userId="user-2", model="claude-sonnet-4", provider="anthropic"),
        "not an object",
        event(eventId="b-5", inputTokens=-1),
    ]

    response = api.post("log/batch", {"events": events})

    assert response.status_code == 200
    body = response.json()
    assert (body["accepted"], body["duplicates"]) == (2, 0)
    assert [(item["index"], item["eventId"]) for item in body["rejected"]] == [
        (1, "b-2"),
        (3, None),
        (4, "b-5"),
    ]
    assert "e-mail" in body["rejected"][0]["error"]
    assert "JSON object" in body["rejected"][1]["error"]
    assert "negative" in body["rejected"][2]["error"]
    assert set(UsageEvent.objects.values_list("event_id", flat=True)) == {"b-1", "b-3"}
    spend = MonthlyUserSpend.objects.get(project=api.project, user_key="user-2")
    assert spend.cost_usd == expected_cost(events[2]).quantize(spend.cost_usd)


def test_a_resent_batch_counts_duplicates(api: Api) -> None:
    events = [event(eventId=f"r-{index}") for index in range(5)]

    first = api.post("log/batch", {"events": events}).json()
    second = api.post("log/batch", {"events": [*events, event(eventId="r-new")]}).json()

    assert (first["accepted"], first["duplicates"]) == (5, 0)
    assert (second["accepted"], second["duplicates"]) == (1, 5)
    assert UsageEvent.objects.count() == 6
    assert MonthlyUserSpend.objects.get(user_key="user-1").calls == 6


def test_the_same_id_twice_in_one_batch_is_one_event(api: Api) -> None:
    body = api.post("log/batch", {"events": [event(eventId="same")] * 3}).json()

    assert (body["accepted"], body["duplicates"]) == (1, 2)


def test_an_empty_batch_is_fine(api: Api) -> None:
    body = api.post("log/batch", {"events": []}).json()

    assert body == {"accepted": 0, "duplicates": 0, "rejected": []}


def test_a_batch_that_is_not_a_list_is_400(api: Api) -> None:
    payload: Any
    for payload in ({"events": {"0": event()}}, {"events": None}, [event()], {"other": []}):
        response = api.post("log/batch", payload)
        assert response.status_code == 400
        assert response.json()["field"] == "events"


@override_settings(WECKR={"MAX_BATCH_EVENTS": 3})
def test_a_batch_over_the_limit_is_refused_whole(api: Api) -> None:
    response = api.post("log/batch", {"events": [event() for _ in range(4)]})

    assert response.status_code == 400
    assert "at most 3" in response.json()["error"]
    assert not UsageEvent.objects.exists()


def test_text_no_database_can_store_is_rejected_and_the_neighbours_stored(api: Api) -> None:
    events = [
        event(eventId="t-1"),
        event(eventId="t-2", tags=["\x00"]),
        event(eventId="t-3", userId="\ud800"),
        event(eventId="t-4", agent="a" * 256),
        event(eventId="t-5"),
    ]

    response = api.post("log/batch", {"events": events})

    assert response.status_code == 200
    body = response.json()
    assert body["accepted"] == 2
    assert [(item["index"], item["field"]) for item in body["rejected"]] == [
        (1, "tags"),
        (2, "userId"),
        (3, "agent"),
    ]
    assert set(UsageEvent.objects.values_list("event_id", flat=True)) == {"t-1", "t-5"}


@pytest.fixture
def database_refuses_feature(monkeypatch: pytest.MonkeyPatch) -> str:
    """The database refuses any statement carrying this feature name, as PostgreSQL
    refuses a value it cannot store (a DataError)."""
    marker = "refused-by-the-database"
    execute = CursorWrapper._execute  # type: ignore[attr-defined]

    def refusing(self: CursorWrapper, sql: str, params: Any, *args: Any) -> Any:
        if params and marker in params:
            raise DataError("value too long for type character varying(255)\nCONTEXT: ...")
        return execute(self, sql, params, *args)

    monkeypatch.setattr(CursorWrapper, "_execute", refusing)
    return marker


def test_an_event_the_database_refuses_is_rejected_alone(
    api: Api, database_refuses_feature: str
) -> None:
    events = [event(eventId=f"d-{index}") for index in range(7)]
    events[4]["feature"] = database_refuses_feature

    body = api.post("log/batch", {"events": events}).json()

    assert (body["accepted"], body["duplicates"]) == (6, 0)
    assert body["rejected"] == [
        {
            "index": 4,
            "eventId": "d-4",
            "error": "The database refused this event: value too long for type character "
            "varying(255)",
            "field": None,
        }
    ]
    assert UsageEvent.objects.count() == 6
    assert MonthlyUserSpend.objects.get(user_key="user-1").calls == 6


def test_a_single_event_the_database_refuses_is_a_400(
    api: Api, database_refuses_feature: str
) -> None:
    response = api.log(feature=database_refuses_feature)

    assert response.status_code == 400
    assert "The database refused this event" in response.json()["error"]
