"""Usage that is missing, partial or in another provider's shape is never dropped
and never mistaken for a free call."""

from __future__ import annotations

from typing import Any

import pytest
from crewai import Agent, Crew, Task
from crewai.tools import tool

import weckr_crewai.crew
from tests.crewai.fakes import FINAL_ANSWER, TOOL_CALL, Reply, ScriptedLLM
from weckr_core import MemoryBackend
from weckr_core.usage import usage_from_anthropic, usage_from_litellm
from weckr_crewai import WeckrCrew, usage_from_crewai


def answer_after_two_lookups(role: str | None, index: int) -> Reply:
    if index < 2:
        return Reply(TOOL_CALL.format(tool="lookup", arguments=f'{{"query": "q{index}"}}'), 300, 40)
    return Reply(FINAL_ANSWER.format(answer="done"), 300, 40)


def crew_of(llm: ScriptedLLM) -> Crew:
    @tool("lookup")
    def lookup(query: str) -> str:
        """Look a fact up."""
        return "a fact"

    agent = Agent(role="analyst", goal="Answer", backstory="Brief.", llm=llm, tools=[lookup])
    task = Task(name="answer", description="Answer", expected_output="A line", agent=agent)
    return Crew(agents=[agent], tasks=[task])


def test_a_call_without_usage_is_recorded_as_not_reported(memory_backend: MemoryBackend) -> None:
    llm = ScriptedLLM(answer_after_two_lookups, reports_usage=False)
    crew = crew_of(llm)
    WeckrCrew().attach(crew)

    crew.kickoff()

    records = memory_backend.records
    assert len(records) == len(llm.calls) == 3
    assert {(r.usage_reported, r.total_tokens, r.status) for r in records} == {(False, 0, "ok")}


def test_an_llm_without_events_still_gets_one_row_per_call(
    memory_backend: MemoryBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(weckr_crewai.crew, "RECORD_WAIT_SECONDS", 0.2)
    llm = ScriptedLLM(answer_after_two_lookups, emits_events=False)
    crew = crew_of(llm)
    WeckrCrew(max_llm_calls=10).attach(crew)

    crew.kickoff()

    records = memory_backend.records
    assert len(records) == len(llm.calls) == 3
    assert sorted(int(r.step or 0) for r in records) == [1, 2, 3]
    assert {(r.usage_reported, r.agent, r.task) for r in records} == {(False, "analyst", "answer")}


LITELLM_ANTHROPIC: dict[str, Any] = {
    # LiteLLM's prompt_tokens counts Anthropic cache reads and writes; CrewAI's
    # _usage_to_dict adds the flat cache keys next to the raw ones.
    "prompt_tokens": 3_600,
    "completion_tokens": 200,
    "total_tokens": 3_800,
    "cache_read_input_tokens": 3_000,
    "cache_creation_input_tokens": 500,
    "cached_prompt_tokens": 3_000,
    "cache_creation_tokens": 500,
}
RAW_ANTHROPIC: dict[str, Any] = {
    "input_tokens": 100,
    "output_tokens": 200,
    "cache_read_input_tokens": 3_000,
    "cache_creation_input_tokens": 500,
}


def test_litellm_and_raw_anthropic_shapes_agree_with_the_core_readers() -> None:
    assert usage_from_crewai(LITELLM_ANTHROPIC) == usage_from_litellm(LITELLM_ANTHROPIC)
    assert usage_from_crewai(RAW_ANTHROPIC) == usage_from_anthropic(RAW_ANTHROPIC)


@pytest.mark.parametrize("usage", [None, {}, {"total_tokens": 0}])
def test_a_response_without_usage_is_not_reported(usage: dict[str, Any] | None) -> None:
    assert usage_from_crewai(usage).reported is False


def test_usage_that_is_not_a_mapping_is_a_clear_error() -> None:
    with pytest.raises(TypeError, match="mapping"):
        usage_from_crewai([1, 2])  # type: ignore[arg-type]
