from __future__ import annotations

import pytest

from tests.api.conftest import Api, add_plan, event, expected_cost
from weckr_core.pricing import cheaper_alternative


def spend(api: Api, user_id: str, plan: str, model: str = "gpt-4o", tokens: int = 200_000):
    payload = event(userId=user_id, planName=plan, model=model, inputTokens=tokens)
    assert api.post("log", payload).status_code == 201
    return expected_cost(payload)


def test_a_user_under_the_cap_is_allowed_with_figures(api: Api) -> None:
    add_plan(api.project, "pro", "29", cap="100")
    cost = spend(api, "u1", "pro")

    decision = api.check("u1", "pro")

    assert decision == {
        "allowed": True,
        "action": None,
        "alternativeModel": None,
        "currentSpend": pytest.approx(float(cost)),
        "cap": 100.0,
        "remainingBudget": pytest.approx(float(100 - cost)),
        "inFlight": 0.0,
        "plan": "pro",
        "reason": None,
        "accountId": None,
    }


def test_block_at_the_cap(api: Api) -> None:
    add_plan(api.project, "free", "0", cap="0.01", action="block")
    cost = spend(api, "u1", "free")

    decision = api.check("u1", "free")

    assert decision["allowed"] is False
    assert decision["action"] == "block"
    assert decision["alternativeModel"] is None
    assert decision["currentSpend"] == pytest.approx(float(cost))
    assert decision["remainingBudget"] == 0


def test_downgrade_at_the_cap_names_a_cheaper_model(api: Api) -> None:
    add_plan(api.project, "team", "99", cap="0.01", action="downgrade")
    spend(api, "u1", "team")

    decision = api.check("u1", "team", model="gpt-4o")

    assert decision["allowed"] is False
    assert decision["action"] == "downgrade"
    assert decision["alternativeModel"] == cheaper_alternative("gpt-4o")
    assert decision["alternativeModel"] not in (None, "gpt-4o")


def test_caps_are_per_user(api: Api) -> None:
    add_plan(api.project, "free", "0", cap="0.01")
    spend(api, "heavy", "free")

    assert api.check("heavy", "free")["allowed"] is False
    assert api.check("light", "free")["allowed"] is True


def test_an_unknown_plan_or_no_user_is_allowed(api: Api) -> None:
    assert api.check("u1", "no-such-plan")["allowed"] is True
    response = api.get("check", {"planName": "pro"})
    assert response.status_code == 200
    assert response.json()["allowed"] is True


def test_an_oversize_query_value_is_400(api: Api) -> None:
    response = api.get("check", {"userId": "u" * 300, "planName": "pro"})

    assert response.status_code == 400
    assert response.json()["field"] == "userId"
