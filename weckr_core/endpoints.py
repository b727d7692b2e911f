"""The provider methods that spend tokens, and how each one's usage is read.

``Endpoint`` describes one method (OpenAI chat completions, Anthropic messages, a
stream helper, a raw-response view...); ``ROUTES`` says, per provider, where those
methods sit on a client, for ``wrap()``'s proxy.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

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
from weckr_core.usage import usage_from_anthropic, usage_from_gemini, usage_from_openai


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


class Rewrap:
    """Marks client methods that return a new client (``with_options``, ``copy``)."""


REWRAP = Rewrap()


class Chats:
    """Marks google-genai's ``chats``: its chats get models that record."""


CHATS = Chats()

Route = Mapping[str, "Route | Endpoint | Rewrap | Chats"]

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
    "parse": ANTHROPIC_MESSAGES,  # structured outputs
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
