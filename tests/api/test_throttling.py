"""Requests with no key or an unknown key are limited per client address, from the
cache, before the key is looked up."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client
from django.test.utils import override_settings
from django.utils import timezone

from tests.api.conftest import Api
from weckr_django.models import ApiKey

UNKNOWN = "wk_" + "x" * 43
LIMIT_3 = override_settings(WECKR={"API_UNAUTHENTICATED_RATE_LIMIT": "3/min"})


def me(client: Client, key: str | None, address: str = "203.0.113.7", **headers: str) -> Any:
    if key is not None:
        headers["x-api-key"] = key
    return client.get("/api/v1/me", headers=headers, REMOTE_ADDR=address)


@LIMIT_3
def test_requests_without_a_key_get_429_with_retry_after(api: Api) -> None:
    responses = [me(api.client, None) for _ in range(4)]

    assert [response.status_code for response in responses] == [401, 401, 401, 429]
    throttled = responses[-1]
    assert 1 <= int(throttled["Retry-After"]) <= 60
    assert throttled.json() == {
        "error": "Too many requests without a valid API key from this address. "
        f"Retry in {throttled['Retry-After']} s.",
        "field": None,
    }


@LIMIT_3
def test_an_unknown_key_over_the_limit_costs_no_query(
    api: Api, django_assert_num_queries: Any
) -> None:
    assert [me(api.client, UNKNOWN).status_code for _ in range(3)] == [401] * 3

    with django_assert_num_queries(0):
        response = me(api.client, "wk_another_guess")

    assert response.status_code == 429
    assert "Retry-After" in response


@LIMIT_3
def test_no_key_and_unknown_keys_share_one_count_per_address(api: Api) -> None:
    statuses = [me(api.client, None).status_code, me(api.client, UNKNOWN).status_code]
    statuses += [me(api.client, "x" * 500).status_code]  # too long to look up
    statuses += [me(api.client, UNKNOWN).status_code, me(api.client, None).status_code]

    assert statuses == [401, 401, 401, 429, 429]
    assert me(api.client, None, address="198.51.100.1").status_code == 401  # another client


@LIMIT_3
def test_valid_keys_are_not_counted_nor_refused(api: Api) -> None:
    assert [me(api.client, api.key).status_code for _ in range(10)] == [200] * 10
    assert [me(api.client, UNKNOWN).status_code for _ in range(4)] == [401, 401, 401, 429]

    # The address is blocked; a key that was valid there lately still works.
    assert [me(api.client, api.key).status_code for _ in range(3)] == [200] * 3


@LIMIT_3
def test_a_key_not_seen_lately_waits_like_its_address(api: Api) -> None:
    """The price of refusing before the database: a key first used from an address
    over its limit is refused until the address is under it again."""
    _, fresh = ApiKey.objects.create_key(api.project, "fresh")
    for _ in range(3):
        me(api.client, UNKNOWN)

    assert me(api.client, fresh).status_code == 429
    assert me(api.client, fresh, address="198.51.100.1").status_code == 200


@LIMIT_3
def test_a_revoked_or_deleted_key_loses_its_exemption(api: Api) -> None:
    _, revoked = ApiKey.objects.create_key(api.project, "revoked")
    _, deleted = ApiKey.objects.create_key(api.project, "deleted")
    assert me(api.client, revoked).status_code == 200
    assert me(api.client, deleted).status_code == 200
    ApiKey.objects.filter(name="revoked").update(revoked_at=timezone.now())
    ApiKey.objects.filter(name="deleted").delete()

    # A revoked key resolves: 403, not counted.
    assert [me(api.client, revoked).status_code for _ in range(5)] == [403] * 5
    assert [me(api.client, deleted).status_code for _ in range(3)] == [401] * 3
    assert me(api.client, deleted).status_code == 429
    assert me(api.client, revoked).status_code == 429


@override_settings(WECKR={"API_UNAUTHENTICATED_RATE_LIMIT": None})
def test_no_limit_when_the_setting_is_none(api: Api) -> None:
    assert {me(api.client, UNKNOWN).status_code for _ in range(80)} == {401}


def test_the_default_limit_allows_a_misconfigured_client_a_minute_of_retries(api: Api) -> None:
    statuses = [me(api.client, UNKNOWN).status_code for _ in range(61)]

    assert statuses == [401] * 60 + [429]


@pytest.mark.parametrize(
    ("num_proxies", "counted_as_one"),
    [(0, True), (1, True), (None, False)],
)
def test_num_proxies_decides_whether_x_forwarded_for_is_trusted(
    api: Api, num_proxies: int | None, counted_as_one: bool
) -> None:
    """A client that writes a new X-Forwarded-For each time: with NUM_PROXIES the
    address is REMOTE_ADDR or what the proxy appended; without it, DRF trusts the
    whole header, so each request counts for a new address."""
    with (
        LIMIT_3,
        override_settings(REST_FRAMEWORK={"NUM_PROXIES": num_proxies}),
    ):
        statuses = [
            me(api.client, None, address="10.0.0.1", x_forwarded_for=f"192.0.2.{i}, 203.0.113.9")
            for i in range(4)
        ]

    expected = [401, 401, 401, 429] if counted_as_one else [401] * 4
    assert [response.status_code for response in statuses] == expected
