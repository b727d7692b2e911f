"""``wrap(client)``: an OpenAI, Anthropic or google-genai client that records itself.

The proxy intercepts the calls that spend tokens and passes every other attribute
through to the real client::

    client = wrap(openai.OpenAI())
    with attribute(user_id=request.user.pk, plan="pro", feature="summaries"):
        client.chat.completions.create(model="gpt-4o-mini", messages=[...])

Intercepted: ``chat.completions.create`` / ``.parse`` / ``.stream`` and
``responses.create`` / ``.parse`` / ``.stream`` (OpenAI, ``.parse`` also under
``beta``), ``messages.create`` / ``.stream`` (Anthropic, also under
``beta``), ``models.generate_content`` and ``models.generate_content_stream``
(google-genai, also under ``aio``), and the same OpenAI and Anthropic calls through
``with_raw_response`` (the raw response is returned; its ``parse()`` gives the
result, a recorded stream for ``stream=True``) and ``with_streaming_response``
(recorded when the caller parses the response; read any other way, the call is
recorded with its usage unreported). ``with_options()`` / ``copy()`` return wrapped
clients. google-genai's ``chats`` (also under ``aio``) give chats whose model
calls are recorded.
``isinstance(wrapped, openai.OpenAI)`` is False.
"""

from __future__ import annotations

import copy
import functools
import inspect
from typing import Any, Protocol, TypeVar, cast

from weckr_core.calls import CallRecorder, default_recorder
from weckr_core.endpoints import (
    GEMINI,
    GEMINI_STREAM,
    ROUTES,
    Chats,
    Endpoint,
    Rewrap,
    Route,
)
from weckr_core.usage import detect_provider

C = TypeVar("C")


class WeckrProxy:
    """Passes everything through to the wrapped object, except the routed names.

    Routed attributes are built on first access and cached in the instance
    ``__dict__``, so later accesses are plain attribute reads.
    """

    __wrapped__: Any
    _weckr_recorder: CallRecorder
    _weckr_routes: Route
    _weckr_async: bool

    def __init__(self, target: Any, recorder: CallRecorder, routes: Route) -> None:
        state = self.__dict__
        state["__wrapped__"] = target
        state["_weckr_recorder"] = recorder
        state["_weckr_routes"] = routes
        state["_weckr_async"] = type(target).__name__.startswith("Async")

    def __getattr__(self, name: str) -> Any:
        target = self.__dict__.get("__wrapped__")
        if target is None:
            raise AttributeError(name)
        route = self._weckr_routes.get(name)
        value = getattr(target, name)
        if route is None:
            return value
        proxy: Any
        if isinstance(route, Endpoint):
            is_async = self._weckr_async or inspect.iscoroutinefunction(value)
            proxy = _intercept(self._weckr_recorder, value, route, is_async)
        elif isinstance(route, Rewrap):
            proxy = _rewrapping(self._weckr_recorder, value)
        elif isinstance(route, Chats):
            models = _recording_models(self._weckr_recorder, target.models, self._weckr_async)
            proxy = type(value)(modules=models)
        else:
            proxy = WeckrProxy(value, self._weckr_recorder, route)
        self.__dict__[name] = proxy
        return proxy

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self.__wrapped__, name, value)

    def __delattr__(self, name: str) -> None:
        delattr(self.__wrapped__, name)

    def __dir__(self) -> list[str]:
        return sorted(set(dir(self.__wrapped__)))

    def __repr__(self) -> str:
        return f"<weckr wrap of {self.__wrapped__!r}>"


def _intercept(recorder: CallRecorder, method: Any, endpoint: Endpoint, is_async: bool) -> Any:
    if endpoint.streaming_response:
        # Not awaited, even on async clients: it returns a context manager.
        def streaming_response(*args: Any, **kwargs: Any) -> Any:
            return recorder.streaming_response(method, endpoint, args, kwargs, is_async)

        return functools.update_wrapper(streaming_response, method)
    if endpoint.final_usage is not None:

        def stream_helper(*args: Any, **kwargs: Any) -> Any:
            return recorder.call_stream_helper(method, endpoint, args, kwargs, is_async)

        return functools.update_wrapper(stream_helper, method)
    if is_async:

        async def acreate(*args: Any, **kwargs: Any) -> Any:
            return await recorder.acall(method, endpoint, args, kwargs)

        return functools.update_wrapper(acreate, method)

    def create(*args: Any, **kwargs: Any) -> Any:
        return recorder.call(method, endpoint, args, kwargs)

    return functools.update_wrapper(create, method)


def _recording_models(recorder: CallRecorder, models: Any, is_async: bool) -> Any:
    """A copy of google-genai's ``Models`` (or ``AsyncModels``) whose calls record.

    A chat calls its models object directly and checks that it is a ``Models``, so a
    proxy cannot stand in: this is an instance of a subclass, sharing the original's
    API client.
    """
    base = type(models)
    recording: type
    if is_async:

        class AsyncRecordingModels(base):  # type: ignore[valid-type, misc]
            async def generate_content(self, *args: Any, **kwargs: Any) -> Any:
                return await recorder.acall(super().generate_content, GEMINI, args, kwargs)

            async def generate_content_stream(self, *args: Any, **kwargs: Any) -> Any:
                method = super().generate_content_stream
                return await recorder.acall(method, GEMINI_STREAM, args, kwargs)

        recording = AsyncRecordingModels
    else:

        class RecordingModels(base):  # type: ignore[valid-type, misc]
            def generate_content(self, *args: Any, **kwargs: Any) -> Any:
                return recorder.call(super().generate_content, GEMINI, args, kwargs)

            def generate_content_stream(self, *args: Any, **kwargs: Any) -> Any:
                return recorder.call(super().generate_content_stream, GEMINI_STREAM, args, kwargs)

        recording = RecordingModels
    copied = copy.copy(models)
    copied.__class__ = recording
    return copied


def _rewrapping(recorder: CallRecorder, method: Any) -> Any:
    def rewrapped(*args: Any, **kwargs: Any) -> Any:
        return wrap_with(recorder, method(*args, **kwargs))

    return functools.update_wrapper(rewrapped, method)


def unwrap(client: Any) -> Any:
    """The real client behind ``wrap(client)``; anything else as is."""
    if type(client) is WeckrProxy:
        return client.__dict__["__wrapped__"]
    return client


def wrap_with(recorder: CallRecorder, client: C) -> C:
    if type(client) is WeckrProxy:
        return client
    provider = detect_provider(client)
    routes = ROUTES.get(provider)
    if provider == "gemini" and not callable(
        getattr(getattr(client, "models", None), "generate_content", None)
    ):
        raise TypeError(
            "Weckr: wrap() takes a google-genai Client; for the legacy google-generativeai "
            "SDK use wk.chat(google.generativeai, params)."
        )
    if routes is None:
        raise TypeError(
            "Weckr: wrap() takes an OpenAI, Anthropic or google-genai client "
            f"(sync or async), not {type(client).__module__}.{type(client).__qualname__}."
        )
    return cast(C, WeckrProxy(client, recorder, routes))


class _Wraps(Protocol):
    def wrap(self, client: C) -> C: ...


def wrap(client: C, *, weckr: _Wraps | None = None) -> C:
    """Record every LLM call made through ``client``, attributed from the context.

    Records go to ``weckr``'s backend (a ``Weckr``: ``wrap(client, weckr=wk)`` is
    ``wk.wrap(client)``), or to the process default backend
    (``weckr_core.configure()``; inside Django, the weckr_django backend).
    """
    if weckr is not None:
        return weckr.wrap(client)
    return wrap_with(default_recorder(), client)
