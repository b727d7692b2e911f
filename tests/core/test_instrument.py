# The SDKs' type stubs do not know the keyword arguments instrument() takes out of a
# request; these tests call them as a user's code does.
# mypy: disable-error-code="call-overload,call-arg"
"""``instrument()``: the real SDK clients, patched on their classes, through fake
HTTP transports; attributed by keyword arguments or the context, capped before the
provider is called, recorded once even through ``wrap()`` and ``wk.chat``."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import openai
import pytest

from tests.core import providers as p
from weckr_core import (
    MemoryBackend,
    UsageRecord,
    Weckr,
    WeckrCapError,
    attribute,
    instrument,
    is_instrumented,
    uninstrument,
)

MESSAGES: Any = [{"role": "user", "content": "Hi"}]


@pytest.fixture
def backend() -> Iterator[MemoryBackend]:
    """Every call in the process recorded into one memory backend, until the test ends."""
    backend = MemoryBackend()
    Weckr(backend=backend, plans={"free": 0, "pro": 29}).instrument()
    yield backend
    uninstrument()


def only_record(backend: MemoryBackend) -> UsageRecord:
    records = backend.records
    assert len(records) == 1, records
    return records[0]


def test_a_client_made_before_instrument_is_recorded_and_attributed_by_keywords() -> None:
    fake = p.FakeProvider(p.openai_chat_body("gpt-4o-mini", p.openai_usage(50, 10, 32)))
    client = p.openai_client(fake)  # made before
    backend = MemoryBackend()
    patched = Weckr(backend=backend, plans={"pro": 29}).instrument()
    try:
        assert "openai.resources.chat.completions.completions.Completions.create" in patched
        with attribute(user_id="context-user", plan="pro", tags=["web"]):
            response = client.chat.completions.create(
                model="gpt-4o-mini",
                messages=MESSAGES,
                weckr_user_id=42,
                weckr_feature="summaries",
                weckr_agent="writer",
                weckr_tags=["beta"],
            )
    finally:
        uninstrument()

    assert response.choices[0].message.content == "ok"
    record = only_record(backend)
    assert (record.user_id, record.plan, record.feature, record.agent) == (
        "42",
        "pro",
        "summaries",
        "writer",
    )
    assert record.tags == ("web", "beta")
    assert (record.input_tokens, record.cached_input_tokens, record.output_tokens) == (50, 32, 10)
    assert (record.source, record.provider) == ("wrap", "openai")
    # The provider never sees our keyword arguments.
    assert not any(key.startswith("weckr") for key in fake.last_body)


def test_tokenr_keyword_arguments_attribute_the_call_for_a_one_line_move(
    backend: MemoryBackend,
) -> None:
    fake = p.FakeProvider(p.anthropic_message_body("claude-haiku-4-5", p.anthropic_usage(80, 20)))

    p.anthropic_client(fake).messages.create(
        model="claude-haiku-4-5",
        max_tokens=100,
        messages=MESSAGES,
        tokenr_team_id="team-7",
        tokenr_feature="support",
        tokenr_agent_id="triage",
        tokenr_tags={"env": "prod"},
    )

    record = only_record(backend)
    assert (record.account_id, record.feature, record.agent, record.tags) == (
        "team-7",
        "support",
        "triage",
        ("env:prod",),
    )
    assert (record.provider, record.input_tokens, record.output_tokens) == ("anthropic", 80, 20)
    assert not any(key.startswith("tokenr") for key in fake.last_body)


def test_weckr_keywords_win_over_tokenr_ones_and_over_the_context(
    backend: MemoryBackend,
) -> None:
    fake = p.FakeProvider(p.openai_chat_body("gpt-4o-mini", p.openai_usage(5, 1)))

    with attribute(user_id="context-user", feature="context-feature", account_id="ctx"):
        p.openai_client(fake).chat.completions.create(
            model="gpt-4o-mini",
            messages=MESSAGES,
            weckr_user_id="ours",
            weckr_account_id="our-account",
            tokenr_team_id="their-team",
            tokenr_feature="their-feature",
        )

    record = only_record(backend)
    assert (record.user_id, record.account_id, record.feature) == (
        "ours",
        "our-account",
        "their-feature",
    )


def test_a_capped_user_is_refused_before_the_provider_is_called(backend: MemoryBackend) -> None:
    backend.set_cap("free", "0.10", "block")
    backend.set_spend("u1", "0.10")
    fake = p.FakeProvider(p.openai_chat_body("gpt-4o-mini", p.openai_usage(5, 1)))

    with pytest.raises(WeckrCapError):
        p.openai_client(fake).chat.completions.create(
            model="gpt-4o-mini", messages=MESSAGES, weckr_user_id="u1", weckr_plan="free"
        )

    assert fake.hits == 0 and backend.records == []


def test_calls_through_wrap_and_wk_chat_are_recorded_once() -> None:
    fake = p.FakeProvider(p.openai_chat_body("gpt-4o-mini", p.openai_usage(5, 1)))
    backend = MemoryBackend()
    wk = Weckr(backend=backend)
    wk.instrument()
    try:
        wk.wrap(p.openai_client(fake)).chat.completions.create(
            model="gpt-4o-mini", messages=MESSAGES
        )
        wk.chat(p.openai_client(fake), {"model": "gpt-4o-mini", "messages": MESSAGES})
        with wk.wrap(p.openai_client(fake)).chat.completions.stream(
            model="gpt-4o-mini", messages=MESSAGES
        ) as stream:
            stream.until_done()
    finally:
        uninstrument()

    assert fake.hits == 3
    assert [record.source for record in backend.records] == ["wrap", "sdk", "wrap"]


def test_openai_streams_record_their_usage_once(backend: MemoryBackend) -> None:
    events = p.openai_chat_stream("gpt-4o-mini", p.openai_usage(30, 7))
    client = p.openai_client(p.FakeProvider(events=events))

    chunks = list(
        client.chat.completions.create(
            model="gpt-4o-mini", messages=MESSAGES, stream=True, weckr_user_id="u1"
        )
    )
    with client.chat.completions.stream(model="gpt-4o-mini", messages=MESSAGES) as helper:
        helper.until_done()

    assert chunks
    assert [(r.user_id, r.input_tokens, r.output_tokens) for r in backend.records] == [
        ("u1", 30, 7),
        (None, 30, 7),
    ]


def test_openai_responses_and_raw_responses_are_recorded(backend: MemoryBackend) -> None:
    body = p.openai_response_body("gpt-5", p.openai_responses_usage(800, 400, reasoning=256))
    client = p.openai_client(p.FakeProvider(body))

    client.responses.create(model="gpt-5", input="Hi", weckr_feature="search")
    raw = client.with_raw_response.responses.create(model="gpt-5", input="Hi")

    assert raw.parse().usage is not None
    assert [(r.feature, r.output_tokens, r.reasoning_tokens) for r in backend.records] == [
        ("search", 400, 256),
        (None, 400, 256),
    ]


def test_anthropic_stream_helper_is_recorded(backend: MemoryBackend) -> None:
    events = p.anthropic_stream("claude-haiku-4-5", p.anthropic_usage(60, 0), 15)
    client = p.anthropic_client(p.FakeProvider(events=events))

    with client.messages.stream(
        model="claude-haiku-4-5", max_tokens=100, messages=MESSAGES, weckr_agent="critic"
    ) as stream:
        text = stream.get_final_text()

    assert text is not None
    record = only_record(backend)
    assert (record.agent, record.input_tokens, record.output_tokens) == ("critic", 60, 15)


def test_gemini_calls_and_chats_are_recorded(backend: MemoryBackend) -> None:
    fake = p.FakeProvider(p.gemini_body("gemini-2.5-flash", p.gemini_usage(40, 12)))
    client = p.genai_client(fake)

    client.models.generate_content(model="gemini-2.5-flash", contents="Hi", weckr_user_id="g1")
    client.chats.create(model="gemini-2.5-flash").send_message("Hi")

    assert [(r.provider, r.user_id, r.input_tokens) for r in backend.records] == [
        ("gemini", "g1", 40),
        ("gemini", None, 40),
    ]


def test_async_clients_are_recorded(backend: MemoryBackend) -> None:
    openai_fake = p.FakeProvider(p.openai_chat_body("gpt-4o-mini", p.openai_usage(9, 3)))
    anthropic_fake = p.FakeProvider(
        p.anthropic_message_body("claude-haiku-4-5", p.anthropic_usage(11, 4))
    )

    async def calls() -> None:
        await p.async_openai_client(openai_fake).chat.completions.create(
            model="gpt-4o-mini", messages=MESSAGES, weckr_user_id="a1"
        )
        await p.async_anthropic_client(anthropic_fake).messages.create(
            model="claude-haiku-4-5", max_tokens=50, messages=MESSAGES, weckr_user_id="a2"
        )

    asyncio.run(calls())

    assert [(r.user_id, r.input_tokens, r.output_tokens) for r in backend.records] == [
        ("a1", 9, 3),
        ("a2", 11, 4),
    ]


def test_instrument_is_idempotent_and_uninstrument_restores_the_sdk() -> None:
    own = openai.resources.chat.completions.Completions.create
    backend = MemoryBackend()
    wk = Weckr(backend=backend)
    first, second = wk.instrument(), wk.instrument()
    assert first == second and is_instrumented()
    fake = p.FakeProvider(p.openai_chat_body("gpt-4o-mini", p.openai_usage(5, 1)))
    p.openai_client(fake).chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert len(backend.records) == 1  # patched once, recorded once

    uninstrument()
    assert not is_instrumented()
    assert openai.resources.chat.completions.Completions.create is own
    p.openai_client(fake).chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert len(backend.records) == 1


def test_without_a_weckr_records_go_to_the_default_backend() -> None:
    from weckr_core import configure, get_backend

    previous = get_backend()
    backend = MemoryBackend()
    configure(backend)
    instrument()
    try:
        fake = p.FakeProvider(p.openai_chat_body("gpt-4o-mini", p.openai_usage(5, 1)))
        p.openai_client(fake).chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    finally:
        uninstrument()
        configure(previous)
    assert only_record(backend).model == "gpt-4o-mini"


class ToolCallingProvider(p.FakeProvider):
    """Makes an LLM call of its own before it answers the first request, as a tool
    run inside the SDK's call does (google-genai runs tools inside
    ``generate_content``)."""

    def __init__(self, body: dict[str, Any], inner: openai.OpenAI) -> None:
        super().__init__(body)
        self.inner: openai.OpenAI | None = inner

    def _answer(self, url: str, content: bytes) -> tuple[int, dict[str, str], bytes]:
        inner, self.inner = self.inner, None
        if inner is not None:
            inner.chat.completions.create(
                model="gpt-4o-mini", messages=MESSAGES, weckr_feature="tool"
            )
        return super()._answer(url, content)


@pytest.mark.parametrize("outer", ["instrumented", "wrapped"])
def test_a_call_made_inside_a_recorded_call_is_recorded_on_its_own(
    backend: MemoryBackend, outer: str
) -> None:
    body = p.openai_chat_body("gpt-4o-mini", p.openai_usage(5, 1))
    inner = p.openai_client(p.FakeProvider(body))
    client = p.openai_client(ToolCallingProvider(body, inner))
    if outer == "wrapped":
        client = Weckr(backend=backend).wrap(client)

    client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, weckr_feature="outer")

    # The inner call ends first; each is recorded once.
    assert [record.feature for record in backend.records] == ["tool", "outer"]


def test_streams_of_every_sdk_sync_and_async_are_recorded_with_their_usage(
    backend: MemoryBackend,
) -> None:
    openai_events = p.openai_chat_stream("gpt-4o-mini", p.openai_usage(30, 7))
    anthropic_events = p.anthropic_stream("claude-haiku-4-5", p.anthropic_usage(60, 0), 15)
    gemini_events = p.gemini_stream("gemini-2.5-flash", p.gemini_usage(40, 12))

    anthropic_client = p.anthropic_client(p.FakeProvider(events=anthropic_events))
    list(
        anthropic_client.messages.create(
            model="claude-haiku-4-5", max_tokens=64, messages=MESSAGES, stream=True
        )
    )
    gemini = p.genai_client(p.FakeProvider(events=gemini_events))
    list(gemini.models.generate_content_stream(model="gemini-2.5-flash", contents="Hi"))

    async def async_streams() -> None:
        client = p.async_openai_client(p.FakeProvider(events=openai_events))
        stream = await client.chat.completions.create(
            model="gpt-4o-mini", messages=MESSAGES, stream=True, weckr_user_id="a1"
        )
        async for _ in stream:
            pass
        async_anthropic = p.async_anthropic_client(p.FakeProvider(events=anthropic_events))
        async with async_anthropic.messages.stream(
            model="claude-haiku-4-5", max_tokens=64, messages=MESSAGES
        ) as helper:
            await helper.get_final_message()
        aio = p.genai_client(p.FakeProvider(events=gemini_events)).aio
        async for _ in await aio.models.generate_content_stream(
            model="gemini-2.5-flash", contents="Hi"
        ):
            pass

    asyncio.run(async_streams())

    assert [(r.provider, r.user_id, r.input_tokens, r.output_tokens) for r in backend.records] == [
        ("anthropic", None, 60, 15),
        ("gemini", None, 40, 12),
        ("openai", "a1", 30, 7),
        ("anthropic", None, 60, 15),
        ("gemini", None, 40, 12),
    ]


def test_openai_stream_helpers_take_the_keywords_and_record_on_exit(
    backend: MemoryBackend,
) -> None:
    events = p.openai_chat_stream("gpt-4o-mini", p.openai_usage(30, 7))
    client = p.openai_client(p.FakeProvider(events=events))

    with client.chat.completions.stream(
        model="gpt-4o-mini", messages=MESSAGES, weckr_user_id="s1"
    ) as stream:
        for _ in stream:
            break  # left early: recorded when the block ends, not when collected

    assert [(r.user_id, r.source) for r in backend.records] == [("s1", "wrap")]


def test_anthropic_parse_is_recorded(backend: MemoryBackend) -> None:
    fake = p.FakeProvider(p.anthropic_message_body("claude-haiku-4-5", p.anthropic_usage(10, 5)))

    p.anthropic_client(fake).messages.parse(
        model="claude-haiku-4-5", max_tokens=16, messages=MESSAGES, weckr_user_id="p1"
    )

    assert [(r.user_id, r.input_tokens, r.output_tokens) for r in backend.records] == [
        ("p1", 10, 5)
    ]


def test_a_raw_view_taken_while_instrumented_stops_recording_after_uninstrument() -> None:
    fake = p.FakeProvider(p.openai_chat_body("gpt-4o-mini", p.openai_usage(5, 1)))
    client = p.openai_client(fake)
    backend = MemoryBackend()
    Weckr(backend=backend).instrument()
    view = client.chat.completions.with_raw_response  # the SDK keeps the method it sees
    view.create(model="gpt-4o-mini", messages=MESSAGES)
    uninstrument()

    view.create(model="gpt-4o-mini", messages=MESSAGES)

    assert fake.hits == 2 and len(backend.records) == 1
