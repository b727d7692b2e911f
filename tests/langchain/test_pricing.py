"""Cache and reasoning tokens from ``UsageMetadata`` are priced at their own rates."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

import genai_prices
import pytest
from langchain_core.messages.ai import UsageMetadata

from tests.langchain.fakes import ScriptedChatModel, usage
from weckr_core import MemoryBackend
from weckr_langchain import WeckrHandler, weckr_callback

MTOK = Decimal(1_000_000)


@dataclass(frozen=True)
class Rates:
    """USD per million tokens, as genai-prices lists them."""

    input: Decimal
    output: Decimal
    cache_read: Decimal
    cache_write: Decimal


def flat(value: object, default: Decimal) -> Decimal:
    if value is None:
        return default
    assert isinstance(value, Decimal), f"tiered price {value!r}: pick small token counts"
    return value


def rates(model: str, provider: str) -> Rates:
    price = genai_prices.calc_price(
        genai_prices.Usage(input_tokens=1, output_tokens=1), model, provider_id=provider
    ).model_price
    input_rate = flat(price.input_mtok, Decimal(0))
    return Rates(
        input=input_rate,
        output=flat(price.output_mtok, Decimal(0)),
        cache_read=flat(price.cache_read_mtok, input_rate),
        cache_write=flat(price.cache_write_mtok, input_rate),
    )


@pytest.mark.parametrize(
    ("model", "provider", "metadata", "fresh", "read", "write", "output"),
    [
        # OpenAI: 400 of the 1,000 prompt tokens came from the cache.
        ("gpt-4o", "openai", usage(1000, 200, cache_read=400), 600, 400, 0, 200),
        # Reasoning tokens are part of the 500 output tokens, billed once.
        ("o4-mini", "openai", usage(2000, 500, cache_read=1024, reasoning=400), 976, 1024, 0, 500),
        # Anthropic via LangChain: input_tokens counts cache reads and writes.
        (
            "claude-3-5-sonnet-20241022",
            "anthropic",
            usage(1500, 200, cache_read=300, cache_creation=200),
            1000,
            300,
            200,
            200,
        ),
    ],
)
def test_cache_and_reasoning_tokens_are_priced_right(
    memory_backend: MemoryBackend,
    model: str,
    provider: str,
    metadata: UsageMetadata,
    fresh: int,
    read: int,
    write: int,
    output: int,
) -> None:
    price = rates(model, provider)
    spent = fresh * price.input + read * price.cache_read + write * price.cache_write
    by_hand = (spent + output * price.output) / MTOK
    chat = ScriptedChatModel(model=model, provider=provider, usage_metadata=metadata)

    with weckr_callback() as totals:
        chat.invoke("hi")

    (record,) = memory_backend.records
    assert record.input_tokens == fresh + read
    assert record.cached_input_tokens == read
    assert record.cache_creation_tokens == write
    assert record.output_tokens == output
    assert record.reasoning_tokens == metadata.get("output_token_details", {}).get("reasoning", 0)
    assert record.cost_usd == by_hand
    assert record.priced
    assert totals.cost_usd == by_hand


def test_max_cost_guard_uses_the_same_price(memory_backend: MemoryBackend) -> None:
    chat = ScriptedChatModel(usage_metadata=usage(10_000, 1_000, cache_read=8_000))
    handler = WeckrHandler(max_cost_usd="1")

    chat.invoke("hi", {"callbacks": [handler]})

    (record,) = memory_backend.records
    price = rates("gpt-4o", "openai")
    by_hand = (2_000 * price.input + 8_000 * price.cache_read + 1_000 * price.output) / MTOK
    assert record.cost_usd == by_hand


def test_an_unknown_model_is_flagged_unpriced(memory_backend: MemoryBackend) -> None:
    chat = ScriptedChatModel(model="in-house-llm-7b", provider="self-hosted")

    with weckr_callback() as totals:
        chat.invoke("hi")

    (record,) = memory_backend.records
    assert record.priced is False
    assert totals.unpriced_calls == 1
