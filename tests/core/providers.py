"""Fake HTTP transports for the real provider SDKs, so their own parsing runs.

``FakeProvider`` answers every request with one canned JSON body or SSE stream and
keeps the requests it saw. The client builders plug it into the real OpenAI,
Anthropic and google-genai clients (sync and async) through ``MockTransport``.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import anthropic
import httpx
import httpx2
import openai
from google import genai
from google.genai import types as genai_types

JSON = dict[str, Any]


class FakeProvider:
    def __init__(
        self,
        body: JSON | None = None,
        *,
        events: Iterable[tuple[str | None, JSON | str]] | None = None,
        raw: bytes | None = None,
        status: int = 200,
        delay: float = 0.0,
    ) -> None:
        self.body = body or {}
        self.events = list(events) if events is not None else None
        self.raw = raw
        self.status = status
        self.delay = delay  # seconds each answer takes, like a real provider
        self.requests: list[tuple[str, JSON]] = []

    @property
    def hits(self) -> int:
        return len(self.requests)

    @property
    def last_body(self) -> JSON:
        return self.requests[-1][1]

    def _answer(self, url: str, content: bytes) -> tuple[int, dict[str, str], bytes]:
        self.requests.append((url, json.loads(content) if content else {}))
        if self.delay:
            time.sleep(self.delay)
        if self.raw is not None:
            return self.status, {"content-type": "application/json"}, self.raw
        if self.events is None:
            return self.status, {"content-type": "application/json"}, json.dumps(self.body).encode()
        return self.status, {"content-type": "text/event-stream"}, sse(self.events)

    def httpx_handler(self, request: httpx.Request) -> httpx.Response:
        status, headers, content = self._answer(str(request.url), request.read())
        return httpx.Response(status, headers=headers, content=content)

    def httpx2_handler(self, request: httpx2.Request) -> httpx2.Response:
        status, headers, content = self._answer(str(request.url), request.read())
        return httpx2.Response(status, headers=headers, content=content)


def sse(events: Iterable[tuple[str | None, JSON | str]]) -> bytes:
    """A server-sent-events body; ``None`` as the event name leaves the line out."""
    out = []
    for name, data in events:
        text = data if isinstance(data, str) else json.dumps(data)
        out.append((f"event: {name}\n" if name else "") + f"data: {text}\n\n")
    return "".join(out).encode()


@contextmanager
def loopback(fake: FakeProvider) -> Iterator[str]:
    """Serve ``fake`` on a loopback port (for SDKs that do not use httpx); yields its URL."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            content = self.rfile.read(int(self.headers.get("content-length") or 0))
            status, headers, body = fake._answer(self.path, content)
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


# -- clients -----------------------------------------------------------------------


def openai_client(fake: FakeProvider) -> openai.OpenAI:
    return openai.OpenAI(
        api_key="test",
        base_url="http://fake/v1",
        max_retries=0,
        http_client=httpx.Client(transport=httpx.MockTransport(fake.httpx_handler)),
    )


def async_openai_client(fake: FakeProvider) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(
        api_key="test",
        base_url="http://fake/v1",
        max_retries=0,
        http_client=httpx.AsyncClient(transport=httpx.MockTransport(fake.httpx_handler)),
    )


def anthropic_client(fake: FakeProvider) -> anthropic.Anthropic:
    return anthropic.Anthropic(
        api_key="test",
        base_url="http://fake",
        max_retries=0,
        http_client=httpx2.Client(transport=httpx2.MockTransport(fake.httpx2_handler)),
    )


def async_anthropic_client(fake: FakeProvider) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(
        api_key="test",
        base_url="http://fake",
        max_retries=0,
        http_client=httpx2.AsyncClient(transport=httpx2.MockTransport(fake.httpx2_handler)),
    )


def genai_client(fake: FakeProvider) -> genai.Client:
    transport = httpx.MockTransport(fake.httpx_handler)
    return genai.Client(
        api_key="test",
        http_options=genai_types.HttpOptions(
            base_url="http://fake",
            retry_options=genai_types.HttpRetryOptions(attempts=1),
            httpx_client=httpx.Client(transport=transport),
            httpx_async_client=httpx.AsyncClient(transport=transport),
        ),
    )


# -- OpenAI bodies -----------------------------------------------------------------


def openai_usage(prompt: int, completion: int, cached: int = 0, reasoning: int = 0) -> JSON:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached},
        "completion_tokens_details": {"reasoning_tokens": reasoning},
    }


def openai_chat_body(model: str, usage: JSON | None) -> JSON:
    body: JSON = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "ok"},
                "finish_reason": "stop",
            }
        ],
    }
    if usage is not None:
        body["usage"] = usage
    return body


def openai_chat_stream(model: str, usage: JSON | None) -> list[tuple[str | None, JSON | str]]:
    def chunk(choices: list[JSON], chunk_usage: JSON | None = None) -> JSON:
        return {
            "id": "chatcmpl-1",
            "object": "chat.completion.chunk",
            "created": 1_700_000_000,
            "model": model,
            "choices": choices,
            "usage": chunk_usage,
        }

    events: list[tuple[str | None, JSON | str]] = [
        (None, chunk([{"index": 0, "delta": {"role": "assistant", "content": "o"}}])),
        (None, chunk([{"index": 0, "delta": {"content": "k"}, "finish_reason": "stop"}])),
    ]
    if usage is not None:
        # What OpenAI sends with include_usage: a last chunk with empty choices.
        events.append((None, chunk([], usage)))
    events.append((None, "[DONE]"))
    return events


def openai_responses_usage(
    input_tokens: int, output_tokens: int, cached: int = 0, reasoning: int = 0
) -> JSON:
    return {
        "input_tokens": input_tokens,
        "input_tokens_details": {"cached_tokens": cached},
        "output_tokens": output_tokens,
        "output_tokens_details": {"reasoning_tokens": reasoning},
        "total_tokens": input_tokens + output_tokens,
    }


def openai_response_body(model: str, usage: JSON | None, status: str = "completed") -> JSON:
    return {
        "id": "resp_1",
        "object": "response",
        "created_at": 1_700_000_000,
        "model": model,
        "status": status,
        "output": [
            {
                "type": "message",
                "id": "msg_1",
                "status": "completed",
                "role": "assistant",
                "content": [{"type": "output_text", "text": "ok", "annotations": []}],
            }
        ],
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": [],
        "usage": usage,
    }


def openai_responses_stream(model: str, usage: JSON | None) -> list[tuple[str | None, JSON | str]]:
    """The events of a streamed Responses API call, in the order OpenAI sends them."""
    created = openai_response_body(model, None, status="in_progress")
    created["output"] = []
    item = {"type": "message", "id": "msg_1", "status": "in_progress", "role": "assistant"}
    part_at = {"item_id": "msg_1", "output_index": 0, "content_index": 0}
    bodies: list[JSON] = [
        {"type": "response.created", "response": created},
        {"type": "response.output_item.added", "output_index": 0, "item": {**item, "content": []}},
        {
            "type": "response.content_part.added",
            **part_at,
            "part": {"type": "output_text", "text": "", "annotations": []},
        },
        {"type": "response.output_text.delta", **part_at, "delta": "ok", "logprobs": []},
        {"type": "response.completed", "response": openai_response_body(model, usage)},
    ]
    return [
        (body["type"], {**body, "sequence_number": number}) for number, body in enumerate(bodies)
    ]


# -- Anthropic bodies --------------------------------------------------------------


def anthropic_usage(
    input_tokens: int, output_tokens: int, cache_read: int = 0, cache_write: int = 0
) -> JSON:
    return {
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "cache_read_input_tokens": cache_read,
        "cache_creation_input_tokens": cache_write,
    }


def anthropic_message_body(model: str, usage: JSON) -> JSON:
    return {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [{"type": "text", "text": "ok"}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": usage,
    }


def anthropic_stream(
    model: str, start_usage: JSON, output_tokens: int
) -> list[tuple[str | None, JSON | str]]:
    message = anthropic_message_body(model, {**start_usage, "output_tokens": 1})
    message["content"] = []
    message["stop_reason"] = None

    def event(name: str, data: JSON) -> tuple[str, JSON]:
        return name, {"type": name, **data}

    return [
        event("message_start", {"message": message}),
        event(
            "content_block_start",
            {"index": 0, "content_block": {"type": "text", "text": ""}},
        ),
        event(
            "content_block_delta",
            {"index": 0, "delta": {"type": "text_delta", "text": "ok"}},
        ),
        event("content_block_stop", {"index": 0}),
        event(
            "message_delta",
            {
                "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                "usage": {"output_tokens": output_tokens},
            },
        ),
        event("message_stop", {}),
    ]


# -- Gemini bodies -----------------------------------------------------------------


def gemini_usage(prompt: int, candidates: int, cached: int = 0, thoughts: int = 0) -> JSON:
    usage: JSON = {
        "promptTokenCount": prompt,
        "candidatesTokenCount": candidates,
        "totalTokenCount": prompt + candidates + thoughts,
    }
    if cached:
        usage["cachedContentTokenCount"] = cached
    if thoughts:
        usage["thoughtsTokenCount"] = thoughts
    return usage


def gemini_body(model: str, usage: JSON | None, text: str = "ok") -> JSON:
    body: JSON = {
        "candidates": [{"content": {"role": "model", "parts": [{"text": text}]}, "index": 0}],
        "modelVersion": model,
    }
    if usage is not None:
        body["usageMetadata"] = usage
    return body


def gemini_stream(model: str, usage: JSON | None) -> list[tuple[str | None, JSON | str]]:
    first = gemini_body(
        model, {"promptTokenCount": usage["promptTokenCount"]} if usage else None, "o"
    )
    last = gemini_body(model, usage, "k")
    last["candidates"][0]["finishReason"] = "STOP"
    return [(None, first), (None, last)]
