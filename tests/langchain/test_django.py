"""Inside a Django request: WeckrMiddleware's user and plan reach the handler, and
the rows land in UsageEvent through the DjangoBackend."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal

import pytest
from asgiref.sync import sync_to_async
from django.contrib.auth.models import Group, User
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.test import AsyncClient, Client
from django.urls import path
from langchain.agents import create_agent
from langchain_core.messages import HumanMessage
from pytest_django.fixtures import Settings

import weckr_core
from tests.langchain.fakes import ScriptedChatModel, counting_tool
from weckr_core import WeckrCapError, WeckrDowngradeWarning
from weckr_django.backend import DjangoBackend
from weckr_django.models import (
    CapReservation,
    MonthlyAccountSpend,
    Plan,
    Project,
    UsageEvent,
)
from weckr_django.periods import month_start
from weckr_langchain import AsyncWeckrHandler, WeckrAgentMiddleware, WeckrHandler

pytestmark = [pytest.mark.urls(__name__), pytest.mark.django_db(transaction=True)]

# One model for every request, so a test can count the calls that reached it. Its
# max_tokens bounds what a cap reserves for a call: 20 output tokens, as it answers.
MODEL = ScriptedChatModel(tool="search", tool_turns=1, max_tokens=20)


def research_view(request: HttpRequest) -> HttpResponse:
    agent = create_agent(MODEL, tools=[counting_tool()[0]], name="researcher")
    try:
        agent.invoke(
            {"messages": [HumanMessage("find it")]},
            {"callbacks": [WeckrHandler(feature="research")]},
        )
    except WeckrCapError as refused:
        body = {"error": "cap reached", "cap": str(refused.cap), "account": refused.account_id}
        return JsonResponse(body, status=402)
    return JsonResponse({"ok": True})


async def async_research_view(request: HttpRequest) -> HttpResponse:
    agent = create_agent(MODEL, tools=[counting_tool()[0]], name="researcher")
    await agent.ainvoke(
        {"messages": [HumanMessage("find it")]},
        {"callbacks": [AsyncWeckrHandler(feature="research")]},
    )
    return JsonResponse({"ok": True})


def middleware_research_view(request: HttpRequest) -> HttpResponse:
    agent = create_agent(
        MODEL, tools=[counting_tool()[0]], middleware=[WeckrAgentMiddleware(feature="research")]
    )
    agent.invoke(
        {"messages": [HumanMessage("find it")]},
        {"callbacks": [WeckrHandler(max_llm_calls=10)]},
    )
    return JsonResponse({"ok": True})


urlpatterns = [
    path("research/", research_view),
    path("async-research/", async_research_view),
    path("middleware-research/", middleware_research_view),
]


def plan_from_groups(request: HttpRequest) -> str | None:
    """The app's own rule: a customer's plan is their group."""
    user = request.user
    if not isinstance(user, User):
        return None
    group = user.groups.order_by("name").first()
    return group.name if group is not None else None


@pytest.fixture
def django_backend(settings: Settings) -> Iterator[DjangoBackend]:
    settings.MIDDLEWARE = [*settings.MIDDLEWARE, "weckr_django.middleware.WeckrMiddleware"]
    settings.WECKR = {
        "DELIVERY": "sync",
        "CAP_CACHE_SECONDS": 0,
        "PLAN_RESOLVER": f"{__name__}.plan_from_groups",
    }
    MODEL.calls = 0
    MODEL.called_as.clear()
    backend = DjangoBackend(delivery="sync")
    previous = weckr_core.configure(backend)
    yield backend
    weckr_core.configure(previous)


def customer(client: Client | AsyncClient, plan: str) -> User:
    user = User.objects.create_user("ada")
    user.groups.add(Group.objects.create(name=plan))
    client.force_login(user)
    return user


def test_agent_calls_in_a_request_are_attributed_to_the_user_and_plan(
    client: Client, django_backend: DjangoBackend
) -> None:
    user = customer(client, "pro")

    response = client.get("/research/")

    assert response.status_code == 200
    events = list(UsageEvent.objects.order_by("timestamp"))
    assert len(events) == MODEL.calls == 2
    assert {(event.user_id, event.plan_name) for event in events} == {(str(user.pk), "pro")}
    assert {event.feature for event in events} == {"research"}
    assert {event.source for event in events} == {"langchain"}
    assert {event.agent for event in events} == {"researcher"}
    assert len({event.run_id for event in events}) == 1
    assert events[1].tags == ["tool:search"]
    assert all(event.input_tokens == 100 and event.output_tokens == 20 for event in events)


def test_a_user_over_the_cap_is_refused_before_the_model_is_called(
    client: Client, django_backend: DjangoBackend
) -> None:
    project = Project.objects.create(name="Acme")
    Plan.objects.create(
        project=project,
        name="free",
        monthly_price_usd=Decimal("0"),
        monthly_cap_usd=Decimal("0.0003"),
    )
    customer(client, "free")

    # The first model call's worst case (about $0.00023) fits under the cap and its
    # real cost ($0.00045) spends past it: the agent's second call is refused mid-run,
    # and so is the next request's first.
    first = client.get("/research/")
    calls_after_first = MODEL.calls
    second = client.get("/research/")

    assert (first.status_code, second.status_code) == (402, 402)
    assert second.json()["cap"] == "0.0003"
    assert calls_after_first == 1
    assert MODEL.calls == 1
    (event,) = UsageEvent.objects.filter(project=project)
    assert event.plan_name == "free"
    assert event.cost_usd is not None and event.cost_usd > Decimal("0.0003")


def account_of_customer(request: HttpRequest) -> str | None:
    """The app's own rule: every customer here belongs to the account "acme"."""
    return "acme" if request.user.is_authenticated else None


def test_an_account_past_its_cap_stops_its_users_before_the_model_is_called(
    client: Client, django_backend: DjangoBackend, settings: Settings
) -> None:
    settings.WECKR = {**settings.WECKR, "ACCOUNT_RESOLVER": f"{__name__}.account_of_customer"}
    project = Project.objects.create(name="Acme")
    Plan.objects.create(
        project=project,
        name="team",
        monthly_price_usd=Decimal("99"),
        monthly_cap_usd=Decimal("5"),
        account_monthly_cap_usd=Decimal("0.0003"),
    )
    # Another user of the account spent its budget.
    MonthlyAccountSpend.objects.create(
        project=project, account_key="acme", month=month_start(project), cost_usd=Decimal("0.0003")
    )
    customer(client, "team")

    handler = client.get("/research/")
    with pytest.raises(WeckrCapError) as caught:
        client.get("/middleware-research/")

    assert handler.status_code == 402
    assert handler.json() == {"error": "cap reached", "cap": "0.0003", "account": "acme"}
    assert caught.value.account_id == "acme"
    assert MODEL.calls == 0
    assert not UsageEvent.objects.exists()
    assert not CapReservation.objects.exists()


async def test_async_views_with_the_async_handler(
    async_client: AsyncClient, django_backend: DjangoBackend
) -> None:
    user = await sync_to_async(customer)(async_client, "pro")

    response = await async_client.get("/async-research/")

    assert response.status_code == 200
    events = [event async for event in UsageEvent.objects.all()]
    assert len(events) == MODEL.calls == 2
    assert {(event.user_id, event.plan_name) for event in events} == {(str(user.pk), "pro")}


def test_the_agent_middleware_downgrades_a_user_over_the_cap(
    client: Client, django_backend: DjangoBackend
) -> None:
    project = Project.objects.create(name="Acme")
    Plan.objects.create(
        project=project,
        name="free",
        monthly_price_usd=Decimal("0"),
        monthly_cap_usd=Decimal("0.0001"),
        cap_action=Plan.CapAction.DOWNGRADE,
    )
    customer(client, "free")
    held: list[int] = []
    MODEL.during_call = lambda: held.append(CapReservation.objects.count())

    try:
        with pytest.warns(WeckrDowngradeWarning):
            response = client.get("/middleware-research/")
    finally:
        MODEL.during_call = None

    assert response.status_code == 200
    # gpt-4o's worst case does not fit under the cap: both calls ran on gpt-4o-mini.
    assert MODEL.called_as == ["gpt-4o-mini", "gpt-4o-mini"]
    events = list(UsageEvent.objects.filter(project=project).order_by("timestamp"))
    assert [(event.requested_model, event.model) for event in events] == [
        ("gpt-4o", "gpt-4o-mini"),
        ("gpt-4o", "gpt-4o-mini"),
    ]
    assert {event.feature for event in events} == {"research"}
    # Each call held its reservation while it ran; each was dropped when its event
    # was stored.
    assert held == [1, 1]
    assert not CapReservation.objects.exists()
