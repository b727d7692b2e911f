"""``Weckr.chat`` / ``achat`` / ``track`` against the real provider SDKs over fake transports."""

from __future__ import annotations

import asyncio
import json
import threading
import warnings
from decimal import Decimal
from typing import Any

import anthropic
import openai
import pytest

from tests.core import providers as p
from tests.core.http_server import RESERVE_PATH, FakeWeckrServer, Reply
from weckr_core import (
    CapDecision,
    MemoryBackend,
    UsageRecord,
    Weckr,
    WeckrCapError,
    WeckrConfigError,
    WeckrDowngradeWarning,
    attribute,
    calculate_cost,
    cheaper_alternative,
)
from weckr_core.backends import Backend

MESSAGES: Any = [{"role": "user", "content": "Summarize this."}]


class FixedDecisionBackend(Backend):
    """Test double: answers every check with one decision, keeps records."""

    def __init__(self, decision: CapDecision, fail_record: bool = False) -> None:
        self.decision = decision
        self.fail_record = fail_record
        self.records: list[UsageRecord] = []

    def check(
        self, user_id: str | None, plan: str | None, model: str, account_id: str | None = None
    ) -> CapDecision:
        return self.decision

    def record(self, record: UsageRecord) -> None:
        if self.fail_record:
            raise RuntimeError("queue is gone")
        self.records.append(record)

    def flush(self, timeout: float = 5.0) -> bool:
        return True


def only_record(backend: MemoryBackend) -> UsageRecord:
    records = backend.records
    assert len(records) == 1
    return records[0]


def over_cap(backend: MemoryBackend, user_id: str, plan: str, action: Any) -> None:
    backend.set_cap(plan, "1.00", action)
    backend.set_spend(user_id, "1.50")


# -- usage per provider ----------------------------------------------------------


def test_openai_chat_records_usage_with_cached_and_reasoning_tokens() -> None:
    prompt, completion, cached, reasoning = 1200, 300, 1024, 128
    served_model = "gpt-4o-mini-2024-07-18"
    fake = p.FakeProvider(
        p.openai_chat_body(served_model, p.openai_usage(prompt, completion, cached, reasoning))
    )
    backend = MemoryBackend()
    wk = Weckr(backend=backend, plans={"pro": 29})

    response = wk.chat(
        p.openai_client(fake),
        {
            "model": "gpt-4o-mini",
            "messages": MESSAGES,
            "user_id": 42,
            "feature": "sum",
            "plan": "pro",
        },
    )

    assert isinstance(response, openai.types.chat.ChatCompletion)
    record = only_record(backend)
    assert (record.provider, record.model, record.requested_model) == ("openai", served_model, None)
    assert (record.user_id, record.feature, record.plan) == ("42", "sum", "pro")
    assert record.plan_revenue_usd == Decimal(29)
    assert (record.input_tokens, record.output_tokens) == (prompt, completion)
    assert (record.cached_input_tokens, record.reasoning_tokens) == (cached, reasoning)
    assert record.usage_reported and record.status == "ok" and record.source == "sdk"
    assert record.latency_ms is not None and record.latency_ms >= 0
    assert record.timestamp.tzinfo is not None and record.event_id == wk.last_event_id
    assert (record.error_type, record.tags) == (None, ())
    assert (record.run_id, record.parent_run_id, record.agent, record.task, record.step) == (
        (None,) * 5
    )
    # Our own keys never reach the provider.
    assert fake.last_body == {"model": "gpt-4o-mini", "messages": MESSAGES}


def test_response_without_usage_is_recorded_as_not_reported() -> None:
    fake = p.FakeProvider(p.openai_chat_body("gpt-4o-mini", None))
    backend = MemoryBackend()

    Weckr(backend=backend).chat(
        p.openai_client(fake), {"model": "gpt-4o-mini", "messages": MESSAGES}
    )

    record = only_record(backend)
    assert not record.usage_reported
    assert record.total_tokens == 0


def test_anthropic_cache_reads_fold_into_input_and_writes_stay_apart() -> None:
    uncached, output, cache_read, cache_write = 40, 25, 2000, 500
    fake = p.FakeProvider(
        p.anthropic_message_body(
            "claude-haiku-4-5", p.anthropic_usage(uncached, output, cache_read, cache_write)
        )
    )
    backend = MemoryBackend()

    response = Weckr(backend=backend).chat(
        p.anthropic_client(fake),
        {"model": "claude-haiku-4-5", "max_tokens": 64, "messages": MESSAGES, "user_id": "u1"},
    )

    assert isinstance(response, anthropic.types.Message)
    record = only_record(backend)
    assert record.provider == "anthropic"
    assert record.input_tokens == uncached + cache_read
    assert record.cached_input_tokens == cache_read
    assert record.cache_creation_tokens == cache_write
    assert record.output_tokens == output


def test_gemini_messages_become_contents_and_thoughts_count_as_output() -> None:
    prompt, candidates, cached, thoughts = 900, 120, 512, 300
    fake = p.FakeProvider(
        p.gemini_body("gemini-2.5-flash", p.gemini_usage(prompt, candidates, cached, thoughts))
    )
    backend = MemoryBackend()
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"},
        {"role": "user", "content": "Summarize."},
    ]

    Weckr(backend=backend).chat(
        p.genai_client(fake), {"model": "gemini-2.5-flash", "messages": messages, "user_id": "u1"}
    )

    url, body = fake.requests[-1]
    assert url.endswith("/models/gemini-2.5-flash:generateContent")
    assert [c["role"] for c in body["contents"]] == ["user", "model", "user"]
    assert body["contents"][0]["parts"] == [{"text": "Hi"}]
    assert body["systemInstruction"]["parts"] == [{"text": "Be brief."}]
    record = only_record(backend)
    assert (record.provider, record.model) == ("gemini", "gemini-2.5-flash")
    assert record.input_tokens == prompt and record.cached_input_tokens == cached
    assert record.output_tokens == candidates + thoughts
    assert record.reasoning_tokens == thoughts


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_legacy_google_generativeai_over_its_rest_transport() -> None:
    import google.generativeai as legacy_genai  # deprecated SDK, still supported

    prompt, candidates, cached = 700, 90, 128
    fake = p.FakeProvider(
        p.gemini_body("gemini-1.5-flash-002", p.gemini_usage(prompt, candidates, cached))
    )
    backend = MemoryBackend()
    with p.loopback(fake) as url:
        legacy_genai.configure(  # type: ignore[attr-defined]
            api_key="test", transport="rest", client_options={"api_endpoint": url}
        )
        Weckr(backend=backend).chat(
            legacy_genai,
            {
                "model": "gemini-1.5-flash",
                "messages": [{"role": "system", "content": "Be brief."}, *MESSAGES],
            },
        )

    path, body = fake.requests[-1]
    assert "/models/gemini-1.5-flash:generateContent" in path
    assert body["systemInstruction"]["parts"] == [{"text": "Be brief."}]
    record = only_record(backend)
    assert (record.provider, record.model) == ("gemini", "gemini-1.5-flash-002")
    assert (record.input_tokens, record.output_tokens) == (prompt, candidates)
    assert record.cached_input_tokens == cached


# -- attribution and plans ---------------------------------------------------------


def test_params_fall_back_to_the_attribution_context_and_win_over_it() -> None:
    fake = p.FakeProvider(p.openai_chat_body("gpt-4o-mini", p.openai_usage(10, 5)))
    backend = MemoryBackend()
    wk = Weckr(backend=backend)
    client = p.openai_client(fake)
    params = {"model": "gpt-4o-mini", "messages": MESSAGES}

    with attribute(user_id=7, plan="pro", feature="inbox", tags=["beta"]):
        wk.chat(client, params)
        wk.chat(client, {**params, "user_id": "8", "feature": "search"})

    first, second = backend.records
    assert (first.user_id, first.plan, first.feature, first.tags) == (
        "7",
        "pro",
        "inbox",
        ("beta",),
    )
    assert (second.user_id, second.plan, second.feature) == ("8", "pro", "search")


def test_chat_does_not_mutate_the_callers_params() -> None:
    fake = p.FakeProvider(p.openai_chat_body("gpt-4o-mini", p.openai_usage(10, 5)))
    params = {"model": "gpt-4o-mini", "messages": MESSAGES, "user_id": "u1", "stream": False}
    before = json.dumps(params)

    Weckr(backend=MemoryBackend()).chat(p.openai_client(fake), params)

    assert json.dumps(params) == before


def test_unknown_plan_fails_before_the_provider_is_called() -> None:
    fake = p.FakeProvider(p.openai_chat_body("gpt-4o-mini", p.openai_usage(10, 5)))
    backend = MemoryBackend()
    wk = Weckr(backend=backend, plans={"free": 0, "pro": 29})

    with pytest.raises(WeckrConfigError) as raised:
        wk.chat(
            p.openai_client(fake), {"model": "gpt-4o-mini", "messages": MESSAGES, "plan": "gold"}
        )

    assert raised.value.code == "unknown_plan"
    assert '"gold"' in str(raised.value) and "free, pro" in str(raised.value)
    assert fake.hits == 0 and backend.records == []


def test_without_a_plans_map_any_plan_is_accepted_without_revenue() -> None:
    fake = p.FakeProvider(p.openai_chat_body("gpt-4o-mini", p.openai_usage(10, 5)))
    backend = MemoryBackend()

    Weckr(backend=backend).chat(
        p.openai_client(fake), {"model": "gpt-4o-mini", "messages": MESSAGES, "plan": "gold"}
    )

    record = only_record(backend)
    assert record.plan == "gold" and record.plan_revenue_usd is None


def test_invalid_plan_prices_and_empty_api_key_are_rejected() -> None:
    with pytest.raises(ValueError, match="pro"):
        Weckr(backend=MemoryBackend(), plans={"pro": -1})
    with pytest.raises(ValueError, match="pro"):
        Weckr(backend=MemoryBackend(), plans={"pro": "twenty"})
    with pytest.raises(WeckrConfigError) as raised:
        Weckr(api_key="  ")
    assert raised.value.code == "invalid_api_key"


# -- caps --------------------------------------------------------------------------


def test_block_raises_before_the_provider_is_called() -> None:
    fake = p.FakeProvider(p.openai_chat_body("gpt-4o", p.openai_usage(10, 5)))
    backend = MemoryBackend()
    over_cap(backend, "u1", "free", "block")

    with pytest.raises(WeckrCapError) as raised:
        Weckr(backend=backend).chat(
            p.openai_client(fake),
            {"model": "gpt-4o", "messages": MESSAGES, "user_id": "u1", "plan": "free"},
        )

    assert fake.hits == 0 and backend.records == []
    error = raised.value
    assert (error.user_id, error.plan_name) == ("u1", "free")
    assert (error.current_spend, error.cap) == (Decimal("1.50"), Decimal("1.00"))


def test_downgrade_swaps_the_model_in_the_request_and_warns_once() -> None:
    requested = "gpt-4o"
    cheaper = cheaper_alternative(requested)
    assert cheaper is not None and cheaper != requested
    fake = p.FakeProvider(p.openai_chat_body(cheaper, p.openai_usage(10, 5)))
    backend = MemoryBackend()
    over_cap(backend, "u1", "pro", "downgrade")
    wk = Weckr(backend=backend)
    client = p.openai_client(fake)
    params = {"model": requested, "messages": MESSAGES, "user_id": "u1", "plan": "pro"}

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        wk.chat(client, params)
        wk.chat(client, params)

    assert [body["model"] for _, body in fake.requests] == [cheaper, cheaper]
    downgrades = [w for w in caught if issubclass(w.category, WeckrDowngradeWarning)]
    assert len(downgrades) == 1
    assert downgrades[0].filename == __file__  # points at the caller's line
    assert all(r.requested_model == requested and r.model == cheaper for r in backend.records)


def test_on_downgrade_replaces_the_warning() -> None:
    requested = "gpt-4o"
    cheaper = cheaper_alternative(requested)
    fake = p.FakeProvider(p.openai_chat_body("whatever", p.openai_usage(10, 5)))
    backend = MemoryBackend()
    over_cap(backend, "u1", "pro", "downgrade")
    seen: list[dict[str, str]] = []
    wk = Weckr(backend=backend, on_downgrade=seen.append)

    with warnings.catch_warnings():
        warnings.simplefilter("error", WeckrDowngradeWarning)
        wk.chat(
            p.openai_client(fake),
            {"model": requested, "messages": MESSAGES, "user_id": "u1", "plan": "pro"},
        )

    assert seen == [{"userId": "u1", "from": requested, "to": cheaper}]


def test_downgrade_without_an_alternative_blocks() -> None:
    fake = p.FakeProvider(p.openai_chat_body("gpt-4o", p.openai_usage(10, 5)))
    backend = FixedDecisionBackend(CapDecision("downgrade", None, Decimal(3), Decimal(2)))

    with pytest.raises(WeckrCapError):
        Weckr(backend=backend).chat(
            p.openai_client(fake), {"model": "gpt-4o", "messages": MESSAGES, "user_id": "u1"}
        )
    assert fake.hits == 0


def test_no_cap_check_without_a_user_or_when_disabled() -> None:
    fake = p.FakeProvider(p.openai_chat_body("gpt-4o", p.openai_usage(10, 5)))
    backend = MemoryBackend()
    over_cap(backend, "u1", "free", "block")
    client = p.openai_client(fake)

    Weckr(backend=backend).chat(client, {"model": "gpt-4o", "messages": MESSAGES, "plan": "free"})
    Weckr(backend=backend, disable_cap_check=True).chat(
        client, {"model": "gpt-4o", "messages": MESSAGES, "user_id": "u1", "plan": "free"}
    )

    assert backend.check_calls == 0
    assert fake.hits == 2 and len(backend.records) == 2


# -- errors ------------------------------------------------------------------------


def test_provider_error_is_recorded_as_an_error_row_and_reraised() -> None:
    fake = p.FakeProvider({"error": {"message": "boom", "type": "server_error"}}, status=500)
    backend = MemoryBackend()
    wk = Weckr(backend=backend)

    with pytest.raises(openai.InternalServerError):
        wk.chat(
            p.openai_client(fake), {"model": "gpt-4o-mini", "messages": MESSAGES, "user_id": "u1"}
        )

    record = only_record(backend)
    assert (record.status, record.error_type) == ("error", "InternalServerError")
    assert record.total_tokens == 0 and not record.usage_reported
    assert record.event_id == wk.last_event_id


def test_a_failing_backend_never_breaks_the_call() -> None:
    fake = p.FakeProvider(p.openai_chat_body("gpt-4o-mini", p.openai_usage(10, 5)))
    errors: list[BaseException] = []
    backend = FixedDecisionBackend(CapDecision(), fail_record=True)

    response = Weckr(backend=backend, on_error=errors.append).chat(
        p.openai_client(fake), {"model": "gpt-4o-mini", "messages": MESSAGES}
    )

    assert response.choices[0].message.content == "ok"
    assert [str(e) for e in errors] == ["queue is gone"]


def test_unknown_client_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="could not detect the provider"):
        Weckr(backend=MemoryBackend()).chat(object(), {"model": "x", "messages": MESSAGES})


async def test_mixing_sync_and_async_clients_is_a_clear_error() -> None:
    fake = p.FakeProvider(p.openai_chat_body("gpt-4o-mini", p.openai_usage(10, 5)))
    wk = Weckr(backend=MemoryBackend())
    params = {"model": "gpt-4o-mini", "messages": MESSAGES}

    with pytest.raises(TypeError, match="achat"):
        wk.chat(p.async_openai_client(fake), params)
    with pytest.raises(TypeError, match=r"wk\.chat\("):
        await wk.achat(p.openai_client(fake), params)
    assert fake.hits == 0


# -- async, event ids, track, backends ----------------------------------------------


async def test_achat_with_async_openai_anthropic_and_gemini_clients() -> None:
    backend = MemoryBackend()
    wk = Weckr(backend=backend)
    openai_fake = p.FakeProvider(p.openai_chat_body("gpt-4o-mini", p.openai_usage(11, 5)))
    anthropic_fake = p.FakeProvider(
        p.anthropic_message_body("claude-haiku-4-5", p.anthropic_usage(12, 5))
    )
    gemini_fake = p.FakeProvider(p.gemini_body("gemini-2.5-flash", p.gemini_usage(13, 5)))

    await wk.achat(
        p.async_openai_client(openai_fake), {"model": "gpt-4o-mini", "messages": MESSAGES}
    )
    await wk.achat(
        p.async_anthropic_client(anthropic_fake),
        {"model": "claude-haiku-4-5", "max_tokens": 10, "messages": MESSAGES},
    )
    await wk.achat(p.genai_client(gemini_fake), {"model": "gemini-2.5-flash", "messages": MESSAGES})

    assert [(r.provider, r.input_tokens) for r in backend.records] == [
        ("openai", 11),
        ("anthropic", 12),
        ("gemini", 13),
    ]


def test_last_event_id_is_the_record_of_the_latest_call_in_this_thread() -> None:
    fake = p.FakeProvider(p.openai_chat_body("gpt-4o-mini", p.openai_usage(10, 5)))
    backend = MemoryBackend()
    wk = Weckr(backend=backend)
    client = p.openai_client(fake)
    assert wk.last_event_id is None

    wk.chat(client, {"model": "gpt-4o-mini", "messages": MESSAGES})
    mine = wk.last_event_id
    other_thread = threading.Thread(
        target=wk.chat, args=(client, {"model": "gpt-4o-mini", "messages": MESSAGES})
    )
    other_thread.start()
    other_thread.join()

    assert mine == backend.records[0].event_id
    assert wk.last_event_id == mine  # the other thread's call did not overwrite it


async def test_last_event_id_follows_each_asyncio_task() -> None:
    backend = MemoryBackend()
    wk = Weckr(backend=backend)

    async def one_call(user: str) -> str | None:
        fake = p.FakeProvider(p.openai_chat_body("gpt-4o-mini", p.openai_usage(10, 5)))
        with attribute(user_id=user):
            await wk.achat(
                p.async_openai_client(fake), {"model": "gpt-4o-mini", "messages": MESSAGES}
            )
        return wk.last_event_id

    ids = await asyncio.gather(one_call("a"), one_call("b"))

    by_user = {r.user_id: r.event_id for r in backend.records}
    assert list(ids) == [by_user["a"], by_user["b"]]


def test_track_records_a_manual_event_from_the_context() -> None:
    backend = MemoryBackend()
    wk = Weckr(backend=backend, plans={"pro": "29.00"})

    with attribute(user_id="u9", plan="pro", tags=["batch"]):
        event_id = wk.track(
            model="gpt-4o-mini",
            provider="openai",
            feature="nightly",
            input_tokens=100,
            cached_input_tokens=40,
            output_tokens=20,
            reasoning_tokens=5,
            latency_ms=321,
        )

    record = only_record(backend)
    assert record.event_id == event_id == wk.last_event_id
    assert (record.source, record.user_id, record.plan, record.feature) == (
        "manual",
        "u9",
        "pro",
        "nightly",
    )
    assert record.plan_revenue_usd == Decimal("29.00") and record.tags == ("batch",)
    assert (record.input_tokens, record.cached_input_tokens) == (100, 40)
    assert (record.output_tokens, record.reasoning_tokens, record.latency_ms) == (20, 5, 321)


@pytest.mark.parametrize(
    "bad",
    [
        {"input_tokens": -1},
        {"output_tokens": 1.5},
        {"input_tokens": 1, "cached_input_tokens": 2},
        {"output_tokens": 1, "reasoning_tokens": 2},
        {"status": "weird"},
        {"model": ""},
        {"latency_ms": -5},
    ],
)
def test_track_rejects_bad_input(bad: dict[str, Any]) -> None:
    backend = MemoryBackend()
    with pytest.raises(ValueError):
        Weckr(backend=backend).track(**{"model": "gpt-4o-mini", **bad})
    assert backend.records == []


def test_process_default_backend_is_used_without_key_or_backend(
    memory_backend: MemoryBackend,
) -> None:
    fake = p.FakeProvider(p.openai_chat_body("gpt-4o-mini", p.openai_usage(10, 5)))

    Weckr().chat(p.openai_client(fake), {"model": "gpt-4o-mini", "messages": MESSAGES})

    assert len(memory_backend.records) == 1


def test_api_key_sends_records_to_a_weckr_server() -> None:
    fake = p.FakeProvider(p.openai_chat_body("gpt-4o-mini", p.openai_usage(10, 5, 2)))
    with FakeWeckrServer() as server:
        wk = Weckr(
            api_key="wk_test",
            plans={"pro": 29},
            endpoint=server.log_url,
            check_endpoint=server.check_url,
        )
        wk.chat(
            p.openai_client(fake),
            {"model": "gpt-4o-mini", "messages": MESSAGES, "user_id": "u1", "plan": "pro"},
        )
        assert wk.flush(5.0)
        wk.close()

        reservations = server.requests(RESERVE_PATH)
        events = server.accepted_events
    assert [r.body["userId"] for r in reservations] == ["u1"]
    assert [e["eventId"] for e in events] == [wk.last_event_id]
    assert events[0]["inputTokens"] == 10 and events[0]["cachedInputTokens"] == 2
    assert events[0]["planRevenueUsd"] == 29 and events[0]["source"] == "sdk"


def test_a_revoked_key_fails_closed_before_the_provider_is_called() -> None:
    fake = p.FakeProvider(p.openai_chat_body("gpt-4o-mini", p.openai_usage(10, 5)))
    with FakeWeckrServer() as server:
        server.set_reply(RESERVE_PATH, Reply(403, {"error": "revoked"}))
        wk = Weckr(api_key="wk_old", endpoint=server.log_url, check_endpoint=server.check_url)
        with pytest.raises(WeckrConfigError) as raised:
            wk.chat(
                p.openai_client(fake),
                {"model": "gpt-4o-mini", "messages": MESSAGES, "user_id": "u1", "plan": "pro"},
            )
        wk.close()
    assert raised.value.code == "forbidden"
    assert fake.hits == 0


def test_a_server_downgrade_decision_swaps_the_model_end_to_end() -> None:
    fake = p.FakeProvider(p.openai_chat_body("gpt-4o-mini", p.openai_usage(10, 5)))
    decision = {"allowed": False, "action": "downgrade", "alternativeModel": "gpt-4o-mini"}
    with FakeWeckrServer() as server:
        server.set_reply(RESERVE_PATH, Reply(200, {**decision, "currentSpend": 12, "cap": 10}))
        wk = Weckr(api_key="wk_test", endpoint=server.log_url, check_endpoint=server.check_url)
        client = wk.wrap(p.openai_client(fake))
        with attribute(user_id="u1", plan="pro"), pytest.warns(WeckrDowngradeWarning):
            client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
        wk.close()
        events = server.accepted_events
    assert fake.last_body["model"] == "gpt-4o-mini"
    assert [(e["model"], e["requestedModel"], e["source"]) for e in events] == [
        ("gpt-4o-mini", "gpt-4o", "wrap")
    ]


def test_a_broken_cap_check_fails_open_and_is_reported() -> None:
    class BrokenCheckBackend(FixedDecisionBackend):
        # A backend written before accounts, whose check takes three arguments.
        def check(self, user_id: str | None, plan: str | None, model: str) -> CapDecision:  # type: ignore[override]
            raise RuntimeError("cache down")

    fake = p.FakeProvider(p.openai_chat_body("gpt-4o-mini", p.openai_usage(10, 5)))
    backend = BrokenCheckBackend(CapDecision())
    errors: list[BaseException] = []

    Weckr(backend=backend, on_error=errors.append).chat(
        p.openai_client(fake), {"model": "gpt-4o-mini", "messages": MESSAGES, "user_id": "u1"}
    )

    assert [str(e) for e in errors] == ["cache down"]
    assert fake.hits == 1 and len(backend.records) == 1


async def test_a_reservation_over_http_does_not_block_the_event_loop() -> None:
    """achat, a wrapped async client and its stream helper await the reservation."""
    fake = p.FakeProvider(p.openai_chat_body("gpt-4o-mini", p.openai_usage(10, 5)))
    block = {"allowed": False, "action": "block", "currentSpend": 12, "cap": 10}
    params = {"model": "gpt-4o-mini", "messages": MESSAGES, "user_id": "u1", "plan": "pro"}
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    with FakeWeckrServer() as server:
        # The server takes 0.3 s per check: an event loop blocked meanwhile would
        # not tick at all.
        server.set_reply(RESERVE_PATH, Reply(200, block, delay=0.3))
        wk = Weckr(api_key="wk_test", endpoint=server.log_url, check_endpoint=server.check_url)
        wrapped = wk.wrap(p.async_openai_client(fake))
        ticking = asyncio.create_task(ticker())
        try:
            with pytest.raises(WeckrCapError):
                await wk.achat(p.async_openai_client(fake), params)
            after_achat = ticks
            with attribute(user_id="u2", plan="pro"), pytest.raises(WeckrCapError):
                await wrapped.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
            after_wrap = ticks - after_achat
            with attribute(user_id="u3", plan="pro"), pytest.raises(WeckrCapError):
                async with wrapped.chat.completions.stream(model="gpt-4o-mini", messages=MESSAGES):
                    pass
            after_helper = ticks - after_achat - after_wrap
        finally:
            ticking.cancel()
            wk.close()
        reservations = server.requests(RESERVE_PATH)

    assert after_achat >= 10 and after_wrap >= 10 and after_helper >= 10
    assert [request.body["userId"] for request in reservations] == ["u1", "u2", "u3"]
    assert fake.hits == 0


# -- reservations: the estimate is held during the call, the real cost after it ----


class WatchingProvider(p.FakeProvider):
    """A fake provider that notes what the user's budget holds while it answers."""

    def __init__(self, backend: MemoryBackend, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.backend = backend
        self.held_during_call: list[Decimal] = []

    def _answer(self, url: str, content: bytes) -> tuple[int, dict[str, str], bytes]:
        self.held_during_call.append(self.backend.in_flight("u1"))
        return super()._answer(url, content)


LONG_PROMPT: Any = [{"role": "user", "content": "x" * 2_988}]  # 996 + 4 tokens estimated


def per_call(model: str = "gpt-4o", prompt: int = 1000, output: int = 500) -> Decimal:
    return calculate_cost(model, prompt, output)


def test_a_call_holds_its_estimate_and_settles_its_real_cost() -> None:
    backend = MemoryBackend()
    backend.set_cap("pro", "5")
    fake = WatchingProvider(backend, p.openai_chat_body("gpt-4o", p.openai_usage(900, 120)))

    Weckr(backend=backend).chat(
        p.openai_client(fake),
        {
            "model": "gpt-4o",
            "max_tokens": 500,
            "messages": LONG_PROMPT,
            "user_id": "u1",
            "plan": "pro",
        },
    )

    assert fake.held_during_call == [per_call()]  # 1,000 prompt + 500 output tokens
    record = only_record(backend)
    assert record.reservation_id is not None
    assert backend.in_flight("u1") == 0
    assert backend.spend("u1") == per_call(prompt=900, output=120) == record.cost_usd


def test_without_max_tokens_the_backends_default_output_is_held() -> None:
    backend = MemoryBackend(default_output_tokens=2000)
    backend.set_cap("pro", "5")
    fake = WatchingProvider(backend, p.openai_chat_body("gpt-4o", p.openai_usage(10, 5)))

    Weckr(backend=backend).chat(
        p.openai_client(fake),
        {"model": "gpt-4o", "messages": LONG_PROMPT, "user_id": "u1", "plan": "pro"},
    )

    assert fake.held_during_call == [per_call(output=2000)]


def test_a_failed_call_releases_its_hold_and_a_stream_settles_when_it_ends() -> None:
    backend = MemoryBackend()
    backend.set_cap("pro", "5")
    wk = Weckr(backend=backend)
    params = {
        "model": "gpt-4o",
        "max_tokens": 500,
        "messages": LONG_PROMPT,
        "user_id": "u1",
        "plan": "pro",
    }
    failing = p.FakeProvider({"error": {"message": "boom"}}, status=500)
    with pytest.raises(openai.InternalServerError):
        wk.chat(p.openai_client(failing), params)
    assert backend.in_flight("u1") == 0 and backend.spend("u1") == 0

    streaming = p.FakeProvider(events=p.openai_chat_stream("gpt-4o", p.openai_usage(700, 50)))
    stream = wk.chat(p.openai_client(streaming), {**params, "stream": True})
    assert backend.in_flight("u1") == per_call()  # held while the stream is read
    for _ in stream:
        pass
    assert backend.in_flight("u1") == 0
    assert backend.spend("u1") == per_call(prompt=700, output=50)


def test_a_request_that_cannot_be_built_releases_its_hold() -> None:
    backend = MemoryBackend()
    backend.set_cap("pro", "5")
    fake = p.FakeProvider(p.gemini_body("gemini-2.5-flash", p.gemini_usage(10, 5)))
    with pytest.raises(TypeError, match="must be a dict"):
        Weckr(backend=backend).chat(
            p.genai_client(fake),
            {
                "model": "gemini-2.5-flash",
                "messages": ["not a dict"],
                "user_id": "u1",
                "plan": "pro",
            },
        )
    assert fake.hits == 0
    assert backend.in_flight("u1") == 0


def test_a_downgrade_holds_the_cheaper_models_estimate() -> None:
    backend = MemoryBackend()
    over_cap(backend, "u1", "pro", "downgrade")
    fake = WatchingProvider(backend, p.openai_chat_body("gpt-4o-mini", p.openai_usage(1000, 500)))

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", WeckrDowngradeWarning)
        Weckr(backend=backend).chat(
            p.openai_client(fake),
            {
                "model": "gpt-4o",
                "max_tokens": 500,
                "messages": LONG_PROMPT,
                "user_id": "u1",
                "plan": "pro",
            },
        )

    assert fake.last_body["model"] == "gpt-4o-mini"
    assert fake.held_during_call == [per_call("gpt-4o-mini")]
    assert backend.in_flight("u1") == 0


def call_until_refused(
    wk: Weckr, fake: p.FakeProvider, threads: int, params: dict[str, Any]
) -> int:
    """``threads`` threads call for user u1 until each is refused; the calls made."""
    made = 0
    lock = threading.Lock()
    start = threading.Barrier(threads)

    def work() -> None:
        nonlocal made
        client = p.openai_client(fake)
        start.wait()
        while True:
            try:
                wk.chat(client, params)
            except WeckrCapError:
                return
            with lock:
                made += 1

    # The SDK loads parts of itself on its first call: not in 32 threads at once.
    p.openai_client(fake).chat.completions.create(model="gpt-4o", messages=MESSAGES)
    workers = [threading.Thread(target=work) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
    return made


def test_32_threads_at_the_cap_never_spend_past_it_with_max_tokens() -> None:
    backend = MemoryBackend()
    cap = per_call() * 10 + per_call() / 2
    backend.set_cap("free", cap)
    # Each call uses all it may: the 1,000-token prompt and max_tokens of output.
    fake = p.FakeProvider(p.openai_chat_body("gpt-4o", p.openai_usage(1000, 500)), delay=0.03)
    params = {
        "model": "gpt-4o",
        "max_tokens": 500,
        "messages": LONG_PROMPT,
        "user_id": "u1",
        "plan": "free",
    }

    made = call_until_refused(Weckr(backend=backend), fake, 32, params)

    assert made == 10
    assert backend.spend("u1") == per_call() * 10 <= cap
    assert backend.in_flight("u1") == 0


def test_without_max_tokens_the_overshoot_stays_within_the_documented_bound() -> None:
    # Held: the default 100 output tokens; used: 500. Each call in flight at the cap
    # can run past its hold by the 400 tokens it was not held for, no more.
    backend = MemoryBackend(default_output_tokens=100)
    cap = per_call() * 10
    backend.set_cap("free", cap)
    fake = p.FakeProvider(p.openai_chat_body("gpt-4o", p.openai_usage(1000, 500)), delay=0.03)
    params = {"model": "gpt-4o", "messages": LONG_PROMPT, "user_id": "u1", "plan": "free"}
    threads = 16

    call_until_refused(Weckr(backend=backend), fake, threads, params)

    past_estimate = per_call() - per_call(output=100)
    assert cap < backend.spend("u1") <= cap + threads * past_estimate
    assert backend.in_flight("u1") == 0
