"""``weckr_callback()``: tracking with no handler passed, and running totals."""

from __future__ import annotations

from decimal import Decimal

import pytest
from langchain.agents import create_agent
from langchain_core.messages import HumanMessage

from tests.langchain.fakes import ScriptedChatModel, counting_tool, usage
from weckr_core import MemoryBackend, WeckrLoopError, attribute
from weckr_langchain import WeckrHandler, weckr_callback


def test_every_run_inside_the_block_is_tracked(memory_backend: MemoryBackend) -> None:
    gpt = ScriptedChatModel(model="gpt-4o", usage_metadata=usage(1000, 100, cache_read=400))
    claude = ScriptedChatModel(
        model="claude-3-5-sonnet-20241022", provider="anthropic", usage_metadata=usage(200, 50)
    )

    with attribute(user_id="cb-user"), weckr_callback(feature="reports") as totals:
        gpt.invoke("one")
        gpt.invoke("two")
        list(claude.stream("three"))

    records = memory_backend.records
    assert len(records) == 3
    assert {(record.user_id, record.feature) for record in records} == {("cb-user", "reports")}
    assert totals.calls == 3
    assert totals.input_tokens == 2200
    assert totals.cached_input_tokens == 800
    assert totals.output_tokens == 250
    assert totals.total_tokens == 2450
    assert totals.cost_usd == sum((record.cost_usd or Decimal(0)) for record in records)
    assert totals.cost_usd > 0
    assert totals.unpriced_calls == totals.unreported_calls == 0
    assert set(totals.by_model) == {"gpt-4o", "claude-3-5-sonnet-20241022"}
    gpt_cost = records[0].cost_usd
    assert gpt_cost is not None
    assert totals.by_model["gpt-4o"].calls == 2
    assert totals.by_model["gpt-4o"].cost_usd == gpt_cost * 2


def test_nothing_is_tracked_after_the_block(memory_backend: MemoryBackend) -> None:
    model = ScriptedChatModel()
    with weckr_callback() as totals:
        model.invoke("inside")
    model.invoke("outside")

    assert totals.calls == 1
    assert len(memory_backend.records) == 1


def test_nothing_is_tracked_after_the_block_raised(memory_backend: MemoryBackend) -> None:
    model = ScriptedChatModel()
    with pytest.raises(KeyError), weckr_callback():
        raise KeyError("boom")
    model.invoke("outside")

    assert memory_backend.records == []


def test_nested_blocks_count_in_the_outer_totals(memory_backend: MemoryBackend) -> None:
    model = ScriptedChatModel()
    with weckr_callback(feature="outer") as outer:
        model.invoke("a")
        with weckr_callback(feature="inner") as inner:
            model.invoke("b")
            model.invoke("c")

    assert (outer.calls, inner.calls) == (3, 2)
    assert [record.feature for record in memory_backend.records] == ["outer", "inner", "inner"]


def test_an_explicit_handler_inside_the_block_does_not_double_count(
    memory_backend: MemoryBackend,
) -> None:
    model = ScriptedChatModel()
    with weckr_callback() as totals:
        model.invoke("hi", {"callbacks": [WeckrHandler(feature="explicit")]})

    assert len(memory_backend.records) == 1
    assert totals.calls == 1


def test_loop_guards_apply_to_agents_run_inside_the_block(memory_backend: MemoryBackend) -> None:
    model = ScriptedChatModel(tool="search", vary_args=True)
    agent = create_agent(model, tools=[counting_tool()[0]])

    with pytest.raises(WeckrLoopError), weckr_callback(max_llm_calls=3) as totals:
        agent.invoke({"messages": [HumanMessage("go")]})

    assert model.calls == totals.calls == 3


async def test_async_runs_inside_the_block_are_tracked(memory_backend: MemoryBackend) -> None:
    model = ScriptedChatModel()
    with weckr_callback() as totals:
        await model.ainvoke("hi")
        [chunk async for chunk in model.astream("hi")]

    assert totals.calls == 2
    assert len(memory_backend.records) == 2
