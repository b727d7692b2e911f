"""Usage normalisation: every provider's token counts into one ``TokenUsage``.

Each function takes the provider SDK's response object (or its ``usage`` part, or
the same data as a plain dict) and returns counts in our convention: input is the
whole prompt with cache reads included, cache writes come on top, output includes
reasoning. A response without usage gives ``TokenUsage(reported=False)``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from weckr_core.records import TokenUsage

NOT_REPORTED = TokenUsage(reported=False)


def field(obj: Any, *names: str) -> Any:
    """The first of ``names`` present on an object or a mapping, else None."""
    if obj is None:
        return None
    if type(obj) is dict:  # the hot case
        for name in names:
            value = obj.get(name)
            if value is not None:
                return value
        return None
    for name in names:
        value = getattr(obj, name, None)
        if value is not None:
            return value
    # Other mappings last: an ABC check costs more than the attribute lookups.
    if isinstance(obj, Mapping):
        for name in names:
            value = obj.get(name)
            if value is not None:
                return value
    return None


def count(value: Any) -> int:
    """A token count as a non-negative int; junk and missing values are 0."""
    if type(value) is int:
        return value if value > 0 else 0
    if value is None or isinstance(value, bool):
        return 0
    try:
        number = float(value)
    except (TypeError, ValueError):
        return 0
    if not math.isfinite(number) or number < 0:
        return 0
    return int(number)


def _usage_part(response: Any, *names: str) -> Any:
    """``response.usage`` when given a response, or the usage object itself."""
    part = field(response, *names)
    return response if part is None else part


def usage_from_openai(response: Any) -> TokenUsage:
    """OpenAI Chat Completions (``prompt_tokens``...) and Responses API
    (``input_tokens``...) usage, with cached and reasoning details."""
    usage = _usage_part(response, "usage")
    prompt = field(usage, "prompt_tokens", "input_tokens")
    completion = field(usage, "completion_tokens", "output_tokens")
    if prompt is None and completion is None:
        return NOT_REPORTED
    input_tokens = count(prompt)
    output_tokens = count(completion)
    input_details = field(usage, "prompt_tokens_details", "input_tokens_details")
    output_details = field(usage, "completion_tokens_details", "output_tokens_details")
    return TokenUsage(
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        cached_input_tokens=min(count(field(input_details, "cached_tokens")), input_tokens),
        reasoning_tokens=min(count(field(output_details, "reasoning_tokens")), output_tokens),
    )


def usage_from_anthropic(response: Any) -> TokenUsage:
    """Anthropic Messages usage. Its ``input_tokens`` leaves out cache reads and
    writes; reads are folded into input here, writes stay apart."""
    usage = _usage_part(response, "usage")
    return _cache_apart(
        field(usage, "input_tokens"),
        field(usage, "output_tokens"),
        field(usage, "cache_read_input_tokens"),
        field(usage, "cache_creation_input_tokens"),
    )


def usage_from_bedrock(usage: Any) -> TokenUsage:
    """Amazon Bedrock's Converse usage, whose ``inputTokens`` leaves out the cache
    reads and writes as Anthropic's does."""
    return _cache_apart(
        field(usage, "inputTokens"),
        field(usage, "outputTokens"),
        field(usage, "cacheReadInputTokens"),
        field(usage, "cacheWriteInputTokens"),
    )


def _cache_apart(raw_input: Any, raw_output: Any, cache_read: Any, cache_write: Any) -> TokenUsage:
    """Usage whose input count leaves the cache reads and writes out: the reads are
    folded into input, the writes stay apart."""
    if raw_input is None and raw_output is None:
        return NOT_REPORTED
    read = count(cache_read)
    return TokenUsage(
        input_tokens=count(raw_input) + read,
        output_tokens=count(raw_output),
        cached_input_tokens=read,
        cache_creation_tokens=count(cache_write),
    )


def usage_from_gemini(response: Any) -> TokenUsage:
    """google-genai and legacy google-generativeai ``usage_metadata``. Thinking
    tokens are billed as output, so they are added to the candidates' count."""
    meta = _usage_part(response, "usage_metadata", "usageMetadata")
    prompt = field(meta, "prompt_token_count", "promptTokenCount")
    candidates = field(meta, "candidates_token_count", "candidatesTokenCount")
    thoughts = count(field(meta, "thoughts_token_count", "thoughtsTokenCount"))
    if prompt is None and candidates is None and not thoughts:
        return NOT_REPORTED
    tool_prompt = field(meta, "tool_use_prompt_token_count", "toolUsePromptTokenCount")
    input_tokens = count(prompt) + count(tool_prompt)
    cached = count(field(meta, "cached_content_token_count", "cachedContentTokenCount"))
    return TokenUsage(
        input_tokens=input_tokens,
        output_tokens=count(candidates) + thoughts,
        cached_input_tokens=min(cached, input_tokens),
        reasoning_tokens=thoughts,
    )


def usage_from_langchain(usage_metadata: Any) -> TokenUsage:
    """LangChain ``UsageMetadata``: its ``input_tokens`` is the sum of every input
    kind, cache writes included, so those are taken back out of input here."""
    if not usage_metadata:
        return NOT_REPORTED
    if type(usage_metadata) is dict:  # UsageMetadata is a TypedDict: the hot case
        input_total = count(usage_metadata.get("input_tokens"))
        output_tokens = count(usage_metadata.get("output_tokens"))
        input_details = usage_metadata.get("input_token_details")
        output_details = usage_metadata.get("output_token_details")
    else:
        input_total = count(field(usage_metadata, "input_tokens"))
        output_tokens = count(field(usage_metadata, "output_tokens"))
        input_details = field(usage_metadata, "input_token_details")
        output_details = field(usage_metadata, "output_token_details")
    cache_read = count(field(input_details, "cache_read"))
    cache_creation = count(field(input_details, "cache_creation"))
    cache_creation = min(cache_creation, max(0, input_total - cache_read))
    input_tokens = input_total - cache_creation
    return TokenUsage(
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        cached_input_tokens=min(cache_read, input_tokens),
        cache_creation_tokens=cache_creation,
        reasoning_tokens=min(count(field(output_details, "reasoning")), output_tokens),
    )


def usage_from_litellm(usage: Any) -> TokenUsage:
    """A LiteLLM / OpenAI-style usage dict, as CrewAI reports it.

    LiteLLM's ``prompt_tokens`` counts Anthropic cache reads and writes; writes are
    taken out of input here. A dict in Anthropic's own shape (``input_tokens`` with
    ``cache_read_input_tokens``) is read as Anthropic's.
    """
    if not usage:
        return NOT_REPORTED
    if field(usage, "prompt_tokens") is None and field(usage, "input_tokens") is not None:
        if field(usage, "cache_read_input_tokens") is not None:
            return usage_from_anthropic(usage)
        if field(usage, "input_token_details") is not None:
            return usage_from_langchain(usage)
    base = usage_from_openai(usage)
    if not base.reported:
        return base
    writes = count(field(usage, "cache_creation_input_tokens"))
    cache_read = count(field(usage, "cache_read_input_tokens"))
    writes = min(writes, base.input_tokens)
    input_tokens = base.input_tokens - writes
    return TokenUsage(
        input_tokens=input_tokens,
        output_tokens=base.output_tokens,
        cached_input_tokens=min(max(base.cached_input_tokens, cache_read), input_tokens),
        cache_creation_tokens=writes,
        reasoning_tokens=base.reasoning_tokens,
    )


_BY_PROVIDER = {
    "openai": usage_from_openai,
    "anthropic": usage_from_anthropic,
    "gemini": usage_from_gemini,
}


def normalize_usage(provider: str, response: Any) -> TokenUsage:
    """Usage of a response from ``provider`` ("openai", "anthropic", "gemini")."""
    reader = _BY_PROVIDER.get(provider, usage_from_openai)
    return reader(response)


def _has_callable(obj: Any, path: str) -> bool:
    current = obj
    for part in path.split("."):
        current = getattr(current, part, None)
        if current is None:
            return False
    return callable(current)


def detect_provider(client: Any) -> str:
    """ "openai", "anthropic", "gemini" or "unknown", by the client's module and
    then by its shape, so proxies (OpenTelemetry, Sentry, our own wrap) pass."""
    if client is None:
        return "unknown"
    module = (type(client).__module__ or "").lower()
    if module.startswith("openai"):
        return "openai"
    if module.startswith("anthropic"):
        return "anthropic"
    if module.startswith(("google.genai", "google.generativeai")):
        return "gemini"
    if _has_callable(client, "chat.completions.create"):
        return "openai"
    if _has_callable(client, "messages.create"):
        return "anthropic"
    if _has_callable(client, "models.generate_content") or _has_callable(client, "GenerativeModel"):
        return "gemini"
    if _has_callable(client, "generate_content"):
        # A legacy ``genai.GenerativeModel`` instance.
        return "gemini"
    return "unknown"
