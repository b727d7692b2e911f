"""Normalisers on plain dicts (the shapes LangChain, LiteLLM and JSON logs carry).
The provider SDK objects are covered through their real clients in test_client."""

from __future__ import annotations

from weckr_core.records import TokenUsage
from weckr_core.usage import (
    count,
    usage_from_anthropic,
    usage_from_gemini,
    usage_from_langchain,
    usage_from_litellm,
    usage_from_openai,
)


def test_openai_chat_completions_usage() -> None:
    usage = usage_from_openai(
        {
            "usage": {
                "prompt_tokens": 1200,
                "completion_tokens": 300,
                "prompt_tokens_details": {"cached_tokens": 1024},
                "completion_tokens_details": {"reasoning_tokens": 200},
            }
        }
    )
    assert usage == TokenUsage(
        input_tokens=1200,
        output_tokens=300,
        cached_input_tokens=1024,
        cache_creation_tokens=0,
        reasoning_tokens=200,
    )


def test_openai_responses_api_usage() -> None:
    usage = usage_from_openai(
        {
            "input_tokens": 50,
            "output_tokens": 70,
            "input_tokens_details": {"cached_tokens": 10},
            "output_tokens_details": {"reasoning_tokens": 64},
        }
    )
    assert usage == TokenUsage(
        input_tokens=50,
        output_tokens=70,
        cached_input_tokens=10,
        cache_creation_tokens=0,
        reasoning_tokens=64,
    )


def test_anthropic_folds_cache_reads_into_input_and_keeps_writes_apart() -> None:
    usage = usage_from_anthropic(
        {
            "usage": {
                "input_tokens": 20,
                "output_tokens": 5,
                "cache_read_input_tokens": 1000,
                "cache_creation_input_tokens": 300,
            }
        }
    )
    assert usage == TokenUsage(
        input_tokens=1020,
        output_tokens=5,
        cached_input_tokens=1000,
        cache_creation_tokens=300,
        reasoning_tokens=0,
    )
    assert usage.total_tokens == 1325


def test_gemini_thoughts_count_as_output() -> None:
    usage = usage_from_gemini(
        {
            "usageMetadata": {
                "promptTokenCount": 100,
                "candidatesTokenCount": 40,
                "thoughtsTokenCount": 60,
                "cachedContentTokenCount": 30,
            }
        }
    )
    assert usage == TokenUsage(
        input_tokens=100,
        output_tokens=100,
        cached_input_tokens=30,
        cache_creation_tokens=0,
        reasoning_tokens=60,
    )


def test_langchain_usage_metadata_takes_cache_writes_out_of_input() -> None:
    # langchain-anthropic reports input_tokens as the sum of every input kind.
    usage = usage_from_langchain(
        {
            "input_tokens": 1320,
            "output_tokens": 50,
            "total_tokens": 1370,
            "input_token_details": {"cache_read": 1000, "cache_creation": 300},
            "output_token_details": {"reasoning": 20},
        }
    )
    assert usage == TokenUsage(
        input_tokens=1020,
        output_tokens=50,
        cached_input_tokens=1000,
        cache_creation_tokens=300,
        reasoning_tokens=20,
    )


def test_litellm_usage_with_anthropic_cache_fields() -> None:
    usage = usage_from_litellm(
        {
            "prompt_tokens": 1320,
            "completion_tokens": 50,
            "total_tokens": 1370,
            "cache_creation_input_tokens": 300,
            "cache_read_input_tokens": 1000,
            "prompt_tokens_details": {"cached_tokens": 1000},
        }
    )
    assert usage == TokenUsage(
        input_tokens=1020,
        output_tokens=50,
        cached_input_tokens=1000,
        cache_creation_tokens=300,
        reasoning_tokens=0,
    )


def test_missing_usage_is_flagged_not_zero() -> None:
    for usage in (
        usage_from_openai({"id": "x"}),
        usage_from_anthropic({}),
        usage_from_gemini({"candidates": []}),
        usage_from_langchain(None),
        usage_from_litellm({}),
    ):
        assert usage.reported is False


def test_counts_reject_junk() -> None:
    assert [count(v) for v in (None, True, "12", 3.9, -4, float("nan"), "x")] == [
        0,
        0,
        12,
        3,
        0,
        0,
        0,
    ]
    # Cached tokens can never exceed the prompt they are part of.
    usage = usage_from_openai({"prompt_tokens": 10, "prompt_tokens_details": {"cached_tokens": 99}})
    assert usage.cached_input_tokens == 10
