"""WeckrAgentMiddleware: caps around each model call of a ``create_agent`` agent, a
cheaper model for one call when the cap says downgrade, and one record per call."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

import pytest
from langchain.agents import create_agent
from langchain_core.callbacks import BaseCallbackHandler, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.runnables import RunnableConfig
from pydantic import ConfigDict, Field

from tests.langchain.fakes import ScriptedChatModel, counting_tool, usage
from weckr_core import (
    MemoryBackend,
    WeckrCapError,
    WeckrDowngradeWarning,
    WeckrLoopError,
    attribute,
)
from weckr_langchain import (
    DOWNGRADE_SKIPPED_TAG,
    AsyncWeckrHandler,
    WeckrAgentMiddleware,
    WeckrHandler,
    weckr_callback,
)


def agent_run(
    model: BaseChatModel,
    middleware: WeckrAgentMiddleware,
    *,
    callbacks: Sequence[BaseCallbackHandler] = (),
    tools: bool = True,
    **config: Any,
) -> dict[str, Any]:
    agent = create_agent(
        model, tools=[counting_tool()[0]] if tools else [], middleware=[middleware], name="helper"
    )
    run_config: RunnableConfig = {"callbacks": list(callbacks), **config}  # type: ignore[typeddict-item]
    result: dict[str, Any] = agent.invoke({"messages": [HumanMessage("find it")]}, run_config)
    return result


async def agent_arun(
    model: BaseChatModel,
    middleware: WeckrAgentMiddleware,
    *,
    callbacks: Sequence[BaseCallbackHandler] = (),
    **config: Any,
) -> dict[str, Any]:
    agent = create_agent(model, tools=[counting_tool()[0]], middleware=[middleware])
    run_config: RunnableConfig = {"callbacks": list(callbacks), **config}  # type: ignore[typeddict-item]
    result: dict[str, Any] = await agent.ainvoke(
        {"messages": [HumanMessage("find it")]}, run_config
    )
    return result


def over_the_cap(backend: MemoryBackend, user: str, action: str = "downgrade") -> dict[str, Any]:
    backend.set_cap("pro", "1.00", action="downgrade" if action == "downgrade" else "block")
    backend.set_spend(user, "2.00")
    return {"user_id": user, "plan": "pro"}


def test_a_call_under_the_cap_is_reserved_and_recorded(memory_backend: MemoryBackend) -> None:
    memory_backend.set_cap("pro", "5.00")
    model = ScriptedChatModel(
        tool="search", vary_args=True, tool_turns=1, usage_metadata=usage(90, 15)
    )
    held: list[Decimal] = []
    model.during_call = lambda: held.append(memory_backend.in_flight("fine-user"))
    root = uuid.uuid4()

    agent_run(
        model,
        WeckrAgentMiddleware(feature="help"),
        metadata={"user_id": "fine-user", "plan": "pro"},
        run_id=root,
    )

    records = memory_backend.records
    assert model.called_as == ["gpt-4o", "gpt-4o"]
    assert len(records) == memory_backend.check_calls == 2
    assert all(amount > 0 for amount in held)
    first = records[0]
    assert (first.user_id, first.plan, first.feature) == ("fine-user", "pro", "help")
    assert (first.model, first.requested_model, first.provider) == ("gpt-4o", None, "openai")
    assert (first.source, first.status) == ("langchain", "ok")
    assert (first.input_tokens, first.output_tokens) == (90, 15)
    assert (first.run_id, first.agent) == (str(root), "helper")
    assert [record.step for record in records] == ["1:model", "3:model"]
    assert all(record.reservation_id is not None for record in records)
    assert memory_backend.in_flight("fine-user") == 0
    assert memory_backend.spend("fine-user") == sum(
        (record.cost_usd or Decimal(0) for record in records), Decimal(0)
    )


def test_over_the_cap_the_call_runs_on_the_cheaper_model(memory_backend: MemoryBackend) -> None:
    model = ScriptedChatModel(model="gpt-4o", tool="search", vary_args=True, tool_turns=1)

    with pytest.warns(WeckrDowngradeWarning, match="from gpt-4o to gpt-4o-mini") as warned:
        agent_run(
            model,
            WeckrAgentMiddleware(),
            metadata=over_the_cap(memory_backend, "downgraded-user"),
        )
    # At the line that ran the agent (in ``agent_run``), past LangGraph's frames.
    assert [w.filename for w in warned] == [__file__]

    assert model.called_as == ["gpt-4o-mini", "gpt-4o-mini"]
    records = memory_backend.records
    assert [(record.requested_model, record.model) for record in records] == [
        ("gpt-4o", "gpt-4o-mini"),
        ("gpt-4o", "gpt-4o-mini"),
    ]
    assert all(DOWNGRADE_SKIPPED_TAG not in record.tags for record in records)
    assert memory_backend.in_flight("downgraded-user") == 0
    # The agent's own model is left as it was, for the next user.
    assert model.model == "gpt-4o"


def test_a_model_given_for_the_downgrade_is_used(memory_backend: MemoryBackend) -> None:
    model = ScriptedChatModel(model="gpt-4o")
    cheaper = ScriptedChatModel(model="gpt-4o-mini", served_model="gpt-4o-mini-2024-07-18")
    middleware = WeckrAgentMiddleware(models={"gpt-4o": cheaper})

    with pytest.warns(WeckrDowngradeWarning):
        agent_run(model, middleware, metadata=over_the_cap(memory_backend, "mapped-user"))

    assert (model.called_as, cheaper.called_as) == ([], ["gpt-4o-mini"])
    (record,) = memory_backend.records
    assert (record.requested_model, record.model) == ("gpt-4o", "gpt-4o-mini-2024-07-18")


class OpenAIShapedChatModel(BaseChatModel):
    """Names its model as ChatOpenAI does: field ``model_name``, alias ``model``."""

    model_config = ConfigDict(populate_by_name=True)

    model_name: str = Field(default="gpt-4o", alias="model")
    temperature: float = 0.3
    called_as: list[tuple[str, float]] = Field(default_factory=list)

    @property
    def _llm_type(self) -> str:
        return "openai-shaped-chat"

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        self.called_as.append((self.model_name, self.temperature))
        reply = AIMessage(
            "done", usage_metadata=usage(), response_metadata={"model_name": self.model_name}
        )
        return ChatResult(generations=[ChatGeneration(message=reply)])


def test_the_cheaper_model_keeps_every_other_setting(memory_backend: MemoryBackend) -> None:
    model = OpenAIShapedChatModel(model="gpt-4o", temperature=0.3)

    with pytest.warns(WeckrDowngradeWarning):
        agent_run(
            model,
            WeckrAgentMiddleware(),
            tools=False,
            metadata=over_the_cap(memory_backend, "aliased-user"),
        )

    assert model.called_as == [("gpt-4o-mini", 0.3)]
    (record,) = memory_backend.records
    assert (record.requested_model, record.model) == ("gpt-4o", "gpt-4o-mini")


class DeployedChatModel(ScriptedChatModel):
    """A deployment, not the model name, picks what serves the call (Azure OpenAI)."""

    deployment_name: str = "prod-gpt-4o"


def test_a_model_that_cannot_be_swapped_runs_as_requested(memory_backend: MemoryBackend) -> None:
    model = DeployedChatModel(model="gpt-4o")

    with pytest.warns(WeckrDowngradeWarning, match=r"Pass models=\{'gpt-4o'"):
        agent_run(
            model,
            WeckrAgentMiddleware(),
            tools=False,
            metadata=over_the_cap(memory_backend, "deployed-user"),
        )

    assert model.called_as == ["gpt-4o"]
    (record,) = memory_backend.records
    assert (record.requested_model, record.model) == (None, "gpt-4o")
    assert DOWNGRADE_SKIPPED_TAG in record.tags
    assert memory_backend.in_flight("deployed-user") == 0


def test_a_blocked_user_is_refused_before_the_model_is_called(
    memory_backend: MemoryBackend, caplog: pytest.LogCaptureFixture
) -> None:
    model = ScriptedChatModel()

    with caplog.at_level(logging.WARNING), pytest.raises(WeckrCapError) as refused:
        agent_run(
            model,
            WeckrAgentMiddleware(),
            metadata=over_the_cap(memory_backend, "blocked-user", action="block"),
        )

    assert (refused.value.user_id, refused.value.cap) == ("blocked-user", Decimal("1.00"))
    assert model.called_as == []
    assert memory_backend.records == []
    assert memory_backend.in_flight("blocked-user") == 0
    assert not [record for record in caplog.records if record.levelno >= logging.WARNING]


def test_downgrade_as_block_refuses_and_holds_nothing(memory_backend: MemoryBackend) -> None:
    model = ScriptedChatModel()

    with pytest.raises(WeckrCapError):
        agent_run(
            model,
            WeckrAgentMiddleware(downgrade_as_block=True),
            metadata=over_the_cap(memory_backend, "strict-user"),
        )

    assert model.called_as == []
    assert memory_backend.in_flight("strict-user") == 0


def test_a_failed_model_call_is_an_error_row_that_costs_nothing(
    memory_backend: MemoryBackend,
) -> None:
    memory_backend.set_cap("pro", "5.00")
    model = ScriptedChatModel(fail_with=TimeoutError)

    with pytest.raises(TimeoutError):
        agent_run(model, WeckrAgentMiddleware(user_id="failing-user", plan="pro"))

    (record,) = memory_backend.records
    assert (record.status, record.error_type, record.usage_reported) == (
        "error",
        "TimeoutError",
        False,
    )
    assert record.reservation_id is not None
    assert memory_backend.in_flight("failing-user") == 0
    assert memory_backend.spend("failing-user") == 0


def test_attribution_arguments_then_metadata_then_context(memory_backend: MemoryBackend) -> None:
    model = ScriptedChatModel()
    metadata = {"user_id": 7, "plan": "meta-plan", "account_id": "meta-account"}
    context = {"user_id": "ctx-user", "plan": "ctx-plan", "feature": "ctx-feature"}

    with attribute(**context, tags=["web"], account_id="ctx-account"):
        middleware = WeckrAgentMiddleware(user_id="arg-user", tags=["beta"], account_id="arg-acct")
        agent_run(model, middleware, metadata=metadata)
        agent_run(model, WeckrAgentMiddleware(), metadata=metadata)
        agent_run(model, WeckrAgentMiddleware())

    first, second, third = memory_backend.records
    accounts = [record.account_id for record in (first, second, third)]
    assert accounts == ["arg-acct", "meta-account", "ctx-account"]
    assert (first.user_id, first.plan, first.feature) == ("arg-user", "meta-plan", "ctx-feature")
    assert first.tags == ("beta", "web")
    assert (second.user_id, second.plan) == ("7", "meta-plan")
    assert (third.user_id, third.plan, third.feature) == ("ctx-user", "ctx-plan", "ctx-feature")


# With a handler on the same run: the middleware reserves and records each model call,
# the handler keeps its loop guards and totals.


def test_with_a_handler_each_call_is_reserved_and_recorded_once(
    memory_backend: MemoryBackend,
) -> None:
    memory_backend.set_cap("pro", "5.00")
    model = ScriptedChatModel(tool="search", vary_args=True, tool_turns=2)
    handler = WeckrHandler(feature="handler-feature")

    agent_run(
        model,
        WeckrAgentMiddleware(feature="middleware-feature"),
        callbacks=[handler],
        metadata={"user_id": "both-user", "plan": "pro"},
    )

    records = memory_backend.records
    assert model.calls == len(records) == memory_backend.check_calls == 3
    assert {record.feature for record in records} == {"middleware-feature"}
    assert memory_backend.in_flight("both-user") == 0
    assert handler.tracker.open_runs == 0


def test_with_a_handler_the_downgraded_call_is_recorded_once(
    memory_backend: MemoryBackend,
) -> None:
    model = ScriptedChatModel(model="gpt-4o")

    with pytest.warns(WeckrDowngradeWarning), weckr_callback() as totals:
        agent_run(
            model,
            WeckrAgentMiddleware(),
            callbacks=[WeckrHandler()],
            tools=False,
            metadata=over_the_cap(memory_backend, "both-downgraded"),
        )

    (record,) = memory_backend.records
    assert (record.requested_model, record.model) == ("gpt-4o", "gpt-4o-mini")
    assert DOWNGRADE_SKIPPED_TAG not in record.tags
    assert (totals.calls, list(totals.by_model)) == (1, ["gpt-4o-mini"])


def test_the_handler_keeps_its_loop_guards(memory_backend: MemoryBackend) -> None:
    memory_backend.set_cap("pro", "5.00")
    model = ScriptedChatModel(tool="search", vary_args=True)

    with pytest.raises(WeckrLoopError):
        agent_run(
            model,
            WeckrAgentMiddleware(user_id="guarded-user", plan="pro"),
            callbacks=[WeckrHandler(max_llm_calls=2)],
        )

    # The third call was reserved, then refused by the guard: released, not recorded.
    assert model.calls == len(memory_backend.records) == 2
    assert memory_backend.check_calls == 3
    assert memory_backend.in_flight("guarded-user") == 0


# ``ainvoke``


async def test_async_over_the_cap_the_call_runs_on_the_cheaper_model(
    memory_backend: MemoryBackend,
) -> None:
    model = ScriptedChatModel(model="gpt-4o", tool="search", vary_args=True, tool_turns=1)

    with pytest.warns(WeckrDowngradeWarning):
        await agent_arun(
            model,
            WeckrAgentMiddleware(),
            callbacks=[AsyncWeckrHandler()],
            metadata=over_the_cap(memory_backend, "async-downgraded"),
        )

    assert model.called_as == ["gpt-4o-mini", "gpt-4o-mini"]
    records = memory_backend.records
    assert [(record.requested_model, record.model) for record in records] == [
        ("gpt-4o", "gpt-4o-mini"),
        ("gpt-4o", "gpt-4o-mini"),
    ]
    assert memory_backend.check_calls == 2
    assert memory_backend.in_flight("async-downgraded") == 0


async def test_async_a_blocked_user_is_refused_before_the_model_is_called(
    memory_backend: MemoryBackend,
) -> None:
    model = ScriptedChatModel()

    with pytest.raises(WeckrCapError):
        await agent_arun(
            model,
            WeckrAgentMiddleware(),
            metadata=over_the_cap(memory_backend, "async-blocked", action="block"),
        )

    assert model.called_as == []
    assert memory_backend.records == []
    assert memory_backend.in_flight("async-blocked") == 0


async def test_async_with_a_handler_each_call_is_recorded_once(
    memory_backend: MemoryBackend,
) -> None:
    memory_backend.set_cap("pro", "5.00")
    model = ScriptedChatModel(tool="search", vary_args=True, tool_turns=2)

    await agent_arun(
        model,
        WeckrAgentMiddleware(user_id="async-both", plan="pro"),
        callbacks=[AsyncWeckrHandler(), WeckrHandler()],
    )

    assert model.calls == len(memory_backend.records) == memory_backend.check_calls == 3
    assert memory_backend.in_flight("async-both") == 0
