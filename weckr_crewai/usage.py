"""CrewAI's per-call usage dict (``LLMCallCompletedEvent.usage``) in our convention.

CrewAI's native providers and its LiteLLM wrapper flatten provider usage into one
dict: the prompt count (``prompt_tokens``, ``prompt_token_count`` for Gemini,
``input_tokens`` for Anthropic) includes cache reads *and* cache writes; the
completion count includes reasoning; the parts come in ``cached_prompt_tokens``,
``cache_creation_tokens`` and ``reasoning_tokens``. Our ``TokenUsage`` counts cache
writes on top of input, so they are taken back out of the prompt count here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from weckr_core.records import TokenUsage
from weckr_core.usage import NOT_REPORTED, count, field, usage_from_anthropic

_PROMPT = ("prompt_tokens", "prompt_token_count", "input_tokens", "inputTokens")
_COMPLETION = ("completion_tokens", "output_tokens", "outputTokens", "candidates_token_count")
_CACHE_READ = (
    "cached_prompt_tokens",
    "cached_tokens",
    "cache_read_input_tokens",
    "cacheReadInputTokens",
    "cacheReadInputTokenCount",
)
_CACHE_WRITE = ("cache_creation_tokens", "cache_creation_input_tokens", "cacheWriteInputTokens")


def usage_from_crewai(usage: Mapping[str, Any] | None) -> TokenUsage:
    """Usage of one CrewAI LLM call; ``reported=False`` when the call carried none."""
    if not usage:
        return NOT_REPORTED
    if not isinstance(usage, Mapping):
        raise TypeError(f"CrewAI usage must be a mapping, not {type(usage).__name__}")
    if (
        "prompt_tokens" not in usage
        and "input_tokens" in usage
        and ("cache_read_input_tokens" in usage or "cache_creation_input_tokens" in usage)
    ):
        # Anthropic's raw shape, where input_tokens leaves the cache out.
        return usage_from_anthropic(usage)
    prompt = field(usage, *_PROMPT)
    completion = field(usage, *_COMPLETION)
    if prompt is None and completion is None:
        # {"total_tokens": 0} is what CrewAI's providers emit for a response without usage.
        return NOT_REPORTED
    prompt_total = count(prompt)
    output_tokens = count(completion)
    cache_read = count(field(usage, *_CACHE_READ)) or count(
        field(field(usage, "prompt_tokens_details"), "cached_tokens")
    )
    reasoning = count(field(usage, "reasoning_tokens")) or count(
        field(field(usage, "completion_tokens_details"), "reasoning_tokens")
    )
    writes = min(count(field(usage, *_CACHE_WRITE)), prompt_total)
    input_tokens = prompt_total - writes
    return TokenUsage(
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        cached_input_tokens=min(cache_read, input_tokens),
        cache_creation_tokens=writes,
        reasoning_tokens=min(reasoning, output_tokens),
    )
