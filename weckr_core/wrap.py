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
import dataclasses
import functools
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar, cast

from weckr_core.records import TokenUsage
from weckr_core.streaming import (
    AnthropicStreamUsage,
    FinalUsage,
    GeminiStreamUsage,
    OpenAIChatStreamUsage,
    OpenAIResponsesStreamUsage,
    StreamUsage,
    anthropic_final_usage,
    openai_chat_final_usage,
    openai_responses_final_usage,
)
from weckr_core.usage import (
    detect_provider,
    usage_from_anthropic,
    usage_from_gemini,
    usage_from_openai,
)

if TYPE_CHECKING:
    from weckr_core.client import Weckr

C = TypeVar("C")


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A provider method that spends tokens, and how to read its usage."""

    provider: str
    # Reads the usage from the response's usage part (``response.<usage_field>``,
    # or None when it has none).
    usage: Callable[[Any], TokenUsage]
    stream_usage: Callable[[], StreamUsage]
    # The response attribute naming the model that served the call.
    model_field: str = "model"
    usage_field: str = "usage"
    # Always returns a stream (google-genai ``generate_content_stream``).
    always_streams: bool = False
    # OpenAI Chat Completions: ask for the usage chunk when the caller did not.
    adds_include_usage: bool = False
    # A ``.stream(...)`` helper: returns a context manager, whose stream's own
    # accumulation gives the usage on exit.
    final_usage: FinalUsage | None = None
    # A ``with_raw_response`` view: returns the SDK's raw response, whose ``parse()``
    # gives the usual result (the SDK caches it, so parsing it here costs the
    # caller nothing).
    raw: bool = False
    # A ``with_streaming_response`` view: returns a context manager that sends the
    # request on entry; the usage is read when the caller parses the response.
    streaming_response: bool = False


OPENAI_CHAT = Endpoint("openai", usage_from_openai, OpenAIChatStreamUsage, adds_include_usage=True)
OPENAI_RESPONSES = Endpoint("openai", usage_from_openai, OpenAIResponsesStreamUsage)
ANTHROPIC_MESSAGES = Endpoint("anthropic", usage_from_anthropic, AnthropicStreamUsage)
ANTHROPIC_STREAM_HELPER = Endpoint(
    "anthropic", usage_from_anthropic, AnthropicStreamUsage, final_usage=anthropic_final_usage
)
OPENAI_CHAT_STREAM_HELPER = Endpoint(
    "openai",
    usage_from_openai,
    OpenAIChatStreamUsage,
    adds_include_usage=True,
    final_usage=openai_chat_final_usage,
)
OPENAI_RESPONSES_STREAM_HELPER = Endpoint(
    "openai",
    usage_from_openai,
    OpenAIResponsesStreamUsage,
    final_usage=openai_responses_final_usage,
)
GEMINI = Endpoint(
    "gemini",
    usage_from_gemini,
    GeminiStreamUsage,
    model_field="model_version",
    usage_field="usage_metadata",
)
GEMINI_STREAM = dataclasses.replace(GEMINI, always_streams=True)


class _Rewrap:
    """Marks client methods that return a new client (``with_options``, ``copy``)."""


REWRAP = _Rewrap()


class _Chats:
    """Marks google-genai's ``chats``: its chats get models that record."""


CHATS = _Chats()

Route = Mapping[str, "Route | Endpoint | _Rewrap | _Chats"]

_GEMINI_MODELS: Route = {
    "generate_content": GEMINI,
    "generate_content_stream": GEMINI_STREAM,
}
_OPENAI_CHAT_RAW: Route = dict.fromkeys(
    ("create", "parse"), dataclasses.replace(OPENAI_CHAT, raw=True)
)
_OPENAI_RESPONSES_RAW: Route = dict.fromkeys(
    ("create", "parse"), dataclasses.replace(OPENAI_RESPONSES, raw=True)
)
_OPENAI_CHAT_STREAMING: Route = {
    "create": dataclasses.replace(OPENAI_CHAT, streaming_response=True)
}
_OPENAI_RESPONSES_STREAMING: Route = {
    "create": dataclasses.replace(OPENAI_RESPONSES, streaming_response=True)
}
_ANTHROPIC_MESSAGES_RAW: Route = {"create": dataclasses.replace(ANTHROPIC_MESSAGES, raw=True)}
_ANTHROPIC_MESSAGES_STREAMING: Route = {
    "create": dataclasses.replace(ANTHROPIC_MESSAGES, streaming_response=True)
}
_ANTHROPIC_MESSAGES: Route = {
    "create": ANTHROPIC_MESSAGES,
    "stream": ANTHROPIC_STREAM_HELPER,
    "with_raw_response": _ANTHROPIC_MESSAGES_RAW,
    "with_streaming_response": _ANTHROPIC_MESSAGES_STREAMING,
}

ROUTES: dict[str, Route] = {
    "openai": {
        "chat": {
            "completions": {
                "create": OPENAI_CHAT,
                "parse": OPENAI_CHAT,
                "stream": OPENAI_CHAT_STREAM_HELPER,
                "with_raw_response": _OPENAI_CHAT_RAW,
                "with_streaming_response": _OPENAI_CHAT_STREAMING,
            }
        },
        "responses": {
            "create": OPENAI_RESPONSES,
            "parse": OPENAI_RESPONSES,
            "stream": OPENAI_RESPONSES_STREAM_HELPER,
            "with_raw_response": _OPENAI_RESPONSES_RAW,
            "with_streaming_response": _OPENAI_RESPONSES_STREAMING,
        },
        # Structured outputs under their older home.
        "beta": {"chat": {"completions": {"parse": OPENAI_CHAT}}},
        "with_raw_response": {
            "chat": {"completions": _OPENAI_CHAT_RAW},
            "responses": _OPENAI_RESPONSES_RAW,
        },
        "with_streaming_response": {
            "chat": {"completions": _OPENAI_CHAT_STREAMING},
            "responses": _OPENAI_RESPONSES_STREAMING,
        },
        "with_options": REWRAP,
        "copy": REWRAP,
    },
    "anthropic": {
        "messages": _ANTHROPIC_MESSAGES,
        "beta": {"messages": _ANTHROPIC_MESSAGES},
        "with_raw_response": {"messages": _ANTHROPIC_MESSAGES_RAW},
        "with_streaming_response": {"messages": _ANTHROPIC_MESSAGES_STREAMING},
        "with_options": REWRAP,
        "copy": REWRAP,
    },
    "gemini": {
        "models": _GEMINI_MODELS,
        "chats": CHATS,
        "aio": {"models": _GEMINI_MODELS, "chats": CHATS},
    },
}


class WeckrProxy:
    """Passes everything through to the wrapped object, except the routed names.

    Routed attributes are built on first access and cached in the instance
    ``__dict__``, so later accesses are plain attribute reads.
    """

    __wrapped__: Any
    _weckr: Weckr
    _weckr_routes: Route
    _weckr_async: bool

    def __init__(self, target: Any, weckr: Weckr, routes: Route) -> None:
        state = self.__dict__
        state["__wrapped__"] = target
        state["_weckr"] = weckr
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
            proxy = _intercept(self._weckr, value, route, is_async)
        elif isinstance(route, _Rewrap):
            proxy = _rewrapping(self._weckr, value)
        elif isinstance(route, _Chats):
            models = _recording_models(self._weckr, target.models, self._weckr_async)
            proxy = type(value)(modules=models)
        else:
            proxy = WeckrProxy(value, self._weckr, route)
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


def _intercept(weckr: Weckr, method: Any, endpoint: Endpoint, is_async: bool) -> Any:
    if endpoint.streaming_response:
        # Not awaited, even on async clients: it returns a context manager.
        def streaming_response(*args: Any, **kwargs: Any) -> Any:
            return weckr._streaming_response(method, endpoint, args, kwargs, is_async)

        return functools.update_wrapper(streaming_response, method)
    if endpoint.final_usage is not None:

        def stream_helper(*args: Any, **kwargs: Any) -> Any:
            return weckr._call_stream_helper(method, endpoint, args, kwargs, is_async)

        return functools.update_wrapper(stream_helper, method)
    if is_async:

        async def acreate(*args: Any, **kwargs: Any) -> Any:
            return await weckr._acall(method, endpoint, args, kwargs)

        return functools.update_wrapper(acreate, method)

    def create(*args: Any, **kwargs: Any) -> Any:
        return weckr._call(method, endpoint, args, kwargs)

    return functools.update_wrapper(create, method)


def _recording_models(weckr: Weckr, models: Any, is_async: bool) -> Any:
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
                return await weckr._acall(super().generate_content, GEMINI, args, kwargs)

            async def generate_content_stream(self, *args: Any, **kwargs: Any) -> Any:
                method = super().generate_content_stream
                return await weckr._acall(method, GEMINI_STREAM, args, kwargs)

        recording = AsyncRecordingModels
    else:

        class RecordingModels(base):  # type: ignore[valid-type, misc]
            def generate_content(self, *args: Any, **kwargs: Any) -> Any:
                return weckr._call(super().generate_content, GEMINI, args, kwargs)

            def generate_content_stream(self, *args: Any, **kwargs: Any) -> Any:
                return weckr._call(super().generate_content_stream, GEMINI_STREAM, args, kwargs)

        recording = RecordingModels
    copied = copy.copy(models)
    copied.__class__ = recording
    return copied


def _rewrapping(weckr: Weckr, method: Any) -> Any:
    def rewrapped(*args: Any, **kwargs: Any) -> Any:
        return weckr.wrap(method(*args, **kwargs))

    return functools.update_wrapper(rewrapped, method)


def unwrap(client: Any) -> Any:
    """The real client behind ``wrap(client)``; anything else as is."""
    if type(client) is WeckrProxy:
        return client.__dict__["__wrapped__"]
    return client


def wrap_with(weckr: Weckr, client: C) -> C:
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
    return cast(C, WeckrProxy(client, weckr, routes))


_default_weckr: Weckr | None = None


def wrap(client: C, *, weckr: Weckr | None = None) -> C:
    """Record every LLM call made through ``client``, attributed from the context.

    Records go to ``weckr``'s backend, or to the process default backend
    (``weckr_core.configure()``; inside Django, the weckr_django backend).
    """
    global _default_weckr
    if weckr is None:
        if _default_weckr is None:
            from weckr_core.client import Weckr

            _default_weckr = Weckr()
        weckr = _default_weckr
    return wrap_with(weckr, client)
