"""Usage of streamed LLM calls, recorded when the stream ends.

A provider stream is handed back to the caller inside a thin proxy that looks at
each chunk as it passes, keeps the usage the provider reports, and records the
call exactly once: when the stream is exhausted, closed (``close()`` or leaving a
``with`` block), fails, or is garbage-collected half-read. A stream that ended
without any usage is recorded with ``usage_reported=False``, never as 0 tokens.

Where each provider reports streaming usage:

- OpenAI Chat Completions: a last chunk with empty ``choices`` and ``usage``, sent
  only with ``stream_options={"include_usage": True}`` (added for you when unset).
- OpenAI Responses API: ``response.completed`` (or ``.incomplete`` / ``.failed``).
- Anthropic Messages: ``message_start`` (input and cache) plus ``message_delta``
  (cumulative output).
- Gemini: ``usage_metadata`` of the last chunk that has one.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import AsyncIterator, Callable, Iterator
from types import TracebackType
from typing import Any, Generic, TypeVar

from weckr_core.context import recording_call
from weckr_core.records import TokenUsage
from weckr_core.usage import (
    NOT_REPORTED,
    field,
    usage_from_anthropic,
    usage_from_gemini,
    usage_from_openai,
)

logger = logging.getLogger("weckr")

T = TypeVar("T")

OnStreamEnd = Callable[["StreamUsage", BaseException | None], None]


def plain_fields(obj: Any) -> Any:
    """A pydantic model's values as a dict, anything else as is.

    The normalisers try several names per value (Chat Completions and Responses API
    spellings); a missing attribute of a pydantic model costs microseconds (it builds
    an AttributeError), a missing dict key nanoseconds.
    """
    values = getattr(obj, "__dict__", None)
    if values is None or not hasattr(type(obj), "__pydantic_fields__"):
        return obj
    extra = getattr(obj, "__pydantic_extra__", None)
    return {**values, **extra} if extra else values


class StreamUsage:
    """Collects the usage and model name a provider reports in its stream."""

    __slots__ = ("model", "usage")

    def __init__(self) -> None:
        self.usage: TokenUsage = NOT_REPORTED
        self.model: str | None = None

    def observe(self, item: Any) -> None:
        raise NotImplementedError


class OpenAIChatStreamUsage(StreamUsage):
    __slots__ = ()

    def observe(self, item: Any) -> None:
        usage = getattr(item, "usage", None)
        if usage is not None:
            self.usage = usage_from_openai(plain_fields(usage))
            self.model = getattr(item, "model", None) or self.model


_RESPONSES_FINAL_EVENTS = frozenset(
    {"response.completed", "response.incomplete", "response.failed"}
)


class OpenAIResponsesStreamUsage(StreamUsage):
    __slots__ = ()

    def observe(self, item: Any) -> None:
        if getattr(item, "type", None) not in _RESPONSES_FINAL_EVENTS:
            return
        response = getattr(item, "response", None)
        self.model = getattr(response, "model", None) or self.model
        usage = getattr(response, "usage", None)
        if usage is not None:
            self.usage = usage_from_openai(plain_fields(usage))


_ANTHROPIC_USAGE_FIELDS = (
    "input_tokens",
    "output_tokens",
    "cache_read_input_tokens",
    "cache_creation_input_tokens",
)


class AnthropicStreamUsage(StreamUsage):
    """``message_start`` carries input and cache counts; each ``message_delta``
    carries cumulative counts that replace the earlier ones."""

    __slots__ = ("_counts",)

    def __init__(self) -> None:
        super().__init__()
        self._counts: dict[str, Any] = {}

    def observe(self, item: Any) -> None:
        kind = getattr(item, "type", None)
        if kind == "message_start":
            message = getattr(item, "message", None)
            self.model = getattr(message, "model", None) or self.model
            self._merge(getattr(message, "usage", None))
        elif kind == "message_delta":
            self._merge(getattr(item, "usage", None))

    def _merge(self, usage: Any) -> None:
        if usage is None:
            return
        for name in _ANTHROPIC_USAGE_FIELDS:
            value = field(usage, name)
            if value is not None:
                self._counts[name] = value
        self.usage = usage_from_anthropic(self._counts)


class GeminiStreamUsage(StreamUsage):
    __slots__ = ()

    def observe(self, item: Any) -> None:
        meta = getattr(item, "usage_metadata", None)
        if meta is not None:
            usage = usage_from_gemini(meta)
            if usage.reported:
                self.usage = usage
        self.model = getattr(item, "model_version", None) or self.model


class _StreamBase:
    __slots__ = ("__wrapped__", "_done", "_on_end", "_usage")

    def __init__(self, stream: Any, usage: StreamUsage, on_end: OnStreamEnd) -> None:
        self.__wrapped__ = stream
        self._usage = usage
        self._on_end = on_end
        self._done = False

    def _observe(self, item: Any) -> None:
        try:
            self._usage.observe(item)
        except Exception:
            # A chunk we cannot read must not break the caller's stream.
            logger.exception("Weckr: could not read usage from a stream chunk")

    def _end(self, error: BaseException | None) -> None:
        if self._done:
            return
        self._done = True
        self._on_end(self._usage, error)

    def __getattr__(self, name: str) -> Any:
        if name in _StreamBase.__slots__:
            raise AttributeError(name)
        return getattr(self.__wrapped__, name)

    def __repr__(self) -> str:
        return f"<weckr recorded stream of {self.__wrapped__!r}>"

    def __del__(self) -> None:
        # A stream dropped half-read (``break`` without ``close()``) is still recorded.
        try:
            if not self._done:
                self._end(None)
        except Exception:
            pass


class RecordedStream(_StreamBase, Generic[T]):
    """A sync provider stream that records its usage when it ends."""

    __slots__ = ("_iterator",)

    def __init__(self, stream: Any, usage: StreamUsage, on_end: OnStreamEnd) -> None:
        super().__init__(stream, usage, on_end)
        self._iterator: Iterator[T] = iter(stream)

    def __iter__(self) -> Iterator[T]:
        return self

    def __next__(self) -> T:
        try:
            item = next(self._iterator)
        except StopIteration:
            self._end(None)
            raise
        except BaseException as error:
            self._end(error)
            raise
        self._observe(item)
        return item

    def close(self) -> None:
        try:
            close = getattr(self.__wrapped__, "close", None)
            if close is not None:
                close()
        finally:
            self._end(None)

    def __enter__(self) -> RecordedStream[T]:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


class AsyncRecordedStream(_StreamBase, Generic[T]):
    """An async provider stream that records its usage when it ends."""

    __slots__ = ("_iterator",)

    def __init__(self, stream: Any, usage: StreamUsage, on_end: OnStreamEnd) -> None:
        super().__init__(stream, usage, on_end)
        self._iterator: AsyncIterator[T] = stream.__aiter__()

    def __aiter__(self) -> AsyncIterator[T]:
        return self

    async def __anext__(self) -> T:
        try:
            item = await self._iterator.__anext__()
        except StopAsyncIteration:
            self._end(None)
            raise
        except BaseException as error:
            self._end(error)
            raise
        self._observe(item)
        return item

    async def close(self) -> None:
        try:
            close = getattr(self.__wrapped__, "aclose", None) or getattr(
                self.__wrapped__, "close", None
            )
            if close is not None:
                result = close()
                if inspect.isawaitable(result):
                    await result
        finally:
            self._end(None)

    async def aclose(self) -> None:
        await self.close()

    async def __aenter__(self) -> AsyncRecordedStream[T]:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()


FinalUsage = Callable[[Any], StreamUsage]


def anthropic_final_usage(stream: Any) -> StreamUsage:
    """Usage of an Anthropic ``MessageStream`` from its accumulated message."""
    usage = AnthropicStreamUsage()
    try:
        snapshot = stream.current_message_snapshot
    except AssertionError:  # nothing read yet: no message
        return usage
    usage.model = getattr(snapshot, "model", None)
    usage._merge(getattr(snapshot, "usage", None))
    return usage


def openai_chat_final_usage(stream: Any) -> StreamUsage:
    """Usage of an OpenAI ``ChatCompletionStream`` from its accumulated completion
    (the usage chunk is folded into it)."""
    usage = OpenAIChatStreamUsage()
    try:
        snapshot = stream.current_completion_snapshot
    except AssertionError:
        return usage
    usage.observe(snapshot)
    return usage


def openai_responses_final_usage(stream: Any) -> StreamUsage:
    """Usage of an OpenAI ``ResponseStream``. The SDK keeps the ``response.completed``
    response on its (private) state; without it the call is recorded as unreported."""
    usage = OpenAIResponsesStreamUsage()
    response = getattr(getattr(stream, "_state", None), "_completed_response", None)
    if response is not None:
        usage.model = getattr(response, "model", None)
        if getattr(response, "usage", None) is not None:
            usage.usage = usage_from_openai(plain_fields(response.usage))
    return usage


class RecordedStreamManager:
    """The SDKs' ``.stream(...)`` helpers (Anthropic ``messages.stream``, OpenAI
    ``chat.completions.stream`` and ``responses.stream``), recorded on exit.

    Their stream objects accumulate the response themselves (also when read through
    ``text_stream``, ``until_done()`` or ``get_final_...()``), so usage is read from
    that accumulation when the ``with`` / ``async with`` block exits. The stream
    object handed to the block is the SDK's own.
    """

    __slots__ = ("__wrapped__", "_done", "_final_usage", "_on_end", "_stream")

    def __init__(self, manager: Any, final_usage: FinalUsage, on_end: OnStreamEnd) -> None:
        self.__wrapped__ = manager
        self._final_usage = final_usage
        self._on_end = on_end
        self._stream: Any = None
        self._done = False

    def __enter__(self) -> Any:
        try:
            with recording_call():  # the SDK's request, made here, is this call's
                self._stream = self.__wrapped__.__enter__()
        except BaseException as error:
            self._finish(error)
            raise
        return self._stream

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        try:
            self.__wrapped__.__exit__(exc_type, exc, traceback)
        finally:
            self._finish(exc)

    async def __aenter__(self) -> Any:
        try:
            with recording_call():
                self._stream = await self.__wrapped__.__aenter__()
        except BaseException as error:
            self._finish(error)
            raise
        return self._stream

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        try:
            await self.__wrapped__.__aexit__(exc_type, exc, traceback)
        finally:
            self._finish(exc)

    def _finish(self, error: BaseException | None) -> None:
        if self._done:
            return
        self._done = True
        usage: StreamUsage = StreamUsage()
        if self._stream is not None:
            try:
                usage = self._final_usage(self._stream)
            except Exception:
                logger.exception("Weckr: could not read usage from a finished stream")
        # An error inside the block after a complete response is the caller's own.
        self._on_end(usage, None if usage.usage.reported else error)

    def __getattr__(self, name: str) -> Any:
        if name in RecordedStreamManager.__slots__:
            raise AttributeError(name)
        return getattr(self.__wrapped__, name)
