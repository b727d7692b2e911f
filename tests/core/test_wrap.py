"""``wrap(client)``: the real SDK clients, intercepted, attributed from the context."""

from __future__ import annotations

import asyncio
import json
import warnings
from collections.abc import Callable
from typing import Any

import anthropic
import openai
import pytest
from pydantic import BaseModel

from tests.core import providers as p
from weckr_core import (
    MemoryBackend,
    UsageRecord,
    Weckr,
    WeckrCapError,
    WeckrDowngradeWarning,
    attribute,
    cheaper_alternative,
)
from weckr_core.wrap import wrap

MESSAGES: Any = [{"role": "user", "content": "Hi"}]


def setup(body: dict[str, Any]) -> tuple[p.FakeProvider, MemoryBackend, Weckr]:
    backend = MemoryBackend()
    return p.FakeProvider(body), backend, Weckr(backend=backend, plans={"free": 0, "pro": 29})


def only_record(backend: MemoryBackend) -> UsageRecord:
    records = backend.records
    assert len(records) == 1
    return records[0]


# -- usage per endpoint --------------------------------------------------------------


def test_openai_chat_completions_attributed_from_the_context() -> None:
    fake, backend, wk = setup(p.openai_chat_body("gpt-4o-mini", p.openai_usage(50, 10, 32, 4)))
    client = wk.wrap(p.openai_client(fake))

    with attribute(user_id=5, plan="pro", feature="chat", tags=["web"]):
        response = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)

    assert response.choices[0].message.content == "ok"
    record = only_record(backend)
    assert (record.source, record.provider, record.user_id, record.plan) == (
        "wrap",
        "openai",
        "5",
        "pro",
    )
    assert (record.feature, record.tags) == ("chat", ("web",))
    assert (record.input_tokens, record.cached_input_tokens) == (50, 32)
    assert (record.output_tokens, record.reasoning_tokens) == (10, 4)
    assert record.event_id == wk.last_event_id


def test_openai_responses_api_with_cached_and_reasoning_tokens() -> None:
    usage = p.openai_responses_usage(800, 400, cached=512, reasoning=256)
    fake, backend, wk = setup(p.openai_response_body("gpt-5-2025-08-07", usage))
    client = wk.wrap(p.openai_client(fake))

    client.responses.create(model="gpt-5", input="Hi")

    record = only_record(backend)
    assert (record.model, record.input_tokens, record.cached_input_tokens) == (
        "gpt-5-2025-08-07",
        800,
        512,
    )
    assert (record.output_tokens, record.reasoning_tokens) == (400, 256)


def test_anthropic_messages_with_cache_read_and_write() -> None:
    fake, backend, wk = setup(
        p.anthropic_message_body("claude-haiku-4-5", p.anthropic_usage(10, 20, 300, 40))
    )
    client = wk.wrap(p.anthropic_client(fake))

    client.messages.create(model="claude-haiku-4-5", max_tokens=64, messages=MESSAGES)

    record = only_record(backend)
    assert (record.input_tokens, record.cached_input_tokens) == (10 + 300, 300)
    assert (record.cache_creation_tokens, record.output_tokens) == (40, 20)


def test_anthropic_beta_messages_are_recorded_too() -> None:
    fake, backend, wk = setup(p.anthropic_message_body("claude-haiku-4-5", p.anthropic_usage(7, 3)))
    client = wk.wrap(p.anthropic_client(fake))

    client.beta.messages.create(model="claude-haiku-4-5", max_tokens=64, messages=MESSAGES)

    assert only_record(backend).input_tokens == 7


def test_gemini_generate_content_sync_and_aio() -> None:
    fake, backend, wk = setup(p.gemini_body("gemini-2.5-flash", p.gemini_usage(30, 6, 0, 9)))
    client = wk.wrap(p.genai_client(fake))

    client.models.generate_content(model="models/gemini-2.5-flash", contents="Hi")
    asyncio.run(client.aio.models.generate_content(model="gemini-2.5-flash", contents="Hi"))

    assert [(r.model, r.output_tokens, r.reasoning_tokens) for r in backend.records] == [
        ("gemini-2.5-flash", 6 + 9, 9),
        ("gemini-2.5-flash", 6 + 9, 9),
    ]


# -- a drop-in proxy ---------------------------------------------------------------


def test_everything_else_passes_through_unchanged() -> None:
    fake, backend, wk = setup({"id": "gpt-4o", "object": "model", "created": 0, "owned_by": "x"})
    real = p.openai_client(fake)
    client = wk.wrap(real)

    model = client.models.retrieve("gpt-4o")  # not an LLM call: not recorded
    client.timeout = 12.0

    assert model.id == "gpt-4o"
    assert client.base_url == real.base_url and real.timeout == 12.0
    assert client.chat.completions.create.__name__ == "create"
    assert "chat" in dir(client)
    assert backend.records == []


def test_with_options_and_copy_stay_wrapped() -> None:
    fake, backend, wk = setup(p.openai_chat_body("gpt-4o-mini", p.openai_usage(3, 1)))
    client = wk.wrap(p.openai_client(fake))

    client.with_options(timeout=5.0).chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    client.copy(max_retries=0).chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)

    assert len(backend.records) == 2


def test_wrapping_twice_or_chat_on_a_wrapped_client_records_once() -> None:
    fake, backend, wk = setup(p.openai_chat_body("gpt-4o-mini", p.openai_usage(3, 1)))
    client = wk.wrap(p.openai_client(fake))

    assert wk.wrap(client) is client
    wk.chat(client, {"model": "gpt-4o-mini", "messages": MESSAGES})

    assert only_record(backend).source == "sdk"


def test_module_level_wrap_uses_the_process_default_backend(memory_backend: MemoryBackend) -> None:
    fake = p.FakeProvider(p.openai_chat_body("gpt-4o-mini", p.openai_usage(3, 1)))

    wrap(p.openai_client(fake)).chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)

    assert only_record(memory_backend).source == "wrap"


def test_wrap_rejects_what_it_cannot_intercept() -> None:
    with pytest.raises(TypeError, match="OpenAI, Anthropic or google-genai"):
        wrap(object())


def test_provider_error_is_an_error_row() -> None:
    backend = MemoryBackend()
    fake = p.FakeProvider(
        {"type": "error", "error": {"type": "rate_limit_error", "message": "x"}}, status=429
    )
    client = Weckr(backend=backend).wrap(p.anthropic_client(fake))

    with pytest.raises(anthropic.RateLimitError):
        client.messages.create(model="claude-haiku-4-5", max_tokens=5, messages=MESSAGES)

    record = only_record(backend)
    assert (record.status, record.error_type, record.usage_reported) == (
        "error",
        "RateLimitError",
        False,
    )


# -- caps ----------------------------------------------------------------------------

Call = Callable[[Any, str], Any]

CASES: list[tuple[str, Callable[[p.FakeProvider], Any], dict[str, Any], Call]] = [
    (
        "gpt-4o",
        p.openai_client,
        p.openai_chat_body("gpt-4o-mini", p.openai_usage(3, 1)),
        lambda c, m: c.chat.completions.create(model=m, messages=MESSAGES),
    ),
    (
        "gpt-5",
        p.openai_client,
        p.openai_response_body("gpt-5-mini", p.openai_responses_usage(3, 1)),
        lambda c, m: c.responses.create(model=m, input="Hi"),
    ),
    (
        "claude-sonnet-4-5",
        p.anthropic_client,
        p.anthropic_message_body("claude-haiku-4-5", p.anthropic_usage(3, 1)),
        lambda c, m: c.messages.create(model=m, max_tokens=5, messages=MESSAGES),
    ),
    (
        "gemini-2.5-pro",
        p.genai_client,
        p.gemini_body("gemini-2.5-flash", p.gemini_usage(3, 1)),
        lambda c, m: c.models.generate_content(model=m, contents="Hi"),
    ),
]


def requested_model(fake: p.FakeProvider) -> str:
    url, body = fake.requests[-1]
    if "model" in body:
        return str(body["model"])
    return url.split("/models/")[1].split(":")[0]  # Gemini puts it in the URL


@pytest.mark.parametrize(("model", "make_client", "body", "call"), CASES)
def test_block_never_reaches_the_provider(
    model: str, make_client: Callable[[p.FakeProvider], Any], body: dict[str, Any], call: Call
) -> None:
    fake, backend, wk = setup(body)
    backend.set_cap("free", "0.10", "block")
    backend.set_spend("u1", "0.10")
    client = wk.wrap(make_client(fake))

    with attribute(user_id="u1", plan="free"), pytest.raises(WeckrCapError) as raised:
        call(client, model)

    assert fake.hits == 0 and backend.records == []
    assert raised.value.user_id == "u1" and raised.value.plan_name == "free"


@pytest.mark.parametrize(("model", "make_client", "body", "call"), CASES)
def test_downgrade_swaps_the_model_in_the_http_request(
    model: str, make_client: Callable[[p.FakeProvider], Any], body: dict[str, Any], call: Call
) -> None:
    cheaper = cheaper_alternative(model)
    assert cheaper is not None
    fake, backend, wk = setup(body)
    backend.set_cap("pro", "1", "downgrade")
    backend.set_spend("u1", "2")
    client = wk.wrap(make_client(fake))

    with attribute(user_id="u1", plan="pro"), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        call(client, model)
        call(client, model)

    assert requested_model(fake) == cheaper
    (warned,) = [w for w in caught if w.category is WeckrDowngradeWarning]
    assert warned.filename == __file__  # the line that called the client, not ours
    assert [r.requested_model for r in backend.records] == [model, model]


# -- async clients and context -------------------------------------------------------


async def test_async_clients_are_wrapped_with_awaitable_methods() -> None:
    backend = MemoryBackend()
    wk = Weckr(backend=backend)
    openai_client = wk.wrap(
        p.async_openai_client(
            p.FakeProvider(p.openai_chat_body("gpt-4o-mini", p.openai_usage(4, 1)))
        )
    )
    anthropic_client = wk.wrap(
        p.async_anthropic_client(
            p.FakeProvider(p.anthropic_message_body("claude-haiku-4-5", p.anthropic_usage(5, 1)))
        )
    )

    chat = await openai_client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    message = await anthropic_client.messages.create(
        model="claude-haiku-4-5", max_tokens=5, messages=MESSAGES
    )

    assert isinstance(chat, openai.types.chat.ChatCompletion)
    assert isinstance(message, anthropic.types.Message)
    assert [(r.provider, r.input_tokens) for r in backend.records] == [
        ("openai", 4),
        ("anthropic", 5),
    ]


async def test_async_block_raises_when_awaited_before_any_request() -> None:
    fake, backend, wk = setup(p.openai_chat_body("gpt-4o", p.openai_usage(4, 1)))
    backend.set_cap("free", "0", "block")
    client = wk.wrap(p.async_openai_client(fake))

    with attribute(user_id="u1", plan="free"):
        pending = client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
        with pytest.raises(WeckrCapError):
            await pending

    assert fake.hits == 0


async def test_concurrent_tasks_keep_their_own_attribution() -> None:
    fake, backend, wk = setup(p.openai_chat_body("gpt-4o-mini", p.openai_usage(4, 1)))
    client = wk.wrap(p.async_openai_client(fake))

    async def request_for(user: str, plan: str) -> None:
        with attribute(user_id=user, plan=plan, feature=f"feature-{user}"):
            await asyncio.sleep(0)  # let the tasks interleave
            await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)

    with attribute(tags=["batch"]):
        await asyncio.gather(*(request_for(f"u{i}", "pro" if i % 2 else "free") for i in range(6)))

    assert sorted((r.user_id, r.plan, r.feature, r.tags) for r in backend.records) == [
        (f"u{i}", "pro" if i % 2 else "free", f"feature-u{i}", ("batch",)) for i in range(6)
    ]


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_legacy_gemini_objects_point_to_chat() -> None:
    import google.generativeai as legacy_genai

    with pytest.raises(TypeError, match=r"wk\.chat"):
        wrap(legacy_genai.GenerativeModel("gemini-1.5-flash"))  # type: ignore[attr-defined]


# -- with_raw_response ---------------------------------------------------------------


def test_openai_with_raw_response_is_recorded_and_parses_as_usual() -> None:
    fake, backend, wk = setup(p.openai_chat_body("gpt-4o-mini", p.openai_usage(40, 8, 16)))
    client = wk.wrap(p.openai_client(fake))

    with attribute(user_id="u1", plan="pro"):
        raw = client.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=MESSAGES
        )
        client.with_raw_response.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)

    assert raw.headers["content-type"] == "application/json"
    assert raw.parse().choices[0].message.content == "ok"
    records = backend.records
    assert len(records) == 2 and fake.hits == 2
    assert {
        (r.user_id, r.input_tokens, r.cached_input_tokens, r.output_tokens) for r in records
    } == {("u1", 40, 16, 8)}


def test_openai_raw_response_stream_is_recorded_when_it_ends() -> None:
    backend = MemoryBackend()
    fake = p.FakeProvider(events=p.openai_chat_stream("gpt-4o-mini", p.openai_usage(30, 6)))
    client = Weckr(backend=backend).wrap(p.openai_client(fake))

    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=MESSAGES, stream=True
    )
    assert backend.records == []
    chunks = list(raw.parse())

    assert fake.last_body["stream_options"] == {"include_usage": True}
    assert chunks[-1].usage is not None
    assert (only_record(backend).input_tokens, only_record(backend).output_tokens) == (30, 6)


def test_responses_and_anthropic_raw_responses_are_recorded() -> None:
    usage = p.openai_responses_usage(800, 400, cached=512, reasoning=256)
    fake, backend, wk = setup(p.openai_response_body("gpt-5-2025-08-07", usage))
    wk.wrap(p.openai_client(fake)).responses.with_raw_response.create(model="gpt-5", input="Hi")
    assert (only_record(backend).input_tokens, only_record(backend).reasoning_tokens) == (800, 256)

    fake, backend, wk = setup(
        p.anthropic_message_body("claude-haiku-4-5", p.anthropic_usage(10, 20, 300, 40))
    )
    client = wk.wrap(p.anthropic_client(fake))
    raw = client.messages.with_raw_response.create(
        model="claude-haiku-4-5", max_tokens=64, messages=MESSAGES
    )
    client.with_raw_response.messages.create(
        model="claude-haiku-4-5", max_tokens=64, messages=MESSAGES
    )

    assert raw.parse().usage.output_tokens == 20
    assert [(r.input_tokens, r.cache_creation_tokens) for r in backend.records] == [(310, 40)] * 2


def test_async_openai_with_raw_response() -> None:
    fake, backend, wk = setup(p.openai_chat_body("gpt-4o-mini", p.openai_usage(9, 2)))
    client = wk.wrap(p.async_openai_client(fake))

    async def call() -> Any:
        return await client.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=MESSAGES
        )

    raw = asyncio.run(call())

    assert raw.parse().usage.prompt_tokens == 9
    assert only_record(backend).input_tokens == 9


# -- structured outputs (.parse) -----------------------------------------------------


class Verdict(BaseModel):
    label: str
    score: float


def test_openai_structured_output_parse_calls_are_recorded() -> None:
    body = p.openai_chat_body("gpt-4o-2024-08-06", p.openai_usage(70, 12, 64))
    body["choices"][0]["message"]["content"] = json.dumps({"label": "spam", "score": 0.9})
    fake, backend, wk = setup(body)
    client = wk.wrap(p.openai_client(fake))

    with attribute(user_id="u1", plan="pro"):
        parsed = client.chat.completions.parse(
            model="gpt-4o", messages=MESSAGES, response_format=Verdict
        )
        client.beta.chat.completions.parse(
            model="gpt-4o", messages=MESSAGES, response_format=Verdict
        )
        raw = client.chat.completions.with_raw_response.parse(
            model="gpt-4o", messages=MESSAGES, response_format=Verdict
        )

    assert parsed.choices[0].message.parsed == Verdict(label="spam", score=0.9)
    assert raw.parse().choices[0].message.parsed == Verdict(label="spam", score=0.9)
    assert fake.hits == 3
    assert [(r.user_id, r.input_tokens, r.cached_input_tokens) for r in backend.records] == [
        ("u1", 70, 64)
    ] * 3


def test_openai_responses_parse_is_recorded() -> None:
    usage = p.openai_responses_usage(300, 40, cached=128)
    fake, backend, wk = setup(p.openai_response_body("gpt-5-2025-08-07", usage))

    wk.wrap(p.openai_client(fake)).responses.parse(model="gpt-5", input="Hi")

    assert (only_record(backend).input_tokens, only_record(backend).cached_input_tokens) == (
        300,
        128,
    )


# -- with_streaming_response ---------------------------------------------------------


def test_openai_with_streaming_response_is_recorded_when_parsed() -> None:
    fake, backend, wk = setup(p.openai_chat_body("gpt-4o-mini", p.openai_usage(25, 5, 8)))
    client = wk.wrap(p.openai_client(fake))

    with attribute(user_id="u1", plan="pro"):
        manager = client.chat.completions.with_streaming_response.create(
            model="gpt-4o-mini", messages=MESSAGES
        )
        assert fake.hits == 0  # the request goes out on entry, as with the SDK's own
        with manager as response:
            assert response.headers["content-type"] == "application/json"
            first, again = response.parse(), response.parse()
        with client.with_streaming_response.chat.completions.create(
            model="gpt-4o-mini", messages=MESSAGES
        ) as response:
            response.read()  # never parsed: the usage is not known

    assert first is again and first.choices[0].message.content == "ok"
    assert [(r.user_id, r.input_tokens, r.usage_reported) for r in backend.records] == [
        ("u1", 25, True),
        ("u1", 0, False),
    ]


def test_openai_streaming_response_stream_is_recorded_when_it_ends() -> None:
    backend = MemoryBackend()
    fake = p.FakeProvider(events=p.openai_chat_stream("gpt-4o-mini", p.openai_usage(30, 6)))
    client = Weckr(backend=backend).wrap(p.openai_client(fake))

    with client.chat.completions.with_streaming_response.create(
        model="gpt-4o-mini", messages=MESSAGES, stream=True
    ) as response:
        chunks = list(response.parse())

    assert fake.last_body["stream_options"] == {"include_usage": True}
    assert chunks[-1].usage is not None
    assert (only_record(backend).input_tokens, only_record(backend).output_tokens) == (30, 6)


def test_streaming_response_of_a_capped_user_is_refused_on_entry() -> None:
    fake, backend, wk = setup(p.openai_chat_body("gpt-4o-mini", p.openai_usage(25, 5)))
    backend.set_cap("free", "0.10", "block")
    backend.set_spend("u1", "0.10")
    client = wk.wrap(p.openai_client(fake))

    with attribute(user_id="u1", plan="free"), pytest.raises(WeckrCapError):  # noqa: SIM117
        with client.chat.completions.with_streaming_response.create(
            model="gpt-4o-mini", messages=MESSAGES
        ):
            pass

    assert fake.hits == 0 and backend.records == []


def test_anthropic_and_async_streaming_responses_are_recorded() -> None:
    fake, backend, wk = setup(
        p.anthropic_message_body("claude-haiku-4-5", p.anthropic_usage(10, 20, 300, 40))
    )
    client = wk.wrap(p.anthropic_client(fake))
    with client.messages.with_streaming_response.create(
        model="claude-haiku-4-5", max_tokens=64, messages=MESSAGES
    ) as response:
        assert response.parse().usage.output_tokens == 20
    assert (only_record(backend).input_tokens, only_record(backend).cache_creation_tokens) == (
        310,
        40,
    )

    fake, backend, wk = setup(p.openai_chat_body("gpt-4o-mini", p.openai_usage(9, 2)))
    async_client = wk.wrap(p.async_openai_client(fake))

    async def call() -> Any:
        with attribute(user_id="u2", plan="pro"):
            async with async_client.chat.completions.with_streaming_response.create(
                model="gpt-4o-mini", messages=MESSAGES
            ) as response:
                return await response.parse()

    parsed = asyncio.run(call())

    assert parsed.usage.prompt_tokens == 9
    assert (only_record(backend).user_id, only_record(backend).input_tokens) == ("u2", 9)


# -- google-genai chats ----------------------------------------------------------------


def test_gemini_chats_are_recorded_sync_stream_and_aio() -> None:
    backend = MemoryBackend()
    wk = Weckr(backend=backend, plans={"pro": 29})
    fake = p.FakeProvider(p.gemini_body("gemini-2.5-flash", p.gemini_usage(30, 6, 0, 9)))
    client = wk.wrap(p.genai_client(fake))

    with attribute(user_id="u1", plan="pro", feature="assistant"):
        chat = client.chats.create(model="gemini-2.5-flash")
        assert chat.send_message("Hi").text == "ok"
        chat.send_message("And again?")

        async def aio_chat() -> Any:
            return await client.aio.chats.create(model="gemini-2.5-flash").send_message("Hi")

        asyncio.run(aio_chat())

    assert len(chat.get_history()) == 4  # the chat keeps its own history as usual
    assert [(r.user_id, r.feature, r.input_tokens, r.output_tokens) for r in backend.records] == [
        ("u1", "assistant", 30, 15)
    ] * 3

    streamed = MemoryBackend()
    fake = p.FakeProvider(events=p.gemini_stream("gemini-2.5-flash", p.gemini_usage(40, 8)))
    chunks = list(
        Weckr(backend=streamed)
        .wrap(p.genai_client(fake))
        .chats.create(model="gemini-2.5-flash")
        .send_message_stream("Hi")
    )
    assert chunks and (only_record(streamed).input_tokens, only_record(streamed).output_tokens) == (
        40,
        8,
    )


def test_a_capped_user_cannot_chat_with_gemini() -> None:
    fake, backend, wk = setup(p.gemini_body("gemini-2.5-flash", p.gemini_usage(30, 6)))
    backend.set_cap("free", "0.10", "block")
    backend.set_spend("u1", "0.10")
    chat = wk.wrap(p.genai_client(fake)).chats.create(model="gemini-2.5-flash")

    with attribute(user_id="u1", plan="free"), pytest.raises(WeckrCapError):
        chat.send_message("Hi")

    assert fake.hits == 0 and backend.records == []


def test_anthropic_structured_output_parse_is_recorded() -> None:
    fake, backend, wk = setup(p.anthropic_message_body("claude-haiku-4-5", p.anthropic_usage(9, 4)))
    client = wk.wrap(p.anthropic_client(fake))

    with attribute(user_id="u1"):
        client.messages.parse(model="claude-haiku-4-5", max_tokens=16, messages=MESSAGES)
        client.beta.messages.parse(model="claude-haiku-4-5", max_tokens=16, messages=MESSAGES)

    assert [(r.user_id, r.input_tokens, r.output_tokens) for r in backend.records] == [
        ("u1", 9, 4),
        ("u1", 9, 4),
    ]
