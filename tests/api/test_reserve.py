"""``POST /api/v1/reserve``, ``DELETE /api/v1/reserve/<id>`` and the log that settles."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from tests.api.conftest import Api, add_plan, event, expected_cost
from weckr_core.pricing import price_usage
from weckr_django.models import CapReservation, MonthlyUserSpend


def reserve(api: Api, **fields):
    body = {
        "userId": "u1",
        "planName": "pro",
        "model": "gpt-4o",
        "provider": "openai",
        "inputTokens": 1000,
        "maxOutputTokens": 500,
        **fields,
    }
    return api.post("reserve", {k: v for k, v in body.items() if v is not None})


def estimate() -> Decimal:
    return price_usage("gpt-4o", input_tokens=1000, output_tokens=500).usd


def test_a_reservation_is_held_and_its_log_settles_it(api: Api) -> None:
    add_plan(api.project, "pro", "29", cap="1")
    response = reserve(api)
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["allowed"] is True
    assert body["reservation"]["model"] == "gpt-4o"
    assert Decimal(str(body["reservation"]["amountUsd"])) == estimate()
    assert (body["cap"], body["plan"], body["reason"]) == (1.0, "pro", None)
    second = reserve(api).json()
    assert second["inFlight"] == float(estimate())

    payload = event(userId="u1", reservationId=body["reservation"]["id"])
    assert api.post("log", payload).status_code == 201
    row = CapReservation.objects.get()  # only the second one is still held
    assert row.pk == second["reservation"]["id"]
    assert MonthlyUserSpend.objects.get(user_key="u1").cost_usd == expected_cost(payload)


def test_past_the_cap_the_answer_blocks_and_holds_nothing(api: Api) -> None:
    add_plan(api.project, "free", "0", cap=str(estimate() + Decimal("0.0001")))
    assert reserve(api, planName="free").json()["allowed"] is True
    refused = reserve(api, planName="free").json()
    assert (refused["allowed"], refused["action"], refused["reservation"]) == (
        False,
        "block",
        None,
    )
    assert refused["reason"] == "cap"
    assert CapReservation.objects.count() == 1


def test_an_unknown_plan_is_refused_with_its_reason(api: Api) -> None:
    add_plan(api.project, "pro", "29", cap="1")
    body = reserve(api, planName="enterprise").json()
    assert (body["allowed"], body["reason"], body["plan"]) == (False, "unknown_plan", "enterprise")
    check = api.check("u1", "enterprise")
    assert (check["allowed"], check["reason"]) == (False, "unknown_plan")


def test_release_drops_a_hold(api: Api) -> None:
    add_plan(api.project, "pro", "29", cap="1")
    held = reserve(api).json()["reservation"]["id"]
    response = api.client.delete(
        f"/api/v1/reserve/{held}?userId=u1", headers={"x-api-key": api.key}
    )
    assert response.status_code == 204
    assert not CapReservation.objects.exists()


def test_bad_reserve_bodies_get_a_400_that_says_why(api: Api) -> None:
    cases: list[tuple[dict[str, Any], str]] = [
        ({"inputTokens": None}, "inputTokens"),
        ({"model": None}, "model"),
        ({"inputTokens": -3}, "inputTokens"),
        ({"maxOutputTokens": "lots"}, "maxOutputTokens"),
        ({"userId": "ada@example.com"}, "userId"),
        ({"planName": "x" * 101}, "planName"),
    ]
    for fields, field in cases:
        response = reserve(api, **fields)
        assert response.status_code == 400, (fields, response.content)
        assert response.json()["field"] == field
    assert api.post("reserve", [], raw=b"[1, 2]").status_code == 400
    bad_id = api.client.delete(
        "/api/v1/reserve/not%20an%20id?userId=u1", headers={"x-api-key": api.key}
    )
    assert bad_id.status_code == 400
    no_user = api.client.delete("/api/v1/reserve/202601-abc", headers={"x-api-key": api.key})
    assert no_user.status_code == 400


def test_a_log_with_a_malformed_reservation_id_is_refused(api: Api) -> None:
    response = api.post("log", event(reservationId="not an id"))
    assert response.status_code == 400
    assert response.json()["field"] == "reservationId"


def test_an_accounts_cap_is_reserved_checked_and_released_over_the_wire(api: Api) -> None:
    plan = add_plan(api.project, "team", "99", cap="100")
    plan.account_monthly_cap_usd = estimate() * 2
    plan.save()
    first = reserve(api, userId="ann", accountId="acme", planName="team").json()
    second = reserve(api, userId="bob", accountId="acme", planName="team").json()
    assert first["allowed"] and second["allowed"]
    assert second["accountId"] == "acme"  # the account's budget is the tighter one
    refused = reserve(api, userId="cid", accountId="acme", planName="team").json()
    assert (refused["allowed"], refused["reason"], refused["accountId"]) == (False, "cap", "acme")
    assert Decimal(str(refused["cap"])) == estimate() * 2

    check = api.get("check", {"userId": "cid", "accountId": "acme", "planName": "team"}).json()
    assert (check["allowed"], check["accountId"]) == (False, "acme")
    elsewhere = api.get("check", {"userId": "cid", "accountId": "globex", "planName": "team"})
    assert elsewhere.json()["allowed"] is True

    held = second["reservation"]["id"]
    response = api.client.delete(
        f"/api/v1/reserve/{held}?userId=bob&accountId=acme", headers={"x-api-key": api.key}
    )
    assert response.status_code == 204
    assert reserve(api, userId="cid", accountId="acme", planName="team").json()["allowed"]

    # The event of the first call names its account: the account's rollup takes it.
    payload = event(userId="ann", accountId="acme", planName="team")
    payload["reservationId"] = first["reservation"]["id"]
    assert api.post("log", payload).status_code == 201
    assert not CapReservation.objects.filter(pk=first["reservation"]["id"]).exists()


def test_a_release_must_say_whose_reservation_it_was(api: Api) -> None:
    add_plan(api.project, "pro", "29", cap="1")
    held = reserve(api).json()["reservation"]["id"]
    response = api.client.delete(f"/api/v1/reserve/{held}", headers={"x-api-key": api.key})
    assert response.status_code == 400
    assert "userId is required" in response.json()["error"]
    assert CapReservation.objects.count() == 1
