from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest
from crewai import Agent, Crew, Task
from crewai.hooks import HookAborted
from crewai.tools import BaseTool, tool

from tests.crewai.fakes import FINAL_ANSWER, TOOL_CALL, Reply, ScriptedLLM
from weckr_core import (
    MemoryBackend,
    UsageRecord,
    WeckrCapError,
    WeckrLoopError,
    attribute,
    is_weckr_cap_error,
    price_usage,
)
from weckr_crewai import WeckrCrew

MODEL = "gpt-4o-mini"
SAME_LOOKUP = TOOL_CALL.format(tool="lookup", arguments='{"query": "tides"}')


def cost_of(reply: Reply) -> Decimal:
    cost = price_usage(
        MODEL,
        input_tokens=reply.prompt_tokens,
        output_tokens=reply.completion_tokens,
        cached_input_tokens=reply.cached_tokens,
        reasoning_tokens=reply.reasoning_tokens,
        provider="openai",
    )
    assert cost.priced and cost.usd > 0
    return cost.usd


def lookup_tool(executions: list[str]) -> BaseTool:
    @tool("lookup")
    def lookup(query: str) -> str:
        """Look a fact up."""
        executions.append(query)
        return f"fact number {len(executions)}"

    return lookup


def research_then_write(role: str | None, index: int) -> Reply:
    if role == "researcher" and index == 0:
        return Reply(SAME_LOOKUP, 900, 60, cached_tokens=300)
    if role == "researcher":
        return Reply(FINAL_ANSWER.format(answer="notes"), 1100, 120, 300, reasoning_tokens=40)
    return Reply(FINAL_ANSWER.format(answer="article"), 700, 400, reasoning_tokens=100)


def looping(role: str | None, index: int) -> Reply:
    return Reply(SAME_LOOKUP, 500, 50)


def finish_on_seventh_call(role: str | None, index: int) -> Reply:
    if index < 6:
        return looping(role, index)
    return Reply(FINAL_ANSWER.format(answer="done"), 500, 50)


def two_agent_crew(llm: ScriptedLLM) -> Crew:
    researcher = Agent(
        role="researcher",
        goal="Find facts",
        backstory="Careful.",
        llm=llm,
        tools=[lookup_tool([])],
    )
    writer = Agent(role="writer", goal="Write", backstory="Clear.", llm=llm)
    research = Task(
        name="research", description="Research {topic}", expected_output="Notes", agent=researcher
    )
    # No name: the label is the description template, not the interpolated text.
    write = Task(description="Write about {topic}", expected_output="An article", agent=writer)
    return Crew(agents=[researcher, writer], tasks=[research, write])


def runaway_crew(llm: ScriptedLLM, executions: list[str]) -> Crew:
    agent = Agent(
        role="looper",
        goal="Look things up",
        backstory="Never satisfied.",
        llm=llm,
        tools=[lookup_tool(executions)],
        max_iter=40,
    )
    task = Task(name="loop", description="Find everything", expected_output="Facts", agent=agent)
    return Crew(agents=[agent], tasks=[task])


def task_labels(crew: Crew) -> dict[str, str]:
    return {str(task.id): task.name or task.description for task in crew.tasks}


def sums(
    items: list[Any], key: Callable[[Any], Any], value: Callable[[Any], Any]
) -> dict[Any, Any]:
    totals: dict[Any, Any] = defaultdict(Decimal)
    for item in items:
        totals[key(item)] += value(item)
    return dict(totals)


def cost(records: list[UsageRecord]) -> Decimal:
    assert all(record.cost_usd is not None for record in records)
    return sum((record.cost_usd or Decimal(0) for record in records), Decimal(0))


def test_cost_per_agent_and_task_with_one_shared_llm(memory_backend: MemoryBackend) -> None:
    llm = ScriptedLLM(research_then_write)
    crew = two_agent_crew(llm)
    weckr = WeckrCrew(feature="research", user_id="u1", plan="pro", tags=["beta"], account_id=9)
    weckr.attach(crew)
    # Taken before the kickoff interpolates the descriptions: labels are the templates.
    labels = task_labels(crew)

    crew.kickoff(inputs={"topic": "tides"})

    calls = llm.calls
    records = memory_backend.records
    assert len(records) == len(calls) == 3
    assert sums(records, lambda r: r.agent, lambda r: r.cost_usd) == sums(
        calls, lambda c: c.agent, lambda c: cost_of(c.reply)
    )
    assert sums(records, lambda r: r.task, lambda r: r.cost_usd) == sums(
        calls, lambda c: labels[c.task_id], lambda c: cost_of(c.reply)
    )
    assert set(labels.values()) == {"research", "Write about {topic}"}
    assert cost(records) == sum((cost_of(c.reply) for c in calls), Decimal(0))

    assert {r.run_id for r in records} == {memory_backend.records[0].run_id}
    assert sorted(int(r.step or 0) for r in records) == [1, 2, 3]
    assert {(r.user_id, r.plan, r.feature, r.tags, r.source) for r in records} == {
        ("u1", "pro", "research", ("beta",), "crewai")
    }
    assert {r.account_id for r in records} == {"9"}
    assert {(r.model, r.provider) for r in records} == {(MODEL, "openai")}
    # One thread, one call at a time: steps follow the provider's call order.
    for record, call in zip(sorted(records, key=lambda r: int(r.step or 0)), calls, strict=True):
        assert record.agent == call.agent
        assert (record.input_tokens, record.output_tokens) == (
            call.reply.prompt_tokens,
            call.reply.completion_tokens,
        )
        assert record.cached_input_tokens == call.reply.cached_tokens
        assert record.reasoning_tokens == call.reply.reasoning_tokens

    # CrewAI adds every agent's LLM lifetime counter: one LLM shared by two agents
    # is counted twice.
    true_total = sum(c.reply.prompt_tokens + c.reply.completion_tokens for c in calls)
    assert crew.usage_metrics is not None
    assert crew.usage_metrics.total_tokens == 2 * true_total
    assert sum(r.total_tokens for r in records) == true_total


def test_a_second_kickoff_is_counted_on_its_own(memory_backend: MemoryBackend) -> None:
    llm = ScriptedLLM(research_then_write)
    crew = two_agent_crew(llm)
    weckr = WeckrCrew(feature="research")
    weckr.attach(crew)

    crew.kickoff(inputs={"topic": "tides"})
    first_calls = len(llm.calls)
    first_run = weckr.last_run
    crew.kickoff(inputs={"topic": "moons"})
    second_run = weckr.last_run

    assert first_run is not None and second_run is not None
    assert first_run.run_id != second_run.run_id
    runs = sums(memory_backend.records, lambda r: r.run_id, lambda r: r.cost_usd)
    calls = llm.calls
    assert runs == {
        first_run.run_id: sum((cost_of(c.reply) for c in calls[:first_calls]), Decimal(0)),
        second_run.run_id: sum((cost_of(c.reply) for c in calls[first_calls:]), Decimal(0)),
    }
    assert (first_run.llm_calls, second_run.llm_calls) == (first_calls, len(calls) - first_calls)
    assert second_run.cost == runs[second_run.run_id]
    # The lifetime counters keep growing across kickoffs (and double count here).
    assert crew.usage_metrics is not None
    true_total = sum(c.reply.prompt_tokens + c.reply.completion_tokens for c in calls)
    assert crew.usage_metrics.total_tokens == 2 * true_total


def test_max_llm_calls_stops_a_runaway_agent_at_the_limit(memory_backend: MemoryBackend) -> None:
    llm = ScriptedLLM(looping)
    crew = runaway_crew(llm, [])
    WeckrCrew(max_llm_calls=5).attach(crew)

    with pytest.raises(WeckrLoopError) as stopped:
        crew.kickoff()

    assert len(llm.calls) == 5
    assert len(memory_backend.records) == 5
    assert "max_llm_calls=5" in stopped.value.reason
    assert stopped.value.llm_calls == 5
    assert isinstance(stopped.value, HookAborted)
    assert is_weckr_cap_error(stopped.value)
    # The refused call has no record; the stop is kept for the dashboard.
    [stop] = memory_backend.run_stops
    assert (stop.run_id, stop.source, stop.llm_calls) == (
        memory_backend.records[0].run_id,
        "crewai",
        5,
    )
    assert stop.agent is not None


def test_max_cost_usd_stops_a_runaway_agent_at_the_limit(memory_backend: MemoryBackend) -> None:
    llm = ScriptedLLM(looping)
    crew = runaway_crew(llm, [])
    per_call = cost_of(looping(None, 0))
    WeckrCrew(max_cost_usd=per_call * 3).attach(crew)

    with pytest.raises(WeckrLoopError) as stopped:
        crew.kickoff()

    # Three calls reach the limit exactly; the fourth is refused before the provider.
    assert len(llm.calls) == 3
    assert cost(memory_backend.records) == per_call * 3 == stopped.value.cost
    assert "max_cost_usd" in stopped.value.reason


def test_max_tokens_stops_a_runaway_agent_at_the_limit(memory_backend: MemoryBackend) -> None:
    llm = ScriptedLLM(looping)
    crew = runaway_crew(llm, [])
    reply = looping(None, 0)
    WeckrCrew(max_tokens=2 * (reply.prompt_tokens + reply.completion_tokens) + 1).attach(crew)

    with pytest.raises(WeckrLoopError):
        crew.kickoff()

    assert len(llm.calls) == 3


def test_repeated_tool_guard_stops_the_fourth_identical_call(
    memory_backend: MemoryBackend,
) -> None:
    llm = ScriptedLLM(looping)
    crew = runaway_crew(llm, [])
    weckr = WeckrCrew(max_repeated_tool_calls=3)
    weckr.attach(crew)

    with pytest.raises(WeckrLoopError) as stopped:
        crew.kickoff()

    # Calls 1-3 each ask for the tool and get it; call 4 asks again and is refused
    # at the tool, and the kickoff stops before a fifth provider call.
    assert len(llm.calls) == 4
    assert len(memory_backend.records) == 4
    assert "max_repeated_tool_calls=3" in stopped.value.reason
    assert [stop.reason for stop in memory_backend.run_stops] == [stopped.value.reason]
    assert weckr.last_run is not None and weckr.last_run.tool_calls == ["lookup"] * 4


def test_a_user_over_the_cap_is_stopped_before_the_first_provider_call(
    memory_backend: MemoryBackend,
) -> None:
    memory_backend.set_cap("free", "1.00")
    memory_backend.set_spend("u-capped", "1.00")
    llm = ScriptedLLM(research_then_write)
    crew = two_agent_crew(llm)
    WeckrCrew(feature="research").attach(crew)

    with attribute(user_id="u-capped", plan="free"), pytest.raises(WeckrCapError) as stopped:
        crew.kickoff(inputs={"topic": "tides"})

    assert llm.calls == []
    assert memory_backend.records == []
    assert not isinstance(stopped.value, WeckrLoopError)
    assert (stopped.value.user_id, stopped.value.plan_name) == ("u-capped", "free")
    assert stopped.value.cap == Decimal("1.00")


class HoldWatchingLLM(ScriptedLLM):
    """Notes what the user's budget holds while each call runs."""

    def __init__(self, backend: MemoryBackend) -> None:
        super().__init__(research_then_write, max_tokens=400)
        self._backend = backend
        self._seen: list[Decimal] = []

    def call(self, *args: Any, **kwargs: Any) -> Any:
        self._seen.append(self._backend.in_flight("u1"))
        return super().call(*args, **kwargs)


def test_each_call_holds_its_estimate_and_is_settled_with_its_usage(
    memory_backend: MemoryBackend,
) -> None:
    memory_backend.set_cap("pro", "5")
    llm = HoldWatchingLLM(memory_backend)
    crew = two_agent_crew(llm)
    WeckrCrew(feature="research", user_id="u1", plan="pro").attach(crew)

    crew.kickoff(inputs={"topic": "tides"})

    # During each call its own hold (its messages and max_tokens=400, priced) counts.
    assert len(llm._seen) == len(llm.calls) == 3
    assert all(
        held > price_usage(MODEL, input_tokens=0, output_tokens=400).usd for held in llm._seen
    )
    # After the kickoff nothing is held, and the spend is the calls' real cost.
    assert memory_backend.in_flight("u1") == 0
    assert memory_backend.spend("u1") == sum((cost_of(c.reply) for c in llm.calls), Decimal(0))
    assert all(record.reservation_id for record in memory_backend.records)


def test_two_crews_in_two_threads_keep_their_own_guards_and_attribution() -> None:
    backend = MemoryBackend()
    both_running = threading.Barrier(2, timeout=10)

    def in_step(script: Callable[[str | None, int], Reply]) -> Callable[[str | None, int], Reply]:
        def scripted(role: str | None, index: int) -> Reply:
            if index == 1:
                both_running.wait()
            return script(role, index)

        return scripted

    looping_llm = ScriptedLLM(in_step(looping))
    finishing_llm = ScriptedLLM(in_step(finish_on_seventh_call))
    looper = runaway_crew(looping_llm, [])
    finisher = runaway_crew(finishing_llm, [])
    WeckrCrew(feature="loop", max_llm_calls=3, backend=backend).attach(looper)
    WeckrCrew(feature="finish", max_llm_calls=20, backend=backend).attach(finisher)
    outcomes: dict[str, BaseException | None] = {}

    def run(name: str, crew: Crew, user: str) -> None:
        with attribute(user_id=user, plan="pro"):
            try:
                crew.kickoff()
                outcomes[name] = None
            except BaseException as error:
                outcomes[name] = error

    threads = [
        threading.Thread(target=run, args=("loop", looper, "ann")),
        threading.Thread(target=run, args=("finish", finisher, "bob")),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)

    assert isinstance(outcomes["loop"], WeckrLoopError)
    assert outcomes["finish"] is None
    assert len(looping_llm.calls) == 3
    assert len(finishing_llm.calls) == 7
    by_feature = sums(backend.records, lambda r: (r.feature, r.user_id), lambda r: 1)
    assert by_feature == {("loop", "ann"): 3, ("finish", "bob"): 7}
    assert len({r.run_id for r in backend.records}) == 2
