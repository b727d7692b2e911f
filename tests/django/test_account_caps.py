"""Caps per account: a call is reserved against its user's budget and its
account's, and the refusal names the budget that stopped it (SQLite here; the
integration suite runs the same against PostgreSQL and Redis)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from typing import Any

import pytest

from tests.core import providers as p
from weckr_core import MemoryBackend, Weckr, WeckrCapError, attribute
from weckr_core.backends.base import CapRequest
from weckr_core.caps import refusal
from weckr_core.instrument import uninstrument
from weckr_core.pricing import price_usage
from weckr_django import caps
from weckr_django.backend import DjangoBackend
from weckr_django.ingest import ingest_records
from weckr_django.models import (
    CapReservation,
    MonthlyAccountSpend,
    MonthlyUserSpend,
    Plan,
    UsageEvent,
)
from weckr_django.periods import month_start
from weckr_django.stores import SpendKey, cap_store

from .helpers import make_project, make_record

pytestmark = pytest.mark.django_db


def per_call() -> Decimal:
    """What a call of ``call()`` holds: its estimate on gpt-4o."""
    return price_usage("gpt-4o", input_tokens=1000, output_tokens=500).usd


def team_plan(project, *, account_cap: str | None, user_cap: str | None = None, **fields) -> Plan:
    return Plan.objects.create(
        project=project,
        name="team",
        monthly_price_usd=Decimal(99),
        monthly_cap_usd=None if user_cap is None else Decimal(user_cap),
        account_monthly_cap_usd=None if account_cap is None else Decimal(account_cap),
        **fields,
    )


def call(user_id: str | None = "u1", account_id: str | None = "acme", **fields) -> CapRequest:
    fields.setdefault("model", "gpt-4o")
    return CapRequest(
        user_id,
        "team",
        provider="openai",
        input_tokens=1000,
        max_output_tokens=500,
        account_id=account_id,
        **fields,
    )


def spent(project, account_id: str, usd: str, users: dict[str, str] | None = None) -> None:
    month = month_start(project)
    MonthlyAccountSpend.objects.create(
        project=project, account_key=account_id, month=month, cost_usd=Decimal(usd)
    )
    for user_id, user_usd in (users or {}).items():
        MonthlyUserSpend.objects.create(
            project=project, user_key=user_id, month=month, cost_usd=Decimal(user_usd)
        )


def test_the_account_cap_counts_every_user_of_the_account():
    project = make_project()
    team_plan(project, account_cap=str(per_call() * 3))
    # Three users of acme each take one call's worth; the fourth call, by any of
    # them or by a fifth user, does not fit.
    for user_id in ("ann", "bob", "cid"):
        assert caps.reserve(project, call(user_id)).allowed
    refused = caps.reserve(project, call("dee"))
    assert refused.action == "block"
    assert refused.account_id == "acme"
    assert (refused.current_spend, refused.cap) == (per_call() * 3, per_call() * 3)
    # The same user in another account, and the account-less call, are not held back.
    assert caps.reserve(project, call("dee", "globex")).allowed
    assert caps.reserve(project, call("dee", None)).allowed


def test_the_refusal_says_the_account_stopped_the_call():
    project = make_project()
    team_plan(project, account_cap="10", user_cap="50")
    spent(project, "acme", "10")
    decision = caps.reserve(project, call("u1"))
    error = refusal(decision, "u1", "team")
    assert error.account_id == "acme"
    assert str(error) == (
        "Weckr: account spending cap reached for account acme on plan team "
        "($10.0000 of $10.0000); call by user u1"
    )


def test_a_per_user_cap_inside_the_account_stops_the_user_first():
    project = make_project()
    team_plan(project, account_cap="100", user_cap="1")
    spent(project, "acme", "5", users={"heavy": "1"})
    stopped = caps.reserve(project, call("heavy"))
    assert stopped.action == "block"
    assert stopped.account_id is None  # the user's own cap, not the account's
    assert stopped.cap == Decimal(1)
    assert "spending cap reached for user heavy" in str(refusal(stopped, "heavy", "team"))
    # The account has room for everyone else.
    assert caps.reserve(project, call("light")).allowed


def test_when_both_budgets_are_spent_the_account_is_named():
    project = make_project()
    team_plan(project, account_cap="2", user_cap="1")
    spent(project, "acme", "2", users={"u1": "1"})
    assert caps.reserve(project, call("u1")).account_id == "acme"
    assert caps.decide(project, "u1", "team", "gpt-4o", "acme").account_id == "acme"


def test_an_allowed_call_reports_the_budget_with_the_least_left():
    project = make_project()
    team_plan(project, account_cap="10", user_cap="5")
    spent(project, "acme", "9", users={"u1": "1"})
    decision = caps.reserve(project, call("u1"))
    assert decision.allowed
    assert decision.account_id == "acme"
    assert decision.remaining_budget == Decimal(1)
    # Under a roomy account, the user's own cap is the tighter one.
    spent(project, "globex", "1")
    roomy = caps.reserve(project, call("u1", "globex"))
    assert roomy.account_id is None
    assert roomy.cap == Decimal(5)


def test_a_call_of_the_account_with_no_user_is_capped_by_the_account():
    project = make_project()
    team_plan(project, account_cap=str(per_call()))
    assert caps.reserve(project, call(None)).allowed
    refused = caps.reserve(project, call(None))
    assert (refused.action, refused.account_id) == ("block", "acme")


def test_a_plan_with_only_a_user_cap_holds_the_account_too_but_never_refuses_by_it():
    project = make_project()
    team_plan(project, account_cap=None, user_cap="1")
    decision = caps.reserve(project, call("u1"))
    assert decision.allowed and decision.account_id is None
    row = CapReservation.objects.get()
    assert (row.user_key, row.account_key) == ("u1", "acme")
    # An account-only call on it is not capped at all.
    assert caps.reserve(project, call(None)).reservation is None


def test_settle_release_and_ingest_keep_both_budgets_right():
    project = make_project()
    team_plan(project, account_cap="10", user_cap="5")
    store = cap_store()
    user, account = SpendKey.of(project, "u1"), SpendKey.of_account(project, "acme")

    first = caps.reserve(project, call("u1")).reservation
    second = caps.reserve(project, call("u2")).reservation
    assert first is not None and second is not None
    assert store.spends([user, account]) == (
        store.spend(user),
        store.spend(account),
    )
    assert store.spend(account).held == per_call() * 2

    caps.release(project, second.id, "u2", "acme")
    assert store.spend(account).held == per_call()

    record = make_record("e1", user_id="u1", input_tokens=1000, output_tokens=100)
    record.account_id = "acme"
    caps.settle(project, first, record)
    cost = price_usage("gpt-4o", input_tokens=1000, output_tokens=100).usd
    assert store.spend(account).held == cost
    assert store.spend(user).held == cost

    record.reservation_id = first.id
    ingest_records(project, [record])
    assert not CapReservation.objects.exists()
    assert store.spend(account).total == store.spend(account).recorded
    assert store.spend(account).recorded == MonthlyAccountSpend.objects.get().cost_usd
    assert store.spend(user).recorded == MonthlyUserSpend.objects.get(user_key="u1").cost_usd


def test_a_downgrade_plan_moves_the_account_to_the_cheaper_model():
    project = make_project()
    team_plan(project, account_cap="1", cap_action=Plan.CapAction.DOWNGRADE)
    spent(project, "acme", "1")
    decision = caps.reserve(project, call("u1"))
    assert (decision.action, decision.alternative_model) == ("downgrade", "gpt-4o-mini")
    assert decision.account_id == "acme"
    assert decision.reservation is not None
    assert decision.reservation.account_id == "acme"
    assert cap_store().spend(SpendKey.of_account(project, "acme")).held > 0


# -- every way of calling, through the DjangoBackend --------------------------------


def test_every_way_of_calling_stops_at_the_account_cap_before_the_provider():
    """``wk.chat`` with ``account_id``, a wrapped client and an instrumented one in
    an ``attribute(account_id=...)`` block, and ``weckr_account_id``: each is refused
    by the account's spent budget, and the provider never hears of it."""
    project = make_project()
    team_plan(project, account_cap="1")
    spent(project, "acme", "1")
    backend = DjangoBackend(delivery="sync")
    wk = Weckr(backend=backend)
    fake = p.FakeProvider(p.openai_chat_body("gpt-4o", p.openai_usage(5, 1)))
    messages = [{"role": "user", "content": "Hi"}]
    params: dict[str, Any] = {"model": "gpt-4o", "messages": messages}

    refusals = []
    for make_call in (
        lambda: wk.chat(p.openai_client(fake), {**params, "account_id": "acme"}),
        lambda: wk.wrap(p.openai_client(fake)).chat.completions.create(**params),
        lambda: p.openai_client(fake).chat.completions.create(**params),
        lambda: p.openai_client(fake).chat.completions.create(
            **{**params, "weckr_account_id": "acme", "weckr_plan": "team"}
        ),
    ):
        with (
            attribute(user_id="u1", plan="team", account_id="acme"),
            instrumented(wk),
            pytest.raises(WeckrCapError) as caught,
        ):
            make_call()
        refusals.append((caught.value.account_id, caught.value.cap))

    assert refusals == [("acme", Decimal(1))] * 4
    assert fake.hits == 0
    # Another account of the same user goes ahead, and is recorded with its account.
    with attribute(user_id="u1", plan="team", account_id="globex"):
        wk.wrap(p.openai_client(fake)).chat.completions.create(**params)
    assert fake.hits == 1
    assert UsageEvent.objects.get().account_id == "globex"


@contextmanager
def instrumented(wk: Weckr) -> Iterator[None]:
    wk.instrument()
    try:
        yield
    finally:
        uninstrument()


def test_the_memory_backend_caps_accounts_alike():
    backend = MemoryBackend()
    backend.set_cap("team", 5, account_limit_usd=1)
    backend.set_spend(None, "0.999", account_id="acme")
    wk = Weckr(backend=backend)
    fake = p.FakeProvider(p.openai_chat_body("gpt-4o", p.openai_usage(5, 1)))
    request = {"model": "gpt-4o", "messages": [{"role": "user", "content": "Hi"}]}
    with (
        attribute(user_id="u1", plan="team", account_id="acme"),
        pytest.raises(WeckrCapError) as caught,
    ):
        wk.chat(p.openai_client(fake), request)
    assert caught.value.account_id == "acme"
    assert fake.hits == 0
    with attribute(user_id="u1", plan="team", account_id="globex"):
        wk.chat(p.openai_client(fake), request)
    assert backend.spend(None, account_id="globex") == backend.records[0].cost_usd
    assert backend.check("u2", "team", "gpt-4o", "acme").account_id == "acme"
    assert backend.check("u2", "team", "gpt-4o", "globex").allowed
