"""How the handler reads a finished run's ``UsageMetadata``."""

from __future__ import annotations

from types import MappingProxyType
from typing import Any

import pytest
from langchain_core.messages import AIMessage
from langchain_core.outputs import ChatGeneration, LLMResult

from weckr_core.records import TokenUsage, UsageRecord
from weckr_core.usage import usage_from_langchain
from weckr_langchain.readers import record_result

# UsageMetadata shapes and what they count as: (input, output, cache read, cache
# write, reasoning). LangChain's input_tokens includes cache writes; ours does not.
CASES: list[tuple[Any, tuple[int, int, int, int, int]]] = [
    ({"input_tokens": 1200, "output_tokens": 80, "total_tokens": 1280}, (1200, 80, 0, 0, 0)),
    (
        {"input_tokens": 1200, "output_tokens": 80, "input_token_details": {"cache_read": 1024}},
        (1200, 80, 1024, 0, 0),
    ),
    (
        {
            "input_tokens": 1000,
            "output_tokens": 300,
            "input_token_details": {"cache_read": 200, "cache_creation": 300},
            "output_token_details": {"reasoning": 250},
        },
        (700, 300, 200, 300, 250),
    ),
    # Inconsistent counts are clamped.
    (
        {"input_tokens": 100, "output_tokens": 10, "input_token_details": {"cache_read": 500}},
        (100, 10, 100, 0, 0),
    ),
    (
        {
            "input_tokens": 100,
            "output_tokens": 10,
            "input_token_details": {"cache_read": 60, "cache_creation": 90},
            "output_token_details": {"reasoning": 50},
        },
        (60, 10, 60, 40, 10),
    ),
    ({"input_tokens": 0, "output_tokens": 0}, (0, 0, 0, 0, 0)),
    ({"output_tokens": 5}, (0, 5, 0, 0, 0)),
    ({"input_tokens": None, "output_tokens": 7, "input_token_details": None}, (0, 7, 0, 0, 0)),
    ({"input_tokens": 10, "output_tokens": 2, "input_token_details": {}}, (10, 2, 0, 0, 0)),
    # Junk counts are 0; numbers in other types are read.
    ({"input_tokens": -5, "output_tokens": 3}, (0, 3, 0, 0, 0)),
    ({"input_tokens": 12.0, "output_tokens": "4"}, (12, 4, 0, 0, 0)),
    ({"input_tokens": True, "output_tokens": 4}, (0, 4, 0, 0, 0)),
    (
        {"input_tokens": 10, "output_tokens": 4, "output_token_details": {"reasoning": -1}},
        (10, 4, 0, 0, 0),
    ),
    (
        {"input_tokens": 10, "output_tokens": 4, "input_token_details": [("cache_read", 3)]},
        (10, 4, 0, 0, 0),
    ),
]


def response_with(usage_metadata: Any) -> LLMResult:
    # model_construct: the odd shapes above would not pass AIMessage's validation.
    message = AIMessage.model_construct(
        content="ok",
        usage_metadata=usage_metadata,
        response_metadata={"model_name": "gpt-4o-2024-08-06", "model_provider": "openai"},
    )
    return LLMResult(generations=[[ChatGeneration(message=message)]])


@pytest.mark.parametrize(("shape", "counts"), CASES)
def test_usage_metadata_is_read_in_our_convention(
    shape: Any, counts: tuple[int, int, int, int, int]
) -> None:
    given, output, cached, writes, reasoning = counts
    expected = TokenUsage(
        input_tokens=given,
        output_tokens=output,
        cached_input_tokens=cached,
        cache_creation_tokens=writes,
        reasoning_tokens=reasoning,
    )
    record = UsageRecord(model="gpt-4o", provider="unknown")

    record_result(record, response_with(shape))

    assert record.token_usage() == expected
    assert (record.model, record.provider) == ("gpt-4o-2024-08-06", "openai")
    # The dict fast path and the path for other mappings read the same.
    assert usage_from_langchain(shape) == usage_from_langchain(MappingProxyType(shape)) == expected


def test_no_response_is_not_reported() -> None:
    record = UsageRecord(model="gpt-4o", provider="openai")

    record_result(record, None)

    assert not record.usage_reported
    assert (record.model, record.provider) == ("gpt-4o", "openai")
