"""CrewAI's native providers against a fake HTTP transport: their own usage
extraction runs, and the record must match the provider's usage in our convention."""

from __future__ import annotations

from typing import Any

import pytest
from crewai import Agent, BaseLLM, Crew, Task
from crewai.llms.providers.anthropic.completion import AnthropicCompletion
from crewai.llms.providers.gemini.completion import GeminiCompletion
from crewai.llms.providers.openai.completion import OpenAICompletion

from tests.core.providers import (
    FakeProvider,
    anthropic_client,
    anthropic_message_body,
    anthropic_usage,
    gemini_body,
    gemini_usage,
    genai_client,
    openai_chat_body,
    openai_client,
    openai_usage,
)
from weckr_core import MemoryBackend, UsageRecord
from weckr_core.usage import usage_from_anthropic, usage_from_gemini, usage_from_openai
from weckr_crewai import WeckrCrew


def run_one_call(llm: BaseLLM, backend: MemoryBackend) -> UsageRecord:
    agent = Agent(role="analyst", goal="Answer", backstory="Brief.", llm=llm)
    task = Task(name="answer", description="Answer briefly", expected_output="A line", agent=agent)
    crew = Crew(agents=[agent], tasks=[task])
    WeckrCrew(feature="providers", backend=backend).attach(crew)
    crew.kickoff()
    [record] = backend.records
    return record


def completions(fake: FakeProvider, path: str) -> int:
    """Billed calls; CrewAI may also ask the provider's token-count endpoint."""
    return sum(1 for url, _ in fake.requests if url.endswith(path))


def test_openai_with_cache_reads_and_reasoning() -> None:
    usage = openai_usage(1_000, 200, cached=600, reasoning=50)
    fake = FakeProvider(openai_chat_body("gpt-4o-mini", usage))
    llm = OpenAICompletion(model="gpt-4o-mini", api_key="test", max_retries=0)
    llm._client = openai_client(fake)
    backend = MemoryBackend()

    record = run_one_call(llm, backend)

    assert completions(fake, "/chat/completions") == 1
    assert record.token_usage() == usage_from_openai(usage)
    assert (record.provider, record.model, record.agent, record.task) == (
        "openai",
        "gpt-4o-mini",
        "analyst",
        "answer",
    )
    assert record.priced and record.cost_usd
    assert record.latency_ms is not None


def test_anthropic_with_cache_reads_and_writes() -> None:
    usage = anthropic_usage(100, 200, cache_read=3_000, cache_write=500)
    fake = FakeProvider(anthropic_message_body("claude-sonnet-4-5", usage))
    llm = AnthropicCompletion(
        model="claude-sonnet-4-5", max_tokens=1_024, api_key="test", max_retries=0
    )
    llm._client = anthropic_client(fake)
    backend = MemoryBackend()

    record = run_one_call(llm, backend)

    assert completions(fake, "/messages") == 1
    # CrewAI folds reads and writes into input_tokens; writes come back out here.
    assert record.token_usage() == usage_from_anthropic(usage)
    assert (record.provider, record.model) == ("anthropic", "claude-sonnet-4-5")
    assert record.priced and record.cost_usd


def test_gemini_with_cached_content_and_thinking(monkeypatch: pytest.MonkeyPatch) -> None:
    usage = gemini_usage(2_000, 300, cached=1_200, thoughts=150)
    fake = FakeProvider(gemini_body("gemini-2.5-flash", usage))
    monkeypatch.setenv("GOOGLE_API_KEY", "test")
    llm = GeminiCompletion(model="gemini-2.5-flash")
    client: Any = genai_client(fake)
    llm._client = client
    backend = MemoryBackend()

    record = run_one_call(llm, backend)

    assert completions(fake, ":generateContent") == 1
    assert record.token_usage() == usage_from_gemini(usage)
    assert (record.provider, record.model) == ("gemini", "gemini-2.5-flash")
