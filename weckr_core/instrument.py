"""``instrument()``: record every OpenAI, Anthropic and google-genai call in the
process, with no call site changed::

    import weckr_core

    weckr_core.instrument()
    client.chat.completions.create(
        model="gpt-4o-mini", messages=[...], weckr_user_id=user.pk, weckr_feature="chat"
    )

The SDK methods that spend tokens are replaced on their classes, so clients made
before and after ``instrument()`` are recorded alike, with the cap reservation,
stream handling and context attribution of ``wrap()``. Patched, sync and async:
OpenAI ``chat.completions.create`` / ``parse`` / ``stream`` and ``responses.create``
/ ``parse`` / ``stream``, Anthropic ``messages.create`` / ``parse`` / ``stream`` (also
under ``beta``), google-genai ``models.generate_content`` / ``generate_content_stream``
(and so its chats); ``with_raw_response`` and ``with_streaming_response`` views send
through these, except a view the code took before ``instrument()`` (the SDK keeps
the method it saw then).

The keyword arguments ``weckr_user_id``, ``weckr_plan``, ``weckr_feature``,
``weckr_agent`` and ``weckr_tags`` (or Tokenr's ``tokenr_team_id``,
``tokenr_feature``, ``tokenr_agent_id``, ``tokenr_tags``) attribute one call, win
over the attribution context, and are taken out before the provider sees the
request. A call made through ``wrap()`` or ``wk.chat`` reaches a patched method
from inside its own recording and is recorded once.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from weckr_core.calls import CallRecorder, default_recorder, request_attribution
from weckr_core.context import in_recorded_call, recording_call
from weckr_core.endpoints import (
    ANTHROPIC_MESSAGES,
    ANTHROPIC_STREAM_HELPER,
    GEMINI,
    GEMINI_STREAM,
    OPENAI_CHAT,
    OPENAI_CHAT_STREAM_HELPER,
    OPENAI_RESPONSES,
    OPENAI_RESPONSES_STREAM_HELPER,
    Endpoint,
)
from weckr_core.usage import NOT_REPORTED

# The header OpenAI's and Anthropic's SDKs send from ``with_raw_response`` ("true",
# or "raw") and ``with_streaming_response`` ("stream") views.
RAW_RESPONSE_HEADER = "X-Stainless-Raw-Response"
_RAW = ("true", "raw")


@dataclass(frozen=True, slots=True)
class _Target:
    module: str
    owner: str
    method: str
    endpoint: Endpoint
    helper: bool = False  # a ``.stream()`` helper: returns a context manager

    @property
    def is_async(self) -> bool:
        return self.owner.startswith("Async")


def _sync_and_async(
    module: str, owner: str, methods: Mapping[str, Endpoint], helpers: Mapping[str, Endpoint]
) -> list[_Target]:
    return [
        _Target(module, f"{prefix}{owner}", name, endpoint, helper)
        for prefix in ("", "Async")
        for found, helper in ((methods, False), (helpers, True))
        for name, endpoint in found.items()
    ]


_OPENAI_CHAT = {"create": OPENAI_CHAT, "parse": OPENAI_CHAT}
_OPENAI_CHAT_HELPERS = {"stream": OPENAI_CHAT_STREAM_HELPER}
_OPENAI_RESPONSES = {"create": OPENAI_RESPONSES, "parse": OPENAI_RESPONSES}
_OPENAI_RESPONSES_HELPERS = {"stream": OPENAI_RESPONSES_STREAM_HELPER}
_ANTHROPIC = {"create": ANTHROPIC_MESSAGES, "parse": ANTHROPIC_MESSAGES}
_ANTHROPIC_HELPERS = {"stream": ANTHROPIC_STREAM_HELPER}
_GEMINI = {"generate_content": GEMINI, "generate_content_stream": GEMINI_STREAM}

TARGETS: tuple[_Target, ...] = (
    *_sync_and_async(
        "openai.resources.chat.completions", "Completions", _OPENAI_CHAT, _OPENAI_CHAT_HELPERS
    ),
    *_sync_and_async(
        "openai.resources.responses", "Responses", _OPENAI_RESPONSES, _OPENAI_RESPONSES_HELPERS
    ),
    *_sync_and_async("anthropic.resources.messages", "Messages", _ANTHROPIC, _ANTHROPIC_HELPERS),
    *_sync_and_async(
        "anthropic.resources.beta.messages", "Messages", _ANTHROPIC, _ANTHROPIC_HELPERS
    ),
    *_sync_and_async("google.genai.models", "Models", _GEMINI, {}),
)

_lock = threading.Lock()
_originals: dict[tuple[type, str], Any] = {}
_recorder: CallRecorder | None = None


def instrument(*, recorder: CallRecorder | None = None) -> list[str]:
    """Patch the installed SDKs (again: nothing changes but the recorder). Records go
    to ``recorder`` (``Weckr.instrument()`` passes its own), by default to the process
    default backend. Returns the methods patched, as ``module.Class.method``."""
    global _recorder
    with _lock:
        _recorder = recorder or default_recorder()
        for target in TARGETS:
            owner = _owner(target)
            if owner is None or (owner, target.method) in _originals:
                continue
            original = owner.__dict__.get(target.method)
            if original is None:
                continue  # an SDK version without it
            _originals[(owner, target.method)] = original
            setattr(owner, target.method, _patched(original, target))
        return sorted(f"{o.__module__}.{o.__qualname__}.{name}" for o, name in _originals)


def uninstrument() -> None:
    """Put the SDKs' own methods back."""
    global _recorder
    with _lock:
        for (owner, name), original in _originals.items():
            setattr(owner, name, original)
        _originals.clear()
        _recorder = None


def is_instrumented() -> bool:
    return bool(_originals)


def _owner(target: _Target) -> type | None:
    try:
        module = importlib.import_module(target.module)
    except ImportError:
        return None  # that SDK is not installed
    owner = getattr(module, target.owner, None)
    return owner if isinstance(owner, type) else None


def _mode(kwargs: Mapping[str, Any]) -> str | None:
    headers = kwargs.get("extra_headers")
    return headers.get(RAW_RESPONSE_HEADER) if isinstance(headers, Mapping) else None


def _patched(original: Callable[..., Any], target: _Target) -> Callable[..., Any]:
    endpoint = target.endpoint
    raw = dataclasses.replace(endpoint, raw=True)

    if target.helper:

        def stream_helper(self: Any, *args: Any, **kwargs: Any) -> Any:
            recorder = _recorder  # read once: uninstrument() may run meanwhile
            if recorder is None:  # reached through a view kept since uninstrument()
                return original(self, *args, **kwargs)
            if in_recorded_call():
                return _as_is(original, self, args, kwargs)
            method = _unmarked(original, self)
            return recorder.call_stream_helper(method, endpoint, args, kwargs, target.is_async)

        return functools.wraps(original)(stream_helper)

    if target.is_async:

        async def acall(self: Any, *args: Any, **kwargs: Any) -> Any:
            recorder = _recorder
            if recorder is None:
                return await original(self, *args, **kwargs)
            if in_recorded_call():
                request_attribution(kwargs)  # taken out: the recording call has its own
                with recording_call(False):
                    return await original(self, *args, **kwargs)
            mode = _mode(kwargs)
            method = _aunmarked(original, self)
            if mode == "stream":
                return await _aunread_response(recorder, method, endpoint, args, kwargs)
            return await recorder.acall(method, raw if mode in _RAW else endpoint, args, kwargs)

        return functools.wraps(original)(acall)

    def call(self: Any, *args: Any, **kwargs: Any) -> Any:
        recorder = _recorder
        if recorder is None:
            return original(self, *args, **kwargs)
        if in_recorded_call():
            return _as_is(original, self, args, kwargs)
        mode = _mode(kwargs)
        method = _unmarked(original, self)
        if mode == "stream":
            return _unread_response(recorder, method, endpoint, args, kwargs)
        return recorder.call(method, raw if mode in _RAW else endpoint, args, kwargs)

    return functools.wraps(original)(call)


def _as_is(original: Callable[..., Any], self: Any, args: Any, kwargs: dict[str, Any]) -> Any:
    """The SDK method a recorded call (``wrap()``, ``wk.chat``) reached: run as is."""
    request_attribution(kwargs)  # taken out: the recording call has its own
    with recording_call(False):
        return original(self, *args, **kwargs)


def _unmarked(original: Callable[..., Any], self: Any) -> Callable[..., Any]:
    """``original`` bound to ``self``, run as a call of its own (see ``recording_call``)."""

    def method(*args: Any, **kwargs: Any) -> Any:
        with recording_call(False):
            return original(self, *args, **kwargs)

    return method


def _aunmarked(original: Callable[..., Any], self: Any) -> Callable[..., Any]:
    async def method(*args: Any, **kwargs: Any) -> Any:
        with recording_call(False):
            return await original(self, *args, **kwargs)

    return method


def _unread_response(
    recorder: CallRecorder,
    method: Callable[..., Any],
    endpoint: Endpoint,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> Any:
    """A ``with_streaming_response`` request: the caller reads the body, not Weckr, so
    the call is recorded (and capped) with its usage unreported; ``wrap()`` reads it."""
    call, _ = recorder.start_wrapped(endpoint, kwargs, request_attribution(kwargs))
    try:
        response = method(*args, **kwargs)
    except BaseException as error:
        call.fail(error)
        raise
    call.finish(NOT_REPORTED, None)
    return response


async def _aunread_response(
    recorder: CallRecorder,
    method: Callable[..., Any],
    endpoint: Endpoint,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> Any:
    attribution = request_attribution(kwargs)
    decision = await recorder.areserve_wrapped(endpoint, kwargs, attribution)
    call, _ = recorder.start_wrapped(endpoint, kwargs, attribution, decision=decision)
    try:
        response = await method(*args, **kwargs)
    except BaseException as error:
        call.fail(error)
        raise
    call.finish(NOT_REPORTED, None)
    return response
