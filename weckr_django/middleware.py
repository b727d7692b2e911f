"""``WeckrMiddleware``: attributes every LLM call of a request to its user and plan.

Place it after ``AuthenticationMiddleware``. The user id comes from
``WECKR["USER_ID_RESOLVER"]`` (default: ``request.user.pk``; anonymous: no user),
the plan from ``WECKR["PLAN_RESOLVER"]`` (default: ``request.user.weckr_plan``,
``request.user.plan`` or ``request.user.profile.plan``, a string or an object with
``.name``), the paying account from ``WECKR["ACCOUNT_RESOLVER"]`` (default: none,
the user is the customer). The context stays bound while a streamed response is
iterated.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextvars import Token
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction, sync_to_async
from django.core.exceptions import ObjectDoesNotExist
from django.http import HttpRequest
from django.http.response import HttpResponseBase, StreamingHttpResponse

from weckr_core.context import Attribution, bind, unbind
from weckr_django.conf import weckr_settings

logger = logging.getLogger("weckr_django")

GetResponse = Callable[[HttpRequest], HttpResponseBase]
AsyncGetResponse = Callable[[HttpRequest], Awaitable[HttpResponseBase]]


def _user(request: HttpRequest) -> Any:
    user = getattr(request, "user", None)
    if user is None or not getattr(user, "is_authenticated", False):
        return None
    return user


def default_user_id(request: HttpRequest) -> str | None:
    """``request.user.pk`` as a string; None for anonymous requests."""
    user = _user(request)
    if user is None or user.pk is None:
        return None
    return str(user.pk)


def _plan_name(value: Any) -> str | None:
    if value is None or value == "":
        return None
    if isinstance(value, str):
        return value
    name = getattr(value, "name", None)
    return str(name) if name else None


def default_plan(request: HttpRequest) -> str | None:
    """The plan on ``request.user.weckr_plan``, ``.plan`` or ``.profile.plan``."""
    user = _user(request)
    if user is None:
        return None
    for attribute in ("weckr_plan", "plan"):
        try:
            value = getattr(user, attribute, None)
        except ObjectDoesNotExist:
            continue
        if callable(value) and not hasattr(value, "name"):
            value = value()
        plan = _plan_name(value)
        if plan is not None:
            return plan
    try:
        profile = getattr(user, "profile", None)
    except ObjectDoesNotExist:
        return None
    return _plan_name(getattr(profile, "plan", None)) if profile is not None else None


def default_account_id(request: HttpRequest) -> str | None:
    """No account: each user is their own customer."""
    return None


def resolve_attribution(request: HttpRequest) -> Attribution:
    """The user id, plan and account of ``request`` through the configured resolvers.
    A resolver that raises is logged and its value left out: it must not fail the page."""
    try:
        user_id = weckr_settings.user_id_resolver()(request)
    except Exception:
        logger.exception("Weckr: resolving the user of %s failed.", request.path)
        return Attribution()
    if user_id is None:
        return Attribution()
    try:
        plan = weckr_settings.plan_resolver()(request)
    except Exception:
        logger.exception("Weckr: resolving the plan of %s failed.", request.path)
        plan = None
    try:
        account_id = weckr_settings.account_resolver()(request)
    except Exception:
        logger.exception("Weckr: resolving the account of %s failed.", request.path)
        account_id = None
    return Attribution(
        user_id=str(user_id),
        plan=None if plan is None else str(plan),
        account_id=None if account_id in (None, "") else str(account_id),
    )


class WeckrMiddleware:
    sync_capable = True
    async_capable = True

    def __init__(self, get_response: GetResponse | AsyncGetResponse) -> None:
        self.get_response = get_response
        self.async_mode = iscoroutinefunction(get_response)
        if self.async_mode:
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest) -> Any:
        if self.async_mode:
            return self.__acall__(request)
        found = resolve_attribution(request)
        token = bind(user_id=found.user_id, plan=found.plan, account_id=found.account_id)
        try:
            response: HttpResponseBase = self.get_response(request)  # type: ignore[assignment]
        except BaseException:
            unbind(token)
            raise
        return self._finish(response, token)

    async def __acall__(self, request: HttpRequest) -> HttpResponseBase:
        # request.user is lazy and its first access queries the database.
        found = await sync_to_async(resolve_attribution)(request)
        token = bind(user_id=found.user_id, plan=found.plan, account_id=found.account_id)
        try:
            response = await self.get_response(request)  # type: ignore[misc]
        except BaseException:
            unbind(token)
            raise
        return self._finish(response, token)

    def _finish(self, response: HttpResponseBase, token: Token[Attribution]) -> HttpResponseBase:
        if isinstance(response, StreamingHttpResponse):
            # The body is produced after this returns; keep the attribution for it.
            attribution = contextvars.copy_context()
            unbind(token)
            if response.is_async:
                response.streaming_content = _bound_async(
                    response.streaming_content,  # type: ignore[arg-type]
                    attribution,
                )
            else:
                response.streaming_content = _bound_sync(
                    response.streaming_content,  # type: ignore[arg-type]
                    attribution,
                )
            return response
        unbind(token)
        return response


def _bound_sync(content: Iterator[bytes], context: contextvars.Context) -> Iterator[bytes]:
    iterator = iter(content)
    try:
        while True:
            try:
                chunk = context.run(next, iterator)
            except StopIteration:
                return
            yield chunk
    finally:
        close = getattr(iterator, "close", None)
        if close is not None:
            context.run(close)


async def _bound_async(
    content: AsyncIterator[bytes], context: contextvars.Context
) -> AsyncIterator[bytes]:
    from weckr_core.context import current_attribution

    attribution = context.run(current_attribution)
    iterator = aiter(content)
    token = bind(
        user_id=attribution.user_id,
        plan=attribution.plan,
        feature=attribution.feature,
        tags=attribution.tags,
        agent=attribution.agent,
        account_id=attribution.account_id,
    )
    try:
        async for chunk in iterator:
            yield chunk
    finally:
        with contextlib.suppress(ValueError):  # closed from another context: nothing bound
            unbind(token)
        close = getattr(iterator, "aclose", None)
        if close is not None:
            await close()
