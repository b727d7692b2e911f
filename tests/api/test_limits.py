"""Rate limits per key, and no 5xx whatever a client throws at the API."""

from __future__ import annotations

import json
import random
from typing import Any

from django.test import override_settings

from tests.api.conftest import Api, event
from tests.api.nasty import EVENT_FIELDS, NASTY_VALUES
from weckr_django.models import ApiKey


@override_settings(WECKR={"API_RATE_LIMIT": "3/min"})
def test_each_key_has_its_own_rate_limit(api: Api) -> None:
    _, other_key = ApiKey.objects.create_key(api.project, "other")

    statuses = [api.get("me").status_code for _ in range(4)]
    other = api.get("me", key=other_key)

    assert statuses == [200, 200, 200, 429]
    assert other.status_code == 200
    assert "Rate limit" in api.get("me").json()["error"]


@override_settings(WECKR={"API_RATE_LIMIT": None})
def test_the_rate_limit_can_be_switched_off(api: Api) -> None:
    assert {api.get("me").status_code for _ in range(10)} == {200}


def _mutations(seed: int, count: int) -> list[bytes]:
    rng = random.Random(seed)
    bodies: list[bytes] = []
    for _ in range(count):
        payload: Any = event(eventId=f"fuzz-{rng.randrange(10**9)}")
        for _ in range(rng.randint(1, 4)):
            payload[rng.choice(EVENT_FIELDS)] = rng.choice(NASTY_VALUES)
        if rng.random() < 0.1:
            payload = rng.choice(NASTY_VALUES)
        body = json.dumps(payload).encode()
        if rng.random() < 0.15:
            cut = rng.randrange(len(body) + 1)
            body = body[:cut] + bytes([rng.randrange(256)]) + body[cut:]
        bodies.append(body)
    return bodies


def test_malformed_payloads_never_cause_a_server_error(api: Api) -> None:
    statuses: dict[int, int] = {}
    for index, body in enumerate(_mutations(seed=20261122, count=400)):
        path = "log" if index % 2 else "log/batch"
        if path == "log/batch" and index % 4 == 0:
            body = b'{"events": [' + body + b"]}"
        response = api.post(path, None, raw=body)
        statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
        assert response.status_code < 500, (body, response.content)
        assert "error" in response.json() or response.status_code in (200, 201)
    # The mix exercised both the accepting and the refusing paths.
    assert statuses.get(400, 0) > 50
    assert statuses.get(201, 0) + statuses.get(200, 0) > 20


def test_odd_query_strings_never_cause_a_server_error(api: Api) -> None:
    for value in ("", "\x00", "%", "é" * 100, "a" * 256, "gpt-4o\n", "0" * 40):
        params = {"userId": value, "planName": value, "model": value}
        assert api.get("check", params).status_code in (200, 400)
