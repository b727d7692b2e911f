"""Streamed calls are recorded once, when the stream ends, with the usage the provider sent."""

from __future__ import annotations

import gc
import json
from typing import Any

import openai
import pytest

from tests.core import providers as p
from weckr_core import MemoryBackend, UsageRecord, Weckr, attribute

MESSAGES: Any = [{"role": "user", "content": "Hi"}]


def setup(
    events: list[tuple[str | None, Any]],
) -> tuple[p.FakeProvider, MemoryBackend, Weckr]:
    backend = MemoryBackend()
    return p.FakeProvider(events=events), backend, Weckr(backend=backend)


def only_record(backend: MemoryBackend) -> UsageRecord:
    records = backend.records
    assert len(records) == 1
    return records[0]


# -- OpenAI Chat Completions ---------------------------------------------------------


def test_openai_stream_asks_for_usage_and_records_it_at_the_end() -> None:
    fake, backend, wk = setup(p.openai_chat_stream("gpt-4o-mini", p.openai_usage(120, 30, 64, 8)))
    client = wk.wrap(p.openai_client(fake))

    with attribute(user_id="u1"):
        stream = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True)
    first = next(stream)
    assert backend.records == []  # nothing recorded mid-stream
    chunks = [first, *stream]

    assert fake.last_body["stream_options"] == {"include_usage": True}
    # OpenAI's usage chunk comes last, with empty choices; it is passed on.
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    record = only_record(backend)
    assert (record.user_id, record.input_tokens, record.cached_input_tokens) == ("u1", 120, 64)
    assert (record.output_tokens, record.reasoning_tokens, record.usage_reported) == (30, 8, True)


def test_callers_stream_options_are_kept_and_completed() -> None:
    fake, backend, wk = setup(p.openai_chat_stream("gpt-4o-mini", p.openai_usage(12, 3)))
    client = wk.wrap(p.openai_client(fake))

    list(
        client.chat.completions.create(
            model="gpt-4o-mini",
            messages=MESSAGES,
            stream=True,
            stream_options={"include_obfuscation": False},
        )
    )

    assert fake.last_body["stream_options"] == {"include_obfuscation": False, "include_usage": True}
    assert only_record(backend).input_tokens == 12


def test_a_stream_without_usage_is_recorded_as_not_reported() -> None:
    fake, backend, wk = setup(p.openai_chat_stream("gpt-4o-mini", None))
    client = wk.wrap(p.openai_client(fake))

    list(
        client.chat.completions.create(
            model="gpt-4o-mini",
            messages=MESSAGES,
            stream=True,
            stream_options={"include_usage": False},
        )
    )

    assert fake.last_body["stream_options"] == {"include_usage": False}
    record = only_record(backend)
    assert record.status == "ok" and not record.usage_reported and record.total_tokens == 0


def test_chat_with_stream_true_returns_a_recorded_stream() -> None:
    fake, backend, wk = setup(p.openai_chat_stream("gpt-4o-mini", p.openai_usage(20, 4)))

    stream = wk.chat(
        p.openai_client(fake),
        {"model": "gpt-4o-mini", "messages": MESSAGES, "stream": True, "user_id": "u2"},
    )
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)

    assert text == "ok"
    assert fake.last_body["stream_options"] == {"include_usage": True}
    record = only_record(backend)
    assert (record.source, record.user_id, record.input_tokens) == ("sdk", "u2", 20)


# -- ending a stream -------------------------------------------------------------------


def test_closing_early_records_once_without_usage() -> None:
    fake, backend, wk = setup(p.openai_chat_stream("gpt-4o-mini", p.openai_usage(20, 4)))
    client = wk.wrap(p.openai_client(fake))

    stream = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True)
    next(stream)
    stream.close()
    stream.close()

    record = only_record(backend)
    assert not record.usage_reported and record.status == "ok"


def test_context_manager_exit_after_exhaustion_records_once_with_usage() -> None:
    fake, backend, wk = setup(p.openai_chat_stream("gpt-4o-mini", p.openai_usage(20, 4)))
    client = wk.wrap(p.openai_client(fake))

    with client.chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES, stream=True
    ) as stream:
        assert stream.response.status_code == 200  # SDK attributes pass through
        for _ in stream:
            pass

    assert only_record(backend).input_tokens == 20


def test_an_abandoned_stream_is_still_recorded() -> None:
    fake, backend, wk = setup(p.openai_chat_stream("gpt-4o-mini", p.openai_usage(20, 4)))
    client = wk.wrap(p.openai_client(fake))

    def read_one_chunk() -> None:
        for _ in client.chat.completions.create(
            model="gpt-4o-mini", messages=MESSAGES, stream=True
        ):
            break

    read_one_chunk()
    gc.collect()

    assert not only_record(backend).usage_reported


def test_an_error_mid_stream_is_an_error_row_with_the_usage_seen_so_far() -> None:
    events = p.anthropic_stream("claude-haiku-4-5", p.anthropic_usage(40, 0, 10), 9)[:3]
    events.append(
        ("error", {"type": "error", "error": {"type": "overloaded_error", "message": "x"}})
    )
    fake, backend, wk = setup(events)
    client = wk.wrap(p.anthropic_client(fake))

    stream = client.messages.create(
        model="claude-haiku-4-5", max_tokens=5, messages=MESSAGES, stream=True
    )
    with pytest.raises(Exception) as raised:
        list(stream)

    record = only_record(backend)
    assert (record.status, record.error_type) == ("error", type(raised.value).__name__)
    assert record.input_tokens == 40 + 10 and record.usage_reported


# -- other providers -------------------------------------------------------------------


def test_responses_api_stream_usage_comes_from_response_completed() -> None:
    usage = p.openai_responses_usage(300, 90, cached=128, reasoning=60)
    fake, backend, wk = setup(p.openai_responses_stream("gpt-5-2025-08-07", usage))
    client = wk.wrap(p.openai_client(fake))

    events = list(client.responses.create(model="gpt-5", input="Hi", stream=True))

    assert events[-1].type == "response.completed"
    assert "stream_options" not in fake.last_body
    record = only_record(backend)
    assert (record.model, record.input_tokens, record.cached_input_tokens) == (
        "gpt-5-2025-08-07",
        300,
        128,
    )
    assert (record.output_tokens, record.reasoning_tokens) == (90, 60)


def test_anthropic_stream_combines_message_start_and_message_delta() -> None:
    uncached, cache_read, cache_write, output = 25, 1000, 200, 77
    fake, backend, wk = setup(
        p.anthropic_stream(
            "claude-haiku-4-5", p.anthropic_usage(uncached, 1, cache_read, cache_write), output
        )
    )

    stream = wk.chat(
        p.anthropic_client(fake),
        {"model": "claude-haiku-4-5", "max_tokens": 100, "messages": MESSAGES, "stream": True},
    )
    list(stream)

    record = only_record(backend)
    assert (record.input_tokens, record.cached_input_tokens) == (uncached + cache_read, cache_read)
    assert (record.cache_creation_tokens, record.output_tokens) == (cache_write, output)


def test_anthropic_messages_stream_helper_is_recorded_on_exit() -> None:
    fake, backend, wk = setup(
        p.anthropic_stream("claude-haiku-4-5", p.anthropic_usage(30, 1, 5), 12)
    )
    client = wk.wrap(p.anthropic_client(fake))

    with attribute(user_id="u3"):
        manager = client.messages.stream(model="claude-haiku-4-5", max_tokens=50, messages=MESSAGES)
    with manager as stream:
        text = "".join(stream.text_stream)
        assert backend.records == []

    assert text == "ok"
    record = only_record(backend)
    assert (record.user_id, record.input_tokens, record.output_tokens) == ("u3", 35, 12)


async def test_async_anthropic_messages_stream_helper() -> None:
    fake, backend, wk = setup(p.anthropic_stream("claude-haiku-4-5", p.anthropic_usage(30, 1), 12))
    client = wk.wrap(p.async_anthropic_client(fake))

    async with client.messages.stream(
        model="claude-haiku-4-5", max_tokens=50, messages=MESSAGES
    ) as stream:
        message = await stream.get_final_message()

    assert message.usage.output_tokens == 12
    assert only_record(backend).output_tokens == 12


def test_openai_chat_completions_stream_helper_is_recorded_on_exit() -> None:
    fake, backend, wk = setup(p.openai_chat_stream("gpt-4o-mini", p.openai_usage(44, 6, 32)))
    client = wk.wrap(p.openai_client(fake))

    with (
        attribute(user_id="u4"),
        client.chat.completions.stream(model="gpt-4o-mini", messages=MESSAGES) as stream,
    ):
        completion = stream.get_final_completion()

    assert fake.last_body["stream_options"] == {"include_usage": True}
    assert completion.usage is not None
    record = only_record(backend)
    assert (record.user_id, record.input_tokens, record.cached_input_tokens) == ("u4", 44, 32)
    assert record.output_tokens == 6


def test_openai_responses_stream_helper_is_recorded_on_exit() -> None:
    usage = p.openai_responses_usage(70, 20, cached=64, reasoning=12)
    fake, backend, wk = setup(p.openai_responses_stream("gpt-5-2025-08-07", usage))
    client = wk.wrap(p.openai_client(fake))

    with client.responses.stream(model="gpt-5", input="Hi") as stream:
        for _ in stream:
            pass

    record = only_record(backend)
    assert (record.model, record.input_tokens, record.cached_input_tokens) == (
        "gpt-5-2025-08-07",
        70,
        64,
    )
    assert (record.output_tokens, record.reasoning_tokens) == (20, 12)


async def test_async_openai_chat_completions_stream_helper() -> None:
    fake, backend, wk = setup(p.openai_chat_stream("gpt-4o-mini", p.openai_usage(9, 2)))
    client = wk.wrap(p.async_openai_client(fake))

    async with client.chat.completions.stream(model="gpt-4o-mini", messages=MESSAGES) as stream:
        async for _ in stream:
            pass

    assert only_record(backend).input_tokens == 9


def test_a_stream_helper_left_unread_is_recorded_as_not_reported() -> None:
    fake, backend, wk = setup(p.anthropic_stream("claude-haiku-4-5", p.anthropic_usage(30, 1), 12))
    client = wk.wrap(p.anthropic_client(fake))

    with client.messages.stream(model="claude-haiku-4-5", max_tokens=50, messages=MESSAGES):
        pass

    record = only_record(backend)
    assert record.status == "ok" and not record.usage_reported


def test_gemini_stream_uses_the_last_chunks_usage() -> None:
    prompt, candidates, thoughts = 64, 16, 48
    fake, backend, wk = setup(
        p.gemini_stream("gemini-2.5-flash", p.gemini_usage(prompt, candidates, thoughts=thoughts))
    )
    client = wk.wrap(p.genai_client(fake))

    chunks = list(client.models.generate_content_stream(model="gemini-2.5-flash", contents="Hi"))

    assert len(chunks) == 2
    assert "streamGenerateContent" in fake.requests[-1][0]
    record = only_record(backend)
    assert (record.input_tokens, record.output_tokens, record.reasoning_tokens) == (
        prompt,
        candidates + thoughts,
        thoughts,
    )


def test_gemini_chat_with_stream_true_uses_generate_content_stream() -> None:
    fake, backend, wk = setup(p.gemini_stream("gemini-2.5-flash", p.gemini_usage(10, 2)))

    list(
        wk.chat(
            p.genai_client(fake),
            {"model": "gemini-2.5-flash", "messages": MESSAGES, "stream": True},
        )
    )

    assert "streamGenerateContent" in fake.requests[-1][0]
    assert only_record(backend).input_tokens == 10


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_legacy_gemini_stream_through_chat() -> None:
    import google.generativeai as legacy_genai

    chunks = [
        p.gemini_body("gemini-1.5-flash", {"promptTokenCount": 10}),
        p.gemini_body("gemini-1.5-flash", p.gemini_usage(10, 4)),
    ]
    backend = MemoryBackend()
    fake = p.FakeProvider(raw=json.dumps(chunks).encode())
    with p.loopback(fake) as url:
        legacy_genai.configure(  # type: ignore[attr-defined]
            api_key="test", transport="rest", client_options={"api_endpoint": url}
        )
        stream = Weckr(backend=backend).chat(
            legacy_genai, {"model": "gemini-1.5-flash", "messages": MESSAGES, "stream": True}
        )
        received = list(stream)

    assert len(received) == len(chunks)
    assert "streamGenerateContent" in fake.requests[-1][0]
    record = only_record(backend)
    assert (record.input_tokens, record.output_tokens) == (10, 4)


# -- async streams -----------------------------------------------------------------------


async def test_async_openai_stream_recorded_on_exhaustion() -> None:
    fake, backend, wk = setup(p.openai_chat_stream("gpt-4o-mini", p.openai_usage(21, 5)))
    client = wk.wrap(p.async_openai_client(fake))

    stream = await client.chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES, stream=True
    )
    async with stream:
        chunks = [chunk async for chunk in stream]

    assert chunks[-1].usage is not None
    assert only_record(backend).input_tokens == 21


async def test_async_stream_closed_early_is_recorded_once() -> None:
    fake, backend, wk = setup(p.openai_chat_stream("gpt-4o-mini", p.openai_usage(21, 5)))
    client = wk.wrap(p.async_openai_client(fake))

    stream = await client.chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES, stream=True
    )
    await stream.__anext__()
    await stream.close()

    assert not only_record(backend).usage_reported


async def test_async_gemini_stream_and_achat_stream() -> None:
    fake, backend, wk = setup(p.gemini_stream("gemini-2.5-flash", p.gemini_usage(40, 8)))
    genai_client = p.genai_client(fake)
    client = wk.wrap(genai_client)

    stream = await client.aio.models.generate_content_stream(
        model="gemini-2.5-flash", contents="Hi"
    )
    async for _ in stream:
        pass
    async for _ in await wk.achat(
        genai_client, {"model": "gemini-2.5-flash", "messages": MESSAGES, "stream": True}
    ):
        pass

    assert [(r.source, r.input_tokens) for r in backend.records] == [("wrap", 40), ("sdk", 40)]


async def test_async_openai_error_before_the_stream_is_an_error_row() -> None:
    backend = MemoryBackend()
    fake = p.FakeProvider(
        {"error": {"message": "bad", "type": "invalid_request_error"}}, status=400
    )
    client = Weckr(backend=backend).wrap(p.async_openai_client(fake))

    with pytest.raises(openai.BadRequestError):
        await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True)

    assert only_record(backend).error_type == "BadRequestError"
