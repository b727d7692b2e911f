"""Model prices, from the ``genai-prices`` database bundled with the package.

Nothing is fetched at run time: the bundled snapshot is read once per model
reference and the result cached. Custom or negotiated prices come in through
``set_price_overrides`` (the Django app feeds its admin-edited prices there).
Money is ``Decimal`` throughout.
"""

from __future__ import annotations

import functools
import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Literal, TypeVar

from weckr_core.records import UsageRecord

_MILLION = Decimal(1_000_000)
_ZERO = Decimal(0)

PriceSource = Literal["genai-prices", "override", "unknown"]
N = TypeVar("N", Decimal, float)


@dataclass(frozen=True, slots=True)
class Rate:
    """USD per million tokens, with optional long-context tiers: above ``start``
    prompt tokens the tier's price applies to the whole call (as Gemini 2.5 Pro and
    Claude Sonnet 4.5 bill)."""

    base: Decimal
    tiers: tuple[tuple[int, Decimal], ...] = ()

    def per_mtok(self, prompt_tokens: int) -> Decimal:
        return tier_price(self.base, self.tiers, prompt_tokens)


def tier_price(base: N, tiers: tuple[tuple[int, N], ...], prompt_tokens: int) -> N:
    """The price per million tokens for a prompt this long: the highest tier it is
    over, else the base price."""
    for start, price in reversed(tiers):
        if prompt_tokens > start:
            return price
    return base


def billable_tokens(
    input_tokens: int,
    output_tokens: int,
    cached_input_tokens: int,
    cache_creation_tokens: int,
    reasoning_tokens: int,
) -> tuple[int, int, int, int, int]:
    """``(uncached input, cache reads, cache writes, output, prompt size)`` as billed,
    from counts in our convention (see ``price_usage``)."""
    input_tokens = max(0, input_tokens)
    cached = max(0, min(cached_input_tokens, input_tokens))
    writes = max(0, cache_creation_tokens)
    output = max(0, output_tokens, reasoning_tokens)
    return input_tokens - cached, cached, writes, output, input_tokens + writes


@dataclass(frozen=True, slots=True)
class ModelPricing:
    """Resolved prices of one model. ``priced`` is False when no price is known."""

    model: str
    provider: str | None
    input: Rate
    output: Rate
    cached_input: Rate
    cache_write: Rate
    priced: bool = True
    source: PriceSource = "genai-prices"
    # Lower-cased names this pricing was looked up by; used only for display.
    aliases: tuple[str, ...] = field(default=(), compare=False)

    @classmethod
    def flat(
        cls,
        model: str,
        *,
        input: Decimal | float | str,
        output: Decimal | float | str,
        cached_input: Decimal | float | str | None = None,
        cache_write: Decimal | float | str | None = None,
        provider: str | None = None,
        source: PriceSource = "override",
    ) -> ModelPricing:
        """Prices per million tokens; cache rates default to the input rate."""
        input_rate = Rate(Decimal(str(input)))
        return cls(
            model=model,
            provider=provider,
            input=input_rate,
            output=Rate(Decimal(str(output))),
            cached_input=input_rate if cached_input is None else Rate(Decimal(str(cached_input))),
            cache_write=input_rate if cache_write is None else Rate(Decimal(str(cache_write))),
            source=source,
        )

    def __getitem__(self, key: str) -> Decimal:
        """Seed-compatible access: ``pricing["input"]`` is the base rate per MTok."""
        if key not in ("input", "output", "cached_input", "cache_write"):
            raise KeyError(key)
        rate: Rate = getattr(self, key)
        return rate.base


@dataclass(frozen=True, slots=True)
class Cost:
    usd: Decimal
    priced: bool
    model: str


def _unknown(model: str, provider: str | None) -> ModelPricing:
    zero = Rate(_ZERO)
    return ModelPricing(model, provider, zero, zero, zero, zero, priced=False, source="unknown")


# Provider names as our normalisers and LangChain / LiteLLM spell them, mapped to
# genai-prices provider ids.
_PROVIDER_IDS = {
    "openai": "openai",
    "azure": "azure",
    "azure_openai": "azure",
    "anthropic": "anthropic",
    "gemini": "google",
    "google": "google",
    "google_genai": "google",
    "google-genai": "google",
    "vertex_ai": "google",
    "vertexai": "google",
    "groq": "groq",
    "mistral": "mistral",
    "mistralai": "mistral",
    "deepseek": "deepseek",
    "bedrock": "aws",
    "amazon-bedrock": "aws",
    "aws": "aws",
    "xai": "x-ai",
    "x-ai": "x-ai",
    "cohere": "cohere",
    "fireworks": "fireworks",
    "fireworks-ai": "fireworks",
    "together": "together",
    "openrouter": "openrouter",
    "kimi": "moonshotai",
    "moonshot": "moonshotai",
}

PriceOverrideHook = Callable[[str], "ModelPricing | None"]
AlternativeOverrideHook = Callable[[str], "str | None"]

_lock = threading.Lock()
_cache: dict[tuple[str, str | None], ModelPricing] = {}
# Counts the changes that can alter what ``resolve_pricing`` answers (a hook set, the
# cache cleared): code that keeps rates derived from its answers compares it.
prices_version = 0
_price_override: PriceOverrideHook | None = None
_alternative_override: AlternativeOverrideHook | None = None


def set_price_overrides(hook: PriceOverrideHook | None) -> None:
    """Install a function ``model -> ModelPricing | None`` consulted before the
    price database. Replaces any previous hook and empties the cache."""
    global _price_override, prices_version
    with _lock:
        _price_override = hook
        _cache.clear()
        prices_version += 1


def set_alternative_overrides(hook: AlternativeOverrideHook | None) -> None:
    """Install a function ``model -> cheaper model | None`` consulted before
    ``CHEAPER_ALTERNATIVE``."""
    global _alternative_override
    _alternative_override = hook


def clear_pricing_cache() -> None:
    """Forget resolved prices, for example after an override was edited."""
    global prices_version
    with _lock:
        _cache.clear()
        prices_version += 1


def _split_provider(model: str, provider: str | None) -> tuple[str, str | None]:
    name = model.strip().lower()
    if "/" in name:
        # "openai/gpt-4o", "anthropic/claude-3-5-sonnet" (LiteLLM, OpenRouter style).
        prefix, rest = name.split("/", 1)
        if prefix in _PROVIDER_IDS:
            return rest, _PROVIDER_IDS[prefix]
        name = name.rsplit("/", 1)[1]
    # "models/gemini-2.5-flash" came through the split above; Bedrock style
    # "anthropic.claude-3-5-sonnet-20241022-v2:0" keeps its own provider.
    provider_id = _PROVIDER_IDS.get(provider.lower()) if provider else None
    return name, provider_id


def _rate(value: Any) -> Rate | None:
    if value is None:
        return None
    if isinstance(value, Decimal):
        return Rate(value)
    base = getattr(value, "base", None)
    tiers = getattr(value, "tiers", None)
    if isinstance(base, Decimal):
        return Rate(base, tuple((int(t.start), Decimal(t.price)) for t in tiers or ()))
    return None


def _from_database(name: str, provider_id: str | None) -> ModelPricing | None:
    from genai_prices import data_snapshot

    snapshot = data_snapshot.get_snapshot()
    candidates = [name]
    # Dated snapshots the database does not list itself: "gpt-4o-2099-01-01".
    undated = re.sub(r"(-\d{4}-?\d{2}-?\d{2}|-\d{8}|@\d{8}|-latest)$", "", name)
    if undated != name:
        candidates.append(undated)
    for candidate in candidates:
        for provider_hint in dict.fromkeys((provider_id, None)):
            try:
                provider, info = snapshot.find_provider_model(candidate, None, provider_hint, None)
            except LookupError:
                continue
            prices = info.get_prices(datetime.now(UTC))
            input_rate = _rate(getattr(prices, "input_mtok", None))
            output_rate = _rate(getattr(prices, "output_mtok", None))
            if input_rate is None or output_rate is None:
                continue
            return ModelPricing(
                model=info.id,
                provider=provider.id,
                input=input_rate,
                output=output_rate,
                cached_input=_rate(getattr(prices, "cache_read_mtok", None)) or input_rate,
                cache_write=_rate(getattr(prices, "cache_write_mtok", None)) or input_rate,
            )
    return None


def preload_prices() -> None:
    """Import the price database now, on this thread (it is imported lazily)."""
    from genai_prices import data_snapshot

    data_snapshot.get_snapshot()


def resolve_pricing(model: str, provider: str | None = None) -> ModelPricing:
    """Prices for ``model``, resolving dated and provider-prefixed names.

    Overrides win over the database. An unknown model comes back with
    ``priced=False`` and zero rates.
    """
    key = (model, provider)
    cached = _cache.get(key)
    if cached is not None:
        return cached
    pricing = _resolve_uncached(model, provider)
    with _lock:
        _cache[key] = pricing
    return pricing


def _resolve_uncached(model: str, provider: str | None) -> ModelPricing:
    hook = _price_override
    if hook is not None:
        for name in dict.fromkeys((model, model.strip().lower())):
            override = hook(name)
            if override is not None:
                return override
    name, provider_id = _split_provider(model, provider)
    if hook is not None and name != model:
        override = hook(name)
        if override is not None:
            return override
    return _from_database(name, provider_id) or _unknown(model, provider)


def is_priced(model: str, provider: str | None = None) -> bool:
    return resolve_pricing(model, provider).priced


def price_usage(
    model: str,
    *,
    input_tokens: int,
    output_tokens: int,
    cached_input_tokens: int = 0,
    cache_creation_tokens: int = 0,
    reasoning_tokens: int = 0,
    provider: str | None = None,
    calls: int = 1,
) -> Cost:
    """Cost of one call in our token convention (see ``TokenUsage``), or of ``calls``
    calls whose tokens these are in all (tiered prices then go by the average prompt).

    Cache reads are part of ``input_tokens`` and billed at the cache-read rate; cache
    writes come on top at the cache-write rate; reasoning tokens are part of the
    output and billed at the output rate (every provider bills them so). A source that
    reports reasoning apart from a smaller output count is billed for the larger.
    """
    pricing = resolve_pricing(model, provider)
    uncached, cached, writes, output, prompt = billable_tokens(
        input_tokens, output_tokens, cached_input_tokens, cache_creation_tokens, reasoning_tokens
    )
    prompt //= max(1, calls)
    usd = (
        uncached * pricing.input.per_mtok(prompt)
        + cached * pricing.cached_input.per_mtok(prompt)
        + writes * pricing.cache_write.per_mtok(prompt)
        + output * pricing.output.per_mtok(prompt)
    ) / _MILLION
    return Cost(usd=usd, priced=pricing.priced, model=pricing.model)


def price_record(record: UsageRecord) -> Cost:
    """The cost of one recorded call, from its model and token counts."""
    return price_usage(
        record.model,
        input_tokens=record.input_tokens,
        output_tokens=record.output_tokens,
        cached_input_tokens=record.cached_input_tokens,
        cache_creation_tokens=record.cache_creation_tokens,
        reasoning_tokens=record.reasoning_tokens,
        provider=record.provider,
    )


def ensure_priced(record: UsageRecord) -> UsageRecord:
    """``record`` with ``cost_usd`` and ``priced`` filled from the price table, if
    they were not yet."""
    if record.cost_usd is None:
        cost = price_record(record)
        record.cost_usd = cost.usd
        record.priced = cost.priced
    return record


def calculate_cost(
    model: str,
    input_tokens: int,
    output_tokens: int,
    cached_input_tokens: int = 0,
    cache_creation_tokens: int = 0,
    reasoning_tokens: int = 0,
) -> Decimal:
    """USD cost as ``Decimal`` (weckr-sdk's signature). Zero for an unknown model:
    use ``price_usage`` or ``is_priced`` where that must be told apart."""
    return price_usage(
        model,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        cached_input_tokens=cached_input_tokens,
        cache_creation_tokens=cache_creation_tokens,
        reasoning_tokens=reasoning_tokens,
    ).usd


# Same-provider downgrades for caps with the "downgrade" action, keyed by the
# genai-prices model id. Never switches a customer to another vendor; a test
# checks every pair is the same provider and cheaper on input and output.
CHEAPER_ALTERNATIVE: Mapping[str, str] = {
    # OpenAI
    "gpt-4": "gpt-4o-mini",
    "gpt-4-turbo": "gpt-4o-mini",
    "gpt-4o": "gpt-4o-mini",
    "gpt-4.1": "gpt-4.1-mini",
    "gpt-4.1-mini": "gpt-4.1-nano",
    "gpt-5": "gpt-5-mini",
    "gpt-5-mini": "gpt-5-nano",
    "o1": "o4-mini",
    "o3": "o4-mini",
    # Anthropic
    "claude-opus-4": "claude-sonnet-4",
    "claude-opus-4-1": "claude-sonnet-4",
    "claude-sonnet-4": "claude-haiku-4-5",
    "claude-sonnet-4-5": "claude-haiku-4-5",
    "claude-3-7-sonnet": "claude-3-5-haiku",
    "claude-3-5-sonnet": "claude-3-5-haiku",
    "claude-3-opus": "claude-3-5-sonnet",
    # Google
    "gemini-2.5-pro": "gemini-2.5-flash",
    "gemini-2.5-flash": "gemini-2.5-flash-lite",
    "gemini-2.0-flash": "gemini-2.0-flash-lite",
    "gemini-1.5-pro": "gemini-1.5-flash",
}


def cheaper_alternative(model: str) -> str | None:
    """The same-provider model to downgrade to, or None when there is none."""
    hook = _alternative_override
    if hook is not None:
        chosen = hook(model)
        if chosen:
            return chosen
    name, _ = _split_provider(model, None)
    if name in CHEAPER_ALTERNATIVE:
        return CHEAPER_ALTERNATIVE[name]
    pricing = resolve_pricing(model)
    if not pricing.priced:
        return None
    return _alternatives_by_model_id().get(pricing.model)


@functools.cache
def _alternatives_by_model_id() -> dict[str, str]:
    """CHEAPER_ALTERNATIVE keyed by database ids too ("claude-opus-4" is "claude-opus-4-0")."""
    index = dict(CHEAPER_ALTERNATIVE)
    for name, alternative in CHEAPER_ALTERNATIVE.items():
        pricing = resolve_pricing(name)
        if pricing.priced:
            index.setdefault(pricing.model, alternative)
    return index
