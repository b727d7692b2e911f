"""A crew run inside a Django request: rows land in UsageEvent with the request's
user and plan, recorded from CrewAI's event threads by the app's DjangoBackend."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal

import pytest
from django.contrib.auth.models import User
from django.http import HttpRequest
from django.test import Client, override_settings

import weckr_core
from tests.crewai.urls import LLMS
from weckr_core import price_usage
from weckr_django.backend import DjangoBackend
from weckr_django.models import MonthlyAccountSpend, Plan, Project, UsageEvent
from weckr_django.periods import month_start

pytestmark = pytest.mark.django_db(transaction=True)


def plan_of_logged_in_user(request: HttpRequest) -> str | None:
    return "pro" if request.user.is_authenticated else None


IN_A_REQUEST = override_settings(
    ROOT_URLCONF="tests.crewai.urls",
    WECKR={
        "PLAN_RESOLVER": f"{__name__}.plan_of_logged_in_user",
        "DELIVERY": "sync",
        "CAP_CACHE_SECONDS": 0,
    },
)


@pytest.fixture
def django_backend() -> Iterator[DjangoBackend]:
    """A DjangoBackend as the process default, as the app installs at start-up; a
    fresh one, so no project cached by an earlier test's (flushed) database."""
    backend = DjangoBackend()
    previous = weckr_core.configure(backend)
    LLMS.clear()
    yield backend
    weckr_core.configure(previous)


def logged_in(client: Client) -> User:
    user = User.objects.create_user("ada", password="pw")
    client.force_login(user)
    return user


def billed(reply_usage: dict[str, int]) -> Decimal:
    return price_usage(
        "gpt-4o-mini",
        input_tokens=reply_usage["prompt_tokens"],
        output_tokens=reply_usage["completion_tokens"],
        cached_input_tokens=reply_usage["cached_prompt_tokens"],
        reasoning_tokens=reply_usage["reasoning_tokens"],
        provider="openai",
    ).usd


@IN_A_REQUEST
def test_rows_land_in_usage_event_with_the_requests_user_and_plan(
    client: Client, django_backend: DjangoBackend
) -> None:
    user = logged_in(client)

    response = client.get("/research/", {"topic": "tides"})

    assert response.status_code == 200
    [llm] = LLMS
    events = list(UsageEvent.objects.order_by("step"))
    assert len(events) == len(llm.calls) == 2
    assert {(e.user_id, e.plan_name, e.feature, e.source) for e in events} == {
        (str(user.pk), "pro", "research", "crewai")
    }
    assert {e.run_id for e in events} == {response.json()["run_id"]}
    assert [(e.agent, e.task) for e in events] == [("researcher", "research"), ("writer", "write")]
    assert [e.cost_usd for e in events] == [billed(call.reply.usage()) for call in llm.calls]
    assert [e.cached_input_tokens for e in events] == [c.reply.cached_tokens for c in llm.calls]
    assert [e.reasoning_tokens for e in events] == [c.reply.reasoning_tokens for c in llm.calls]


CAP = Decimal("0.0005")


@IN_A_REQUEST
def test_the_plans_cap_in_the_database_stops_the_next_kickoff(
    client: Client, django_backend: DjangoBackend
) -> None:
    logged_in(client)
    project = django_backend.project()
    assert isinstance(project, Project)
    # The scripted replies use at most 300 output tokens: reserve that much per call.
    project.default_output_tokens = 300
    project.save()
    Plan.objects.create(
        project=project,
        name="pro",
        monthly_price_usd=Decimal("20"),
        monthly_cap_usd=CAP,
        cap_action=Plan.CapAction.BLOCK,
    )

    first = client.get("/research/")
    second = client.get("/research/")

    # The first kickoff's calls each fit under the cap when they start (their
    # estimates do); the prompts the fake bills are larger than the messages, so it
    # ends above the cap, and the next kickoff is refused before any call.
    first_costs = [billed(call.reply.usage()) for call in LLMS[0].calls]
    assert sum(first_costs[:-1], Decimal(0)) < CAP <= sum(first_costs, Decimal(0))
    assert first.status_code == 200
    assert second.status_code == 402
    assert second.json() == {"stopped": "WeckrCapError", "account": None}
    assert LLMS[1].calls == []
    assert UsageEvent.objects.count() == len(LLMS[0].calls)


def account_of_logged_in_user(request: HttpRequest) -> str | None:
    return "acme" if request.user.is_authenticated else None


@override_settings(
    ROOT_URLCONF="tests.crewai.urls",
    WECKR={
        "PLAN_RESOLVER": f"{__name__}.plan_of_logged_in_user",
        "ACCOUNT_RESOLVER": f"{__name__}.account_of_logged_in_user",
        "DELIVERY": "sync",
        "CAP_CACHE_SECONDS": 0,
    },
)
def test_an_account_past_its_cap_stops_the_kickoff_before_any_call(
    client: Client, django_backend: DjangoBackend
) -> None:
    logged_in(client)
    project = django_backend.project()
    assert isinstance(project, Project)
    Plan.objects.create(
        project=project,
        name="pro",
        monthly_price_usd=Decimal("99"),
        account_monthly_cap_usd=CAP,
    )
    # Other users of the account spent its budget.
    MonthlyAccountSpend.objects.create(
        project=project, account_key="acme", month=month_start(project), cost_usd=CAP
    )

    response = client.get("/research/")

    assert response.status_code == 402
    assert response.json() == {"stopped": "WeckrCapError", "account": "acme"}
    assert LLMS[0].calls == []
    assert not UsageEvent.objects.exists()
