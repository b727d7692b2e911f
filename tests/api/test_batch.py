from __future__ import annotations

from typing import Any

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
