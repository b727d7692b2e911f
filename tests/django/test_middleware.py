from __future__ import annotations

from types import SimpleNamespace

import pytest
from django.contrib.auth.models import AnonymousUser, User
from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from django.test import AsyncRequestFactory, RequestFactory, override_settings

from weckr_core.context import current_attribution
from weckr_django.middleware import WeckrMiddleware, default_plan

pytestmark = pytest.mark.django_db


def seen_in_view(request: HttpRequest) -> HttpResponse:
    attribution = current_attribution()
    return HttpResponse(f"{attribution.user_id}|{attribution.plan}")


async def seen_in_async_view(request: HttpRequest) -> HttpResponse:
    return seen_in_view(request)


def user_on_plan(plan: object = "pro") -> User:
    user = User.objects.create_user("ada")
    user.weckr_plan = plan  # type: ignore[attr-defined]
    return user


def request_for(
    user: User | AnonymousUser, factory: RequestFactory | AsyncRequestFactory | None = None
):
    request = (factory or RequestFactory()).get("/")
    request.user = user
    return request


def test_binds_user_and_plan_for_the_request_and_unbinds_after():
    user = user_on_plan()
    response = WeckrMiddleware(seen_in_view)(request_for(user))
    assert response.content.decode() == f"{user.pk}|pro"
    assert current_attribution().user_id is None


def test_anonymous_requests_have_no_user():
    response = WeckrMiddleware(seen_in_view)(request_for(AnonymousUser()))
    assert response.content.decode() == "None|None"


def test_plan_from_profile_or_object_with_name():
    user = User.objects.create_user("grace")
    user.profile = SimpleNamespace(plan=SimpleNamespace(name="team"))  # type: ignore[attr-defined]
    request = request_for(user)
    assert default_plan(request) == "team"
    response = WeckrMiddleware(seen_in_view)(request)
    assert response.content.decode() == f"{user.pk}|team"


def plan_from_header(request: HttpRequest) -> str | None:
    return request.headers.get("X-Plan")


def user_from_header(request: HttpRequest) -> str | None:
    return request.headers.get("X-User")


def test_resolvers_are_configurable():
    request = RequestFactory().get("/", headers={"X-User": "acct-7", "X-Plan": "scale"})
    with override_settings(
        WECKR={
            "USER_ID_RESOLVER": f"{__name__}.user_from_header",
            "PLAN_RESOLVER": f"{__name__}.plan_from_header",
        }
    ):
        response = WeckrMiddleware(seen_in_view)(request)
    assert response.content.decode() == "acct-7|scale"


def broken_resolver(request: HttpRequest) -> str | None:
    raise LookupError("no such profile")


def test_a_failing_resolver_does_not_fail_the_request(caplog):
    with override_settings(WECKR={"PLAN_RESOLVER": f"{__name__}.broken_resolver"}):
        user = user_on_plan()
        response = WeckrMiddleware(seen_in_view)(request_for(user))
    assert response.content.decode() == f"{user.pk}|None"
    assert any("resolving the plan" in message for message in caplog.messages)


def test_context_is_unbound_when_the_view_raises():
    def broken(request: HttpRequest) -> HttpResponse:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        WeckrMiddleware(broken)(request_for(user_on_plan()))
    assert current_attribution().user_id is None


def test_streamed_response_keeps_the_attribution_while_iterating():
    user = user_on_plan()

    def streaming_view(request: HttpRequest) -> StreamingHttpResponse:
        def chunks():
            for _ in range(3):
                yield f"{current_attribution().user_id}|{current_attribution().plan};"

        return StreamingHttpResponse(chunks())

    response = WeckrMiddleware(streaming_view)(request_for(user))
    assert current_attribution().user_id is None  # not bound outside the body
    body = b"".join(response.streaming_content).decode()
    assert body == f"{user.pk}|pro;" * 3
    assert current_attribution().user_id is None


@pytest.mark.django_db(transaction=True)
async def test_async_middleware_binds_for_the_request():
    from asgiref.sync import sync_to_async

    user = await sync_to_async(user_on_plan)()
    middleware = WeckrMiddleware(seen_in_async_view)
    response = await middleware(request_for(user, AsyncRequestFactory()))
    assert response.content.decode() == f"{user.pk}|pro"
    assert current_attribution().user_id is None


@pytest.mark.django_db(transaction=True)
async def test_async_streamed_response_keeps_the_attribution():
    from asgiref.sync import sync_to_async

    user = await sync_to_async(user_on_plan)("scale")

    async def streaming_view(request: HttpRequest) -> StreamingHttpResponse:
        async def chunks():
            for _ in range(2):
                yield f"{current_attribution().user_id}|{current_attribution().plan};"

        return StreamingHttpResponse(chunks())

    response = await WeckrMiddleware(streaming_view)(request_for(user, AsyncRequestFactory()))
    assert current_attribution().user_id is None
    body = b"".join([chunk async for chunk in response.streaming_content])
    assert body.decode() == f"{user.pk}|scale;" * 2


def logged_in_user(client) -> User:
    user = User.objects.create_user("linus", password="pw")
    client.force_login(user)
    return user


def plan_of_logged_in_user(request: HttpRequest) -> str | None:
    return "pro" if request.user.is_authenticated else None


WITH_TEST_VIEWS = override_settings(
    ROOT_URLCONF="tests.django.urls",
    WECKR={"PLAN_RESOLVER": f"{__name__}.plan_of_logged_in_user"},
)


@WITH_TEST_VIEWS
def test_full_request_cycle_sync_and_streamed(client):
    user = logged_in_user(client)
    assert client.get("/whoami/").content.decode() == f"{user.pk}|pro"
    streamed = client.get("/stream/")
    assert b"".join(streamed.streaming_content).decode() == f"{user.pk}|pro;" * 3


@WITH_TEST_VIEWS
@pytest.mark.django_db(transaction=True)
async def test_full_request_cycle_under_asgi(async_client):
    from asgiref.sync import sync_to_async

    user = await sync_to_async(logged_in_user)(async_client)
    response = await async_client.get("/whoami-async/")
    assert response.content.decode() == f"{user.pk}|pro"
