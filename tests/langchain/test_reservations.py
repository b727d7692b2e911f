"""The handler reserves each call's worst case before the provider is called and
settles it with the real cost as soon as the call ends."""

from __future__ import annotations

import logging
from decimal import Decimal
from typing import Any

import pytest
from langchain.agents import create_agent
from langchain_core.messages import HumanMessage
from langchain_core.runnables import RunnableConfig, RunnableLambda

from tests.langchain.fakes import ScriptedChatModel, counting_tool, run_agent
from weckr_core import (
    MemoryBackend,
    WeckrCapError,
    WeckrConfigError,
    WeckrDowngradeWarning,
    WeckrLoopError,
)
from weckr_core.backends import CapDecision, CapRequest
from weckr_langchain import DOWNGRADE_SKIPPED_TAG, AsyncWeckrHandler, WeckrHandler, weckr_callback

CALLBACK_LOGGER = "langchain_core.callbacks.manager"


def recorded_cost(backend: MemoryBackend) -> Decimal:
    return sum((record.cost_usd or Decimal(0) for record in backend.records), Decimal(0))


def held_during_calls(model: ScriptedChatModel, backend: MemoryBackend, user: str) -> list[Decimal]:
    """What ``user`` holds while each call of ``model`` runs."""
    held: list[Decimal] = []
    model.during_call = lambda: held.append(backend.in_flight(user))
    return held


def test_each_call_is_reserved_before_and_settled_after(memory_backend: MemoryBackend) -> None:
    memory_backend.set_cap("pro", "5.00")
    model = ScriptedChatModel(tool="search", vary_args=True, tool_turns=2)
    held = held_during_calls(model, memory_backend, "reserving-user")

    run_agent(model, WeckrHandler(), metadata={"user_id": "reserving-user", "plan": "pro"})

    records = memory_backend.records
    assert model.calls == len(records) == memory_backend.check_calls == 3
    assert all(amount > 0 for amount in held)
    assert all(record.reservation_id is not None for record in records)
    assert memory_backend.in_flight("reserving-user") == 0
    assert memory_backend.spend("reserving-user") == recorded_cost(memory_backend) > 0


def test_a_call_the_cap_refuses_holds_nothing(memory_backend: MemoryBackend) -> None:
    memory_backend.set_cap("pro", "1.00")
    memory_backend.set_spend("refused-user", "1.00")
    model = ScriptedChatModel()

    with pytest.raises(WeckrCapError):
        model.invoke("hi", {"callbacks": [WeckrHandler(user_id="refused-user", plan="pro")]})

    assert model.calls == 0
    assert memory_backend.records == []
    assert memory_backend.in_flight("refused-user") == 0


def test_a_call_the_loop_guard_refuses_is_never_reserved(memory_backend: MemoryBackend) -> None:
    memory_backend.set_cap("pro", "5.00")
    model = ScriptedChatModel(tool="search", vary_args=True)
    handler = WeckrHandler(user_id="looping-user", plan="pro", max_llm_calls=2)

    with pytest.raises(WeckrLoopError):
        run_agent(model, handler)

    assert model.calls == memory_backend.check_calls == 2
    assert memory_backend.in_flight("looping-user") == 0
    assert memory_backend.spend("looping-user") == recorded_cost(memory_backend)


def test_a_user_near_the_cap_is_refused_once_the_estimate_would_not_fit(
    memory_backend: MemoryBackend,
) -> None:
    # $0.005 left: a gpt-4o call with no output limit is reserved at 1024 output
    # tokens ($0.01); one limited to 50 output tokens fits.
    memory_backend.set_cap("pro", "1.00")
    memory_backend.set_spend("near-user", "0.995")
    handler = WeckrHandler(user_id="near-user", plan="pro")
    unlimited = ScriptedChatModel()
    limited = ScriptedChatModel(max_tokens=50)

    with pytest.raises(WeckrCapError) as refused:
        unlimited.invoke("hi", {"callbacks": [handler]})
    limited.invoke("hi", {"callbacks": [handler]})

    assert refused.value.current_spend == Decimal("0.995")
    assert (unlimited.calls, limited.calls) == (0, 1)
    assert memory_backend.in_flight("near-user") == 0


def test_the_estimate_counts_the_prompt(memory_backend: MemoryBackend) -> None:
    # $0.01 left; a 300,000 character prompt is about 100,000 tokens ($0.25 on gpt-4o).
    memory_backend.set_cap("pro", "1.00")
    memory_backend.set_spend("long-prompt-user", "0.99")
    handler = WeckrHandler(user_id="long-prompt-user", plan="pro")
    model = ScriptedChatModel(max_tokens=10)

    model.invoke("a short question", {"callbacks": [handler]})
    with pytest.raises(WeckrCapError):
        model.invoke([HumanMessage("x" * 300_000)], {"callbacks": [handler]})

    assert model.calls == 1


def test_a_skipped_downgrade_settles_its_reservation(memory_backend: MemoryBackend) -> None:
    memory_backend.set_cap("pro", "1.00", action="downgrade")
    memory_backend.set_spend("skipped-user", "2.00")
    model = ScriptedChatModel(model="gpt-4o")
    held = held_during_calls(model, memory_backend, "skipped-user")

    with pytest.warns(WeckrDowngradeWarning, match="the call runs on gpt-4o"):
        model.invoke("hi", {"callbacks": [WeckrHandler(user_id="skipped-user", plan="pro")]})

    (record,) = memory_backend.records
    assert (record.model, record.requested_model) == ("gpt-4o", None)
    assert DOWNGRADE_SKIPPED_TAG in record.tags
    # Held on the cheaper model's estimate while the call ran, then the real cost.
    assert held[0] > 0
    assert record.reservation_id is not None
    assert memory_backend.in_flight("skipped-user") == 0
    assert memory_backend.spend("skipped-user") == Decimal("2.00") + recorded_cost(memory_backend)


def test_downgrade_as_block_holds_nothing(memory_backend: MemoryBackend) -> None:
    memory_backend.set_cap("pro", "1.00", action="downgrade")
    memory_backend.set_spend("strict-user", "2.00")
    model = ScriptedChatModel(model="gpt-4o")
    handler = WeckrHandler(user_id="strict-user", plan="pro", downgrade_as_block=True)

    with pytest.raises(WeckrCapError):
        model.invoke("hi", {"callbacks": [handler]})

    assert model.calls == 0
    assert memory_backend.in_flight("strict-user") == 0


def test_two_handlers_on_one_run_reserve_and_record_once(memory_backend: MemoryBackend) -> None:
    memory_backend.set_cap("pro", "5.00")
    model = ScriptedChatModel(tool="search", vary_args=True, tool_turns=1)

    with weckr_callback(user_id="twice-user", plan="pro") as totals:
        run_agent(model, WeckrHandler(user_id="twice-user", plan="pro"))

    assert model.calls == len(memory_backend.records) == memory_backend.check_calls == 2
    assert totals.calls == 2
    assert memory_backend.in_flight("twice-user") == 0


def test_a_call_another_handler_refuses_after_ours_reserved_is_released(
    memory_backend: MemoryBackend,
) -> None:
    memory_backend.set_cap("pro", "5.00")
    model = ScriptedChatModel()
    reserving = WeckrHandler(user_id="released-user", plan="pro")
    guarding = WeckrHandler(max_llm_calls=1)

    def two_calls(question: str, config: RunnableConfig) -> Any:
        model.invoke(question, config)
        return model.invoke(question, config)

    # The second call is reserved by the first handler, then refused by the second.
    with pytest.raises(WeckrLoopError):
        RunnableLambda(two_calls).invoke("hi", {"callbacks": [reserving, guarding]})

    assert model.calls == 1
    assert memory_backend.check_calls == 2
    assert memory_backend.in_flight("released-user") == 0
    assert reserving.tracker.open_runs == 0


class CountingBackend(MemoryBackend):
    """A MemoryBackend that counts which reserve entry point the caller used."""

    def __init__(self) -> None:
        super().__init__()
        self.entry_points: list[str] = []

    def reserve(self, request: CapRequest) -> CapDecision:
        self.entry_points.append("reserve")
        return super().reserve(request)

    async def areserve(self, request: CapRequest) -> CapDecision:
        self.entry_points.append("areserve")
        return super().reserve(request)


async def test_the_async_handler_reserves_through_areserve() -> None:
    backend = CountingBackend()
    backend.set_cap("pro", "5.00")
    model = ScriptedChatModel(tool="search", vary_args=True, tool_turns=1)
    tool, _ = counting_tool()
    handler = AsyncWeckrHandler(user_id="async-user", plan="pro", backend=backend)
    agent = create_agent(model, tools=[tool])
    await agent.ainvoke({"messages": [HumanMessage("find it")]}, {"callbacks": [handler]})

    assert backend.entry_points == ["areserve", "areserve"]
    assert len(backend.records) == 2
    assert backend.in_flight("async-user") == 0
    assert backend.spend("async-user") == recorded_cost(backend)


async def test_an_async_call_the_cap_refuses_holds_nothing(memory_backend: MemoryBackend) -> None:
    memory_backend.set_cap("pro", "1.00", action="downgrade")
    memory_backend.set_spend("async-strict", "2.00")
    model = ScriptedChatModel()
    handler = AsyncWeckrHandler(user_id="async-strict", plan="pro", downgrade_as_block=True)

    with pytest.raises(WeckrCapError):
        await model.ainvoke("hi", {"callbacks": [handler]})

    assert model.calls == 0
    assert memory_backend.in_flight("async-strict") == 0
    assert handler.tracker.open_runs == 0


# LangChain logs "Error in <handler>.<event> callback: ..." for whatever a handler raises.


def callback_errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.name == CALLBACK_LOGGER]


@pytest.mark.parametrize("handler_class", [WeckrHandler, AsyncWeckrHandler])
async def test_a_cap_stop_is_not_logged_as_a_callback_error(
    memory_backend: MemoryBackend,
    caplog: pytest.LogCaptureFixture,
    handler_class: type[WeckrHandler | AsyncWeckrHandler],
) -> None:
    memory_backend.set_cap("pro", "1.00")
    memory_backend.set_spend("quiet-user", "1.00")
    model = ScriptedChatModel()

    with caplog.at_level(logging.WARNING), pytest.raises(WeckrCapError):
        await model.ainvoke("hi", {"callbacks": [handler_class(user_id="quiet-user", plan="pro")]})

    assert callback_errors(caplog) == []


def test_a_loop_stop_is_not_logged_as_a_callback_error(
    memory_backend: MemoryBackend, caplog: pytest.LogCaptureFixture
) -> None:
    model = ScriptedChatModel(tool="search")

    with caplog.at_level(logging.WARNING), pytest.raises(WeckrLoopError):
        run_agent(model, WeckrHandler(max_repeated_tool_calls=1))

    assert callback_errors(caplog) == []


class RejectingBackend(MemoryBackend):
    def reserve(self, request: CapRequest) -> CapDecision:
        raise WeckrConfigError("invalid_api_key")


def test_a_configuration_error_is_still_logged(caplog: pytest.LogCaptureFixture) -> None:
    handler = WeckrHandler(backend=RejectingBackend())

    with caplog.at_level(logging.WARNING), pytest.raises(WeckrConfigError):
        ScriptedChatModel().invoke("hi", {"callbacks": [handler]})

    assert callback_errors(caplog) == [
        "Error in WeckrHandler.on_chat_model_start callback: "
        "WeckrConfigError('Weckr: configuration error (invalid_api_key)')"
    ]
