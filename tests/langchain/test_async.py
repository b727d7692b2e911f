"""``ainvoke`` / ``astream`` / ``abatch``: the same records and the same stops."""

from __future__ import annotations

import uuid

import pytest
from langchain.agents import create_agent
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.messages import HumanMessage

from tests.langchain.fakes import ScriptedChatModel, counting_tool, usage
from weckr_core import MemoryBackend, WeckrCapError, WeckrLoopError, attribute
from weckr_langchain import AsyncWeckrHandler, WeckrHandler


async def arun_agent(model: ScriptedChatModel, handler: BaseCallbackHandler) -> None:
    agent = create_agent(model, tools=[counting_tool()[0]])
    await agent.ainvoke({"messages": [HumanMessage("find it")]}, {"callbacks": [handler]})


async def test_ainvoke_records_with_the_attribution_context(
    memory_backend: MemoryBackend,
) -> None:
    model = ScriptedChatModel(usage_metadata=usage(80, 12))
    handler = AsyncWeckrHandler(feature="async-chat")
    run_id = uuid.uuid4()

    with attribute(user_id="async-user", plan="pro"):
        await model.ainvoke("hi", {"callbacks": [handler], "run_id": run_id})

    (record,) = memory_backend.records
    assert (record.user_id, record.plan, record.feature) == ("async-user", "pro", "async-chat")
    assert (record.input_tokens, record.output_tokens) == (80, 12)
    assert record.run_id == str(run_id)
    assert handler.tracker.open_runs == 0


async def test_astream_records_the_full_usage(memory_backend: MemoryBackend) -> None:
    model = ScriptedChatModel(usage_metadata=usage(500, 70))

    chunks = [chunk async for chunk in model.astream("hi", {"callbacks": [AsyncWeckrHandler()]})]

    assert "".join(str(chunk.content) for chunk in chunks) == "done"
    (record,) = memory_backend.records
    assert (record.input_tokens, record.output_tokens) == (500, 70)


async def test_abatch_records_every_call(memory_backend: MemoryBackend) -> None:
    model = ScriptedChatModel()

    await model.abatch(["a", "b", "c", "d"], {"callbacks": [AsyncWeckrHandler()]})

    assert len(memory_backend.records) == model.calls == 4


@pytest.mark.parametrize("handler_class", [AsyncWeckrHandler, WeckrHandler])
async def test_async_agent_is_stopped_by_the_loop_guard(
    memory_backend: MemoryBackend, handler_class: type[WeckrHandler | AsyncWeckrHandler]
) -> None:
    model = ScriptedChatModel(tool="search", vary_args=True)
    handler = handler_class(max_llm_calls=4)

    with pytest.raises(WeckrLoopError):
        await arun_agent(model, handler)

    assert model.calls == 4
    assert len(memory_backend.records) == 4
    assert handler.tracker.open_runs == 0


async def test_async_repeated_tool_guard(memory_backend: MemoryBackend) -> None:
    model = ScriptedChatModel(tool="search")

    with pytest.raises(WeckrLoopError, match="max_repeated_tool_calls=2"):
        await arun_agent(model, AsyncWeckrHandler(max_repeated_tool_calls=2))

    assert model.calls == 3


async def test_async_cap_is_checked_before_the_provider(memory_backend: MemoryBackend) -> None:
    memory_backend.set_cap("free", "0.01")
    memory_backend.set_spend("async-capped", "0.02")
    model = ScriptedChatModel()

    with pytest.raises(WeckrCapError):
        await model.ainvoke(
            "hi", {"callbacks": [AsyncWeckrHandler(user_id="async-capped", plan="free")]}
        )

    assert model.calls == 0
    assert memory_backend.records == []
