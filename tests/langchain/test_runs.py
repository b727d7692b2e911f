"""One record per LLM run, attributed to its root run, step and user."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from langchain_core.language_models.fake import FakeListLLM
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import Runnable, RunnableConfig, RunnableLambda, RunnableParallel

from tests.langchain.fakes import ScriptedChatModel, run_agent, usage
from weckr_core import MemoryBackend, WeckrConfigError, attribute
from weckr_core.backends import Backend, CapDecision, CapRequest
from weckr_core.records import UsageRecord
from weckr_langchain import WeckrHandler


def summarize_chain(model: ScriptedChatModel) -> Any:
    prompt = ChatPromptTemplate.from_messages([("user", "Summarize: {text}")])
    return (prompt | model | StrOutputParser()).with_config(run_name="summarize")


def test_a_bare_model_call_is_its_own_root(memory_backend: MemoryBackend) -> None:
    model = ScriptedChatModel(usage_metadata=usage(321, 45))
    handler = WeckrHandler(feature="chat")
    run_id = uuid.uuid4()

    model.invoke("hi", {"callbacks": [handler], "run_id": run_id})

    (record,) = memory_backend.records
    assert record.source == "langchain"
    assert (record.run_id, record.parent_run_id) == (str(run_id), None)
    assert (record.model, record.provider) == ("gpt-4o", "openai")
    assert (record.input_tokens, record.output_tokens) == (321, 45)
    assert record.usage_reported
    assert record.status == "ok"
    assert record.feature == "chat"
    assert record.latency_ms is not None
    assert handler.tracker.open_runs == 0


def test_nested_chains_record_each_model_call_once(memory_backend: MemoryBackend) -> None:
    model = ScriptedChatModel()
    inner = summarize_chain(model)
    outer: Runnable[Any, str] = (
        RunnableLambda(lambda text: {"text": text})
        | RunnableParallel(first=inner, second=inner)
        | RunnableLambda(lambda both: f"{both['first']} / {both['second']}")
    )
    handler = WeckrHandler()
    root_id = uuid.uuid4()

    assert outer.invoke("a long text", {"callbacks": [handler], "run_id": root_id}) == (
        "done / done"
    )

    records = memory_backend.records
    assert model.calls == 2
    assert len(records) == 2
    assert {record.run_id for record in records} == {str(root_id)}
    assert {record.agent for record in records} == {"summarize"}
    assert all(record.step is None for record in records)
    assert len({record.parent_run_id for record in records}) == 2
    assert handler.tracker.open_runs == 0


def test_the_same_handler_attached_twice_records_once(memory_backend: MemoryBackend) -> None:
    handler = WeckrHandler()
    model = ScriptedChatModel(callbacks=[handler])

    summarize_chain(model).invoke({"text": "x"}, {"callbacks": [handler]})

    assert len(memory_backend.records) == 1


def test_agent_steps_are_attributed(memory_backend: MemoryBackend) -> None:
    model = ScriptedChatModel(tool="search", vary_args=True, tool_turns=2)
    handler = WeckrHandler()
    root_id = uuid.uuid4()

    result = run_agent(model, handler, name="researcher", run_id=root_id)

    assert result["messages"][-1].content == "done"
    records = memory_backend.records
    assert len(records) == model.calls == 3
    assert {record.run_id for record in records} == {str(root_id)}
    assert {record.agent for record in records} == {"researcher"}
    steps = [record.step for record in records]
    assert all(step is not None and step.endswith(":model") for step in steps)
    numbers = [int(step.split(":")[0]) for step in steps if step]
    assert numbers == sorted(set(numbers))
    # Tools called so far in the run, as tags.
    assert [record.tags for record in records] == [(), ("tool:search",), ("tool:search",)]
    assert all(record.parent_run_id not in (None, str(root_id)) for record in records)
    assert handler.tracker.open_runs == 0


def test_agent_without_a_name_is_attributed_to_the_graph_node(
    memory_backend: MemoryBackend,
) -> None:
    run_agent(ScriptedChatModel(), WeckrHandler())

    (record,) = memory_backend.records
    assert record.agent == "model"


def test_attribution_handler_then_metadata_then_context(memory_backend: MemoryBackend) -> None:
    model = ScriptedChatModel()
    metadata = {"plan": "meta-plan", "user_id": 7, "account_id": "meta-account"}
    config: RunnableConfig = {"metadata": metadata}
    context = {"user_id": "ctx-user", "plan": "ctx-plan", "feature": "ctx-feature"}

    with attribute(**context, tags=["web"], account_id="ctx-account"):
        handler = WeckrHandler(user_id="arg-user", account_id="arg-account")
        model.invoke("hi", {**config, "callbacks": [handler]})
        model.invoke("hi", {**config, "callbacks": [WeckrHandler()]})
        model.invoke("hi", {"callbacks": [WeckrHandler(tags=["beta"])]})

    first, second, third = memory_backend.records
    assert (first.user_id, first.plan, first.feature) == ("arg-user", "meta-plan", "ctx-feature")
    assert (second.user_id, second.plan) == ("7", "meta-plan")
    assert (third.user_id, third.plan, third.feature) == ("ctx-user", "ctx-plan", "ctx-feature")
    assert third.tags == ("beta", "web")
    accounts = [record.account_id for record in (first, second, third)]
    assert accounts == ["arg-account", "meta-account", "ctx-account"]


def test_batch_records_every_call_with_the_callers_attribution(
    memory_backend: MemoryBackend,
) -> None:
    model = ScriptedChatModel()

    with attribute(user_id="batch-user", plan="pro"):
        model.batch(["a", "b", "c"], {"callbacks": [WeckrHandler()]})

    records = memory_backend.records
    assert model.calls == 3
    assert len(records) == 3
    assert len({record.run_id for record in records}) == 3
    assert {(record.user_id, record.plan) for record in records} == {("batch-user", "pro")}


def test_stream_records_the_full_usage_once(memory_backend: MemoryBackend) -> None:
    model = ScriptedChatModel(usage_metadata=usage(250, 60), served_model="gpt-4o-2024-08-06")

    text = "".join(
        str(chunk.content) for chunk in model.stream("hi", {"callbacks": [WeckrHandler()]})
    )

    assert text == "done"
    (record,) = memory_backend.records
    assert (record.input_tokens, record.output_tokens) == (250, 60)
    assert record.model == "gpt-4o-2024-08-06"
    assert record.usage_reported


def test_a_stream_without_usage_is_flagged_not_counted_as_free(
    memory_backend: MemoryBackend,
) -> None:
    model = ScriptedChatModel(usage_metadata=None)

    list(model.stream("hi", {"callbacks": [WeckrHandler()]}))

    (record,) = memory_backend.records
    assert record.usage_reported is False
    assert record.total_tokens == 0
    assert record.model == "gpt-4o"


def test_legacy_llm_output_token_usage_is_read(memory_backend: MemoryBackend) -> None:
    token_usage = {
        "prompt_tokens": 900,
        "completion_tokens": 80,
        "total_tokens": 980,
        "prompt_tokens_details": {"cached_tokens": 512},
        "completion_tokens_details": {"reasoning_tokens": 30},
    }
    model = ScriptedChatModel(legacy_token_usage=token_usage)

    model.invoke("hi", {"callbacks": [WeckrHandler()]})

    (record,) = memory_backend.records
    assert (record.input_tokens, record.cached_input_tokens) == (900, 512)
    assert (record.output_tokens, record.reasoning_tokens) == (80, 30)
    assert record.usage_reported


def test_a_failed_call_is_an_error_row(memory_backend: MemoryBackend) -> None:
    model = ScriptedChatModel(fail_with=TimeoutError)
    handler = WeckrHandler(user_id="u-err")

    with pytest.raises(TimeoutError):
        summarize_chain(model).invoke({"text": "x"}, {"callbacks": [handler]})

    (record,) = memory_backend.records
    assert (record.status, record.error_type) == ("error", "TimeoutError")
    assert record.usage_reported is False
    assert record.user_id == "u-err"
    assert handler.tracker.open_runs == 0


class BrokenBackend(Backend):
    """A backend whose every call fails, as a misconfigured one would."""

    def __init__(self, error: Exception) -> None:
        self.error = error

    def reserve(self, request: CapRequest) -> CapDecision:
        raise self.error

    def record(self, record: UsageRecord) -> None:
        raise self.error


def test_a_failing_backend_never_breaks_the_app(caplog: pytest.LogCaptureFixture) -> None:
    model = ScriptedChatModel()
    handler = WeckrHandler(backend=BrokenBackend(RuntimeError("database is down")))

    assert summarize_chain(model).invoke({"text": "x"}, {"callbacks": [handler]}) == "done"

    assert model.calls == 1
    assert "database is down" in caplog.text
    assert handler.tracker.open_runs == 0


def test_a_configuration_error_fails_closed() -> None:
    model = ScriptedChatModel()
    handler = WeckrHandler(backend=BrokenBackend(WeckrConfigError("invalid_api_key")))

    with pytest.raises(WeckrConfigError):
        model.invoke("hi", {"callbacks": [handler]})

    assert model.calls == 0


def test_a_text_completion_llm_without_usage_is_flagged(memory_backend: MemoryBackend) -> None:
    llm = FakeListLLM(responses=["fine"])

    assert llm.invoke("hi", {"callbacks": [WeckrHandler(user_id="u-text")]}) == "fine"

    (record,) = memory_backend.records
    assert record.user_id == "u-text"
    assert record.usage_reported is False
    assert record.status == "ok"


def test_an_abandoned_stream_is_recorded_as_an_error_row(memory_backend: MemoryBackend) -> None:
    model = ScriptedChatModel()
    handler = WeckrHandler()

    for _chunk in model.stream("hi", {"callbacks": [handler]}):
        break

    (record,) = memory_backend.records
    assert (record.status, record.error_type) == ("error", "GeneratorExit")
    assert record.usage_reported is False
    assert handler.tracker.open_runs == 0
