"""The worst-case size of an LLM call, before it is made: what a cap reserves.

Prompt tokens are counted from the request without a tokenizer: one token per
three bytes of UTF-8 text, plus a few tokens per message, and a fixed allowance
per image. English prose runs about four characters per token and code about
three, and a token is at least one byte in every tokenizer we know of for CJK
text (three bytes a character), so this errs high. Output tokens are the
request's ``max_tokens`` (or its provider's name for it); a request without one is
reserved at the backend's default output size.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Final

BYTES_PER_TOKEN: Final = 3
TOKENS_PER_MESSAGE: Final = 4
TOKENS_PER_IMAGE: Final = 1_600
#: Output tokens reserved for a call that sets no limit of its own.
DEFAULT_OUTPUT_TOKENS: Final = 1_024

# The request keys that limit the output, by provider: OpenAI Chat Completions,
# OpenAI Responses, Anthropic (and its legacy completions), Gemini.
_OUTPUT_LIMIT_KEYS: Final = (
    "max_tokens",
    "max_completion_tokens",
    "max_output_tokens",
    "max_tokens_to_sample",
    "maxOutputTokens",
)
# Where Gemini keeps its output limit.
_CONFIG_KEYS: Final = ("config", "generation_config", "generationConfig")
# Keys whose values are not prompt text: ids, roles, types, URLs, signatures, and
# request options.
_NOT_TEXT: Final = frozenset(
    {
        "role",
        "type",
        "id",
        "tool_call_id",
        "url",
        "mime_type",
        "signature",
        "model",
        "user",
        "metadata",
        "stream",
        "stream_options",
        "extra_headers",
        "extra_query",
        "timeout",
        *_OUTPUT_LIMIT_KEYS,
    }
)
_IMAGE_TYPES: Final = frozenset({"image", "image_url", "input_image", "inline_data"})


def text_tokens(text: str) -> int:
    """Tokens of ``text`` by the rule above."""
    size = len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))
    return math.ceil(size / BYTES_PER_TOKEN)


def prompt_tokens(*parts: Any) -> int:
    """Estimated prompt tokens of a request's messages, system prompt, tools and
    other inputs (strings, mappings, lists and objects with attributes)."""
    return sum(_tokens(part, depth=0) for part in parts if part is not None)


def _tokens(value: Any, depth: int) -> int:
    if depth > 20 or value is None:
        return 0
    if isinstance(value, str):
        return text_tokens(value)
    if isinstance(value, bytes | bytearray):
        return TOKENS_PER_IMAGE  # inline media
    if isinstance(value, Mapping):
        if value.get("type") in _IMAGE_TYPES or "inline_data" in value:
            return TOKENS_PER_IMAGE
        total = TOKENS_PER_MESSAGE if "role" in value else 0
        for key, item in value.items():
            if key not in _NOT_TEXT:
                total += _tokens(item, depth + 1)
        return total
    if isinstance(value, list | tuple):
        return sum(_tokens(item, depth + 1) for item in value)
    if isinstance(value, int | float | bool):
        return 1
    # SDK objects (LangChain messages, pydantic models): their fields.
    content = getattr(value, "content", None)
    if content is not None:
        total = TOKENS_PER_MESSAGE + _tokens(content, depth + 1)
        return total + _tokens(getattr(value, "tool_calls", None), depth + 1)
    dump = getattr(value, "model_dump", None)
    if callable(dump):
        try:
            return _tokens(dump(exclude_none=True), depth + 1)
        except Exception:
            return 0
    return text_tokens(str(value))


def max_output_tokens(params: Mapping[str, Any] | None) -> int | None:
    """The request's own output limit, under any provider's name for it."""
    if not params:
        return None
    for key in _OUTPUT_LIMIT_KEYS:
        limit = _positive_int(params.get(key))
        if limit is not None:
            return limit
    for key in _CONFIG_KEYS:
        config = params.get(key)
        if config is None:
            continue
        if not isinstance(config, Mapping):
            config = {
                name: getattr(config, name, None)
                for name in ("max_output_tokens", "maxOutputTokens")
            }
        limit = max_output_tokens(config)
        if limit is not None:
            return limit
    return None


def _positive_int(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if not math.isfinite(value) or value <= 0:
        return None
    return math.ceil(value)
