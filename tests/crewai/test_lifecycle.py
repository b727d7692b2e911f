"""Attach, detach, copies, async kickoffs, parallel tasks and failed calls."""

from __future__ import annotations

import threading
from collections import Counter

import pytest
from crewai import Agent, Crew, Process, Task
from crewai.hooks import clear_all_hooks
from crewai.hooks.dispatch import InterceptionPoint, get_scoped_hooks

from tests.crewai.fakes import FINAL_ANSWER, Reply, ScriptedLLM
from weckr_core import MemoryBackend, attribute
from weckr_crewai import WeckrCrew


def answer_at_once(role: str | None, index: int) -> Reply:
    return Reply(FINAL_ANSWER.format(answer=f"{role} answer"), 400, 80, cached_tokens=100)


def one_agent_crew(llm: ScriptedLLM, role: str = "analyst", **agent_options: object) -> Crew:
    agent = Agent(role=role, goal="Answer", backstory="Brief.", llm=llm, **agent_options)
    task = Task(
        name="answer", description="Answer {question}", expected_output="A line", agent=agent
    )
    return Crew(agents=[agent], tasks=[task])


def test_the_hooks_go_away_with_the_kickoff(memory_backend: MemoryBackend) -> None:
    attached = one_agent_crew(ScriptedLLM(answer_at_once))
    WeckrCrew(feature="attached").attach(attached)
    other_llm = ScriptedLLM(answer_at_once)
    other = one_agent_crew(other_llm)

    attached.kickoff(inputs={"question": "why"})
    other.kickoff(inputs={"question": "why"})

    assert get_scoped_hooks(InterceptionPoint.PRE_MODEL_CALL) == []
    assert len(other_llm.calls) == 1
    assert [record.feature for record in memory_backend.records] == ["attached"]


def test_detach_stops_tracking(memory_backend: MemoryBackend) -> None:
    crew = one_agent_crew(ScriptedLLM(answer_at_once))
    WeckrCrew(max_llm_calls=1).attach(crew)
    WeckrCrew.detach(crew)

    crew.kickoff(inputs={"question": "why"})

    assert memory_backend.records == []


def test_attaching_again_replaces_the_previous_attachment(memory_backend: MemoryBackend) -> None:
    crew = one_agent_crew(ScriptedLLM(answer_at_once))
    WeckrCrew(feature="first").attach(crew)
    WeckrCrew(feature="second").attach(crew)

    crew.kickoff(inputs={"question": "why"})

    assert [record.feature for record in memory_backend.records] == ["second"]


def test_kickoff_for_each_tracks_every_copy(memory_backend: MemoryBackend) -> None:
    llm = ScriptedLLM(answer_at_once)
    crew = one_agent_crew(llm)
    WeckrCrew(feature="batch").attach(crew)

    crew.kickoff_for_each(inputs=[{"question": "why"}, {"question": "how"}])

    assert len(llm.calls) == 2
    runs = Counter(record.run_id for record in memory_backend.records)
    assert sorted(runs.values()) == [1, 1]


async def test_kickoff_async_keeps_the_callers_attribution(memory_backend: MemoryBackend) -> None:
    crew = one_agent_crew(ScriptedLLM(answer_at_once))
    WeckrCrew(feature="async").attach(crew)

    with attribute(user_id="u-async", plan="pro"):
        await crew.kickoff_async(inputs={"question": "why"})

    [record] = memory_backend.records
    assert (record.user_id, record.plan, record.feature) == ("u-async", "pro", "async")


async def test_native_async_kickoff_is_tracked(memory_backend: MemoryBackend) -> None:
    llm = ScriptedLLM(answer_at_once)
    crew = one_agent_crew(llm)
    WeckrCrew(feature="akickoff", max_llm_calls=3).attach(crew)

    await crew.akickoff(inputs={"question": "why"})

    assert len(memory_backend.records) == len(llm.calls) == 1


def test_attribution_captured_at_attach_reaches_a_kickoff_on_a_plain_thread(
    memory_backend: MemoryBackend,
) -> None:
    crew = one_agent_crew(ScriptedLLM(answer_at_once))
    with attribute(user_id="u-attach", plan="team"):
        WeckrCrew(feature="background").attach(crew)

    # A bare thread starts with an empty context.
    worker = threading.Thread(target=crew.kickoff, kwargs={"inputs": {"question": "why"}})
    worker.start()
    worker.join(30)

    [record] = memory_backend.records
    assert (record.user_id, record.plan) == ("u-attach", "team")


def test_arguments_win_over_the_context(memory_backend: MemoryBackend) -> None:
    crew = one_agent_crew(ScriptedLLM(answer_at_once))
    WeckrCrew(user_id="explicit", feature="args", tags=["crew"]).attach(crew)

    with attribute(user_id="from-request", plan="pro", feature="view", tags=["web"]):
        crew.kickoff(inputs={"question": "why"})

    [record] = memory_backend.records
    assert (record.user_id, record.plan, record.feature) == ("explicit", "pro", "args")
    assert record.tags == ("web", "crew")


def test_parallel_async_tasks_get_one_record_per_call(memory_backend: MemoryBackend) -> None:
    llm = ScriptedLLM(answer_at_once)
    researcher = Agent(role="researcher", goal="Find", backstory="Quick.", llm=llm)
    checker = Agent(role="checker", goal="Check", backstory="Quick.", llm=llm)
    writer = Agent(role="writer", goal="Write", backstory="Quick.", llm=llm)
    tasks = [
        Task(
            name="find",
            description="Find",
            expected_output="x",
            agent=researcher,
            async_execution=True,
        ),
        Task(
            name="check",
            description="Check",
            expected_output="x",
            agent=checker,
            async_execution=True,
        ),
        Task(name="write", description="Write", expected_output="x", agent=writer),
    ]
    crew = Crew(agents=[researcher, checker, writer], tasks=tasks)
    WeckrCrew(feature="parallel").attach(crew)

    crew.kickoff()

    records = memory_backend.records
    assert len(records) == len(llm.calls) == 3
    assert {(r.agent, r.task) for r in records} == {
        ("researcher", "find"),
        ("checker", "check"),
        ("writer", "write"),
    }
    assert sorted(int(r.step or 0) for r in records) == [1, 2, 3]
    assert len({r.run_id for r in records}) == 1


def test_a_failed_provider_call_is_recorded_as_an_error(memory_backend: MemoryBackend) -> None:
    def outage(role: str | None, index: int) -> Reply:
        raise ConnectionError("provider unreachable")

    crew = one_agent_crew(ScriptedLLM(outage), max_retry_limit=0)
    WeckrCrew(feature="outage").attach(crew)

    with pytest.raises(ConnectionError):
        crew.kickoff(inputs={"question": "why"})

    [record] = memory_backend.records
    assert (record.status, record.usage_reported, record.total_tokens) == ("error", False, 0)
    assert (record.agent, record.task, record.step) == ("analyst", "answer", "1")


def test_a_hierarchical_crews_manager_calls_are_its_own(memory_backend: MemoryBackend) -> None:
    manager_llm = ScriptedLLM(answer_at_once)
    worker = Agent(role="worker", goal="Work", backstory="Busy.", llm=ScriptedLLM(answer_at_once))
    crew = Crew(
        agents=[worker],
        tasks=[Task(name="plan", description="Plan", expected_output="A plan")],
        process=Process.hierarchical,
        manager_llm=manager_llm,
    )
    WeckrCrew(feature="managed").attach(crew)

    crew.kickoff()

    [record] = memory_backend.records
    assert len(manager_llm.calls) == 1
    assert (record.agent, record.task) == (manager_llm.calls[0].agent, "plan")


@pytest.mark.parametrize(
    ("options", "error"),
    [
        ({"max_llm_calls": 0}, ValueError),
        ({"max_cost_usd": "-1"}, ValueError),
        ({"tags": "beta"}, TypeError),
    ],
)
def test_bad_options_are_refused_up_front(
    options: dict[str, object], error: type[Exception]
) -> None:
    with pytest.raises(error):
        WeckrCrew(**options)  # type: ignore[arg-type]


def test_tracking_comes_back_after_the_global_hooks_were_cleared(
    memory_backend: MemoryBackend, caplog: pytest.LogCaptureFixture
) -> None:
    crew = one_agent_crew(ScriptedLLM(answer_at_once))
    WeckrCrew(feature="resilient").attach(crew)
    clear_all_hooks()

    crew.kickoff(inputs={"question": "why"})
    untracked = len(memory_backend.records)
    crew.kickoff(inputs={"question": "how"})

    assert untracked == 0
    assert "not tracked" in caplog.text
    assert [record.feature for record in memory_backend.records] == ["resilient"]
