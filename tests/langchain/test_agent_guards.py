"""Caps and loop guards stop LangGraph agents before the provider is called."""

from __future__ import annotations

import contextlib
from decimal import Decimal
from typing import Any

import pytest
from langchain_core.runnables import RunnableConfig, RunnableLambda

from tests.langchain.fakes import ScriptedChatModel, counting_tool, run_agent
from weckr_core import MemoryBackend, WeckrCapError, WeckrDowngradeWarning, WeckrLoopError
from weckr_core.pricing import price_usage
from weckr_langchain import DOWNGRADE_SKIPPED_TAG, WeckrHandler


def cost_of_one_call(model: ScriptedChatModel) -> Decimal:
    usage = model.usage_metadata
    assert usage is not None
    return price_usage(
        model.model, input_tokens=usage["input_tokens"], output_tokens=usage["output_tokens"]
    ).usd


def test_max_llm_calls_stops_an_agent_that_calls_a_tool_forever(
    memory_backend: MemoryBackend,
) -> None:
    model = ScriptedChatModel(tool="search", vary_args=True)
    tool, tool_runs = counting_tool()
    handler = WeckrHandler(max_llm_calls=5)

    with pytest.raises(WeckrLoopError) as stopped:
        run_agent(model, handler, tools=[tool])

    assert model.calls == 5
    assert stopped.value.llm_calls == 5
    assert "max_llm_calls=5" in stopped.value.reason
    records = memory_backend.records
    assert len(records) == 5
    assert len({record.run_id for record in records}) == 1
    assert stopped.value.run_id == records[0].run_id
    assert len(tool_runs) == 5
    assert handler.tracker.open_runs == 0
    # No record for the refused call, but the stop itself is kept for the dashboard.
    [stop] = memory_backend.run_stops
    assert (stop.run_id, stop.source, stop.llm_calls) == (records[0].run_id, "langchain", 5)
    assert stop.reason == stopped.value.reason


def test_max_cost_usd_stops_the_run_once_the_budget_is_spent(
    memory_backend: MemoryBackend,
) -> None:
    model = ScriptedChatModel(tool="search", vary_args=True)
    per_call = cost_of_one_call(model)
    assert per_call > 0
    # Two calls stay under the budget, the third crosses it, the fourth is refused.
    handler = WeckrHandler(max_cost_usd=per_call * Decimal("2.5"))

    with pytest.raises(WeckrLoopError) as stopped:
        run_agent(model, handler)

    assert model.calls == 3
    assert "max_cost_usd" in stopped.value.reason
    assert stopped.value.cost == per_call * 3
    records = memory_backend.records
    assert len(records) == 3
    assert sum((record.cost_usd or Decimal(0)) for record in records) == per_call * 3


def test_max_tokens_counts_every_kind_of_token(memory_backend: MemoryBackend) -> None:
    model = ScriptedChatModel(tool="search", vary_args=True)
    # 120 tokens a call: calls start while under 250 (0, 120, 240); the fourth is refused.
    handler = WeckrHandler(max_tokens=250)

    with pytest.raises(WeckrLoopError) as stopped:
        run_agent(model, handler)

    assert model.calls == 3
    assert stopped.value.tokens == 360
    assert len(memory_backend.records) == 3


def test_repeated_tool_guard_blocks_the_tool_before_it_runs(
    memory_backend: MemoryBackend,
) -> None:
    model = ScriptedChatModel(tool="search")  # same arguments every time
    tool, tool_runs = counting_tool()
    handler = WeckrHandler(max_repeated_tool_calls=3)

    with pytest.raises(WeckrLoopError) as stopped:
        run_agent(model, handler, tools=[tool])

    assert len(tool_runs) == 3
    assert model.calls == 4
    assert "search called 4 times in a row" in stopped.value.reason
    assert len(memory_backend.records) == 4
    assert [stop.reason for stop in memory_backend.run_stops] == [stopped.value.reason]
    assert handler.tracker.open_runs == 0


def test_varying_tool_arguments_are_not_a_repeat(memory_backend: MemoryBackend) -> None:
    model = ScriptedChatModel(tool="search", vary_args=True, tool_turns=4)
    tool, tool_runs = counting_tool()

    run_agent(model, WeckrHandler(max_repeated_tool_calls=1), tools=[tool])

    assert len(tool_runs) == 4
    assert model.calls == 5


def test_a_swallowed_loop_error_still_stops_the_next_model_call(
    memory_backend: MemoryBackend,
) -> None:
    model = ScriptedChatModel()
    tool, tool_runs = counting_tool()

    def careless_step(question: str, config: RunnableConfig) -> Any:
        for _ in range(2):
            # What a ToolNode with handle_tool_errors=True does with the loop error.
            with contextlib.suppress(WeckrLoopError):
                tool.invoke({"query": question}, config)
        return model.invoke(question, config)

    handler = WeckrHandler(max_repeated_tool_calls=1)
    with pytest.raises(WeckrLoopError, match="run already stopped"):
        RunnableLambda(careless_step).invoke("same", {"callbacks": [handler]})

    assert len(tool_runs) == 1
    assert model.calls == 0
    assert memory_backend.records == []


def test_limits_are_per_root_run(memory_backend: MemoryBackend) -> None:
    model = ScriptedChatModel(tool="search", vary_args=True, tool_turns=2)
    handler = WeckrHandler(max_llm_calls=3)

    for _ in range(3):
        run_agent(model, handler)

    assert model.calls == 9
    assert len({record.run_id for record in memory_backend.records}) == 3


def test_a_user_over_the_cap_never_reaches_the_provider(memory_backend: MemoryBackend) -> None:
    memory_backend.set_cap("pro", "1.00")
    memory_backend.set_spend("capped-user", "1.50")
    model = ScriptedChatModel(tool="search")
    handler = WeckrHandler()

    with pytest.raises(WeckrCapError) as refused:
        run_agent(model, handler, metadata={"user_id": "capped-user", "plan": "pro"})

    assert not isinstance(refused.value, WeckrLoopError)
    assert (refused.value.user_id, refused.value.plan_name) == ("capped-user", "pro")
    assert refused.value.current_spend == Decimal("1.50")
    assert refused.value.cap == Decimal("1.00")
    assert model.calls == 0
    assert memory_backend.records == []
    assert handler.tracker.open_runs == 0


def test_a_user_under_the_cap_goes_through(memory_backend: MemoryBackend) -> None:
    memory_backend.set_cap("pro", "1.00")
    memory_backend.set_spend("fine-user", "0.10")
    model = ScriptedChatModel()

    model.invoke("hi", {"callbacks": [WeckrHandler(user_id="fine-user", plan="pro")]})

    assert model.calls == 1
    assert [record.user_id for record in memory_backend.records] == ["fine-user"]


def test_a_downgrade_decision_warns_and_runs_the_requested_model(
    memory_backend: MemoryBackend,
) -> None:
    memory_backend.set_cap("pro", "1.00", action="downgrade")
    memory_backend.set_spend("downgraded-user", "2.00")
    model = ScriptedChatModel(model="gpt-4o")
    handler = WeckrHandler(user_id="downgraded-user", plan="pro")

    with pytest.warns(WeckrDowngradeWarning, match="gpt-4o-mini") as warned:
        model.invoke("hi", {"callbacks": [handler]})
    assert [w.filename for w in warned] == [__file__]

    assert model.calls == 1
    (record,) = memory_backend.records
    assert record.model == "gpt-4o"
    assert record.requested_model is None
    assert DOWNGRADE_SKIPPED_TAG in record.tags


def test_downgrade_as_block_refuses_the_call(memory_backend: MemoryBackend) -> None:
    memory_backend.set_cap("pro", "1.00", action="downgrade")
    memory_backend.set_spend("strict-user", "2.00")
    model = ScriptedChatModel(model="gpt-4o")
    handler = WeckrHandler(user_id="strict-user", plan="pro", downgrade_as_block=True)

    with pytest.raises(WeckrCapError):
        model.invoke("hi", {"callbacks": [handler]})

    assert model.calls == 0
    assert memory_backend.records == []
