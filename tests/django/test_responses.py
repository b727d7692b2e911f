"""The whole chain in one Django process: the middleware binds the user and plan, a
view calls the real OpenAI SDK through ``wk.chat``, the cap is reserved and settled in
the database, and the opt-in 402 answer reaches the client."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from django.conf import settings
from django.contrib.auth.models import User
from django.http import HttpRequest, HttpResponse
from django.test import Client, override_settings
from django.urls import path
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from tests.core import providers as p
from weckr_core import Weckr, WeckrCapError
from weckr_core.pricing import price_usage
from weckr_django.models import CapReservation, MonthlyUserSpend

from .helpers import make_plan, make_project

pytestmark = pytest.mark.django_db

FAKE = p.FakeProvider(p.openai_chat_body("gpt-4o", p.openai_usage(1000, 500)))
wk = Weckr()


def summarize(request: HttpRequest) -> HttpResponse:
    wk.chat(
        p.openai_client(FAKE),
        {
            "model": "gpt-4o",
            "max_tokens": 500,
            "messages": [{"role": "user", "content": "Summarize this."}],
        },
    )
    return HttpResponse("ok")


class Refused(APIView):
    authentication_classes = ()
    permission_classes = ()

    def get(self, request: Request) -> Response:
        raise WeckrCapError(
            user_id="u1", plan_name="free", current_spend=Decimal("0.05"), cap=Decimal("0.05")
        )


urlpatterns: list[Any] = [path("summarize/", summarize), path("drf/", Refused.as_view())]
WITH_402 = [*settings.MIDDLEWARE, "weckr_django.responses.CapErrorMiddleware"]


@override_settings(ROOT_URLCONF=__name__, MIDDLEWARE=WITH_402)
def test_a_capped_user_gets_402_once_the_next_call_would_pass_the_cap() -> None:
    project = make_project()
    per_call = price_usage("gpt-4o", input_tokens=1000, output_tokens=500).usd
    make_plan(project, "free", price="0", cap=str(per_call * 3))
    user = User.objects.create_user("ada")
    user.weckr_plan = "free"  # type: ignore[attr-defined]
    client = Client()
    client.force_login(user)

    with override_settings(WECKR={"DELIVERY": "sync", "PLAN_RESOLVER": f"{__name__}.free"}):
        answers = [client.get("/summarize/") for _ in range(5)]

    assert [answer.status_code for answer in answers] == [200, 200, 200, 402, 402]
    assert answers[3].json() == {
        "error": answers[3].json()["error"],
        "cap": pytest.approx(float(per_call * 3)),
        "spent": pytest.approx(float(per_call * 3)),
        "plan": "free",
        "reason": "cap",
    }
    assert "spending cap reached" in answers[3].json()["error"]
    spend = MonthlyUserSpend.objects.get(user_key=str(user.pk))
    assert (spend.calls, spend.cost_usd) == (3, per_call * 3)
    assert not CapReservation.objects.exists()  # every hold settled and dropped


def free(request: HttpRequest) -> str:
    return "free"


@override_settings(
    ROOT_URLCONF=__name__,
    REST_FRAMEWORK={"EXCEPTION_HANDLER": "weckr_django.responses.drf_exception_handler"},
)
def test_the_drf_exception_handler_answers_402() -> None:
    response = Client().get("/drf/")
    assert response.status_code == 402
    assert response.json()["plan"] == "free"
    assert response.json()["cap"] == 0.05
