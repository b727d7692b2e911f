"""Usage records as JSON text for ``POST /api/v1/log/batch``, fast.

``encode_event(record)`` gives the same JSON object as ``json.dumps(record.to_wire())``
(``costUsd`` aside, computed here in float from the cached rates rather than in
``Decimal``: the server reprices every call and the wire carries a float anyway).
It runs for every record a busy process makes, on the thread that sends the batch
(most often a thread that records usage, see ``HttpBackend``): the text is
assembled from pieces that repeat from one call to the next (a user's id, the
feature, the model, the second) and are encoded once, instead of building and
encoding a dict per record.
"""

from __future__ import annotations

import json
import math
import operator
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from json.encoder import encode_basestring  # json.dumps(str, ensure_ascii=False), in C
from typing import Final

from weckr_core import pricing
from weckr_core.pricing import ModelPricing, Rate, billable_tokens, resolve_pricing, tier_price
from weckr_core.records import PlainCall, UsageRecord, WhoKey

_MAX_CACHED_STRINGS: Final = 4096
_MAX_CACHED_PRICES: Final = 1024

_FloatRate = tuple[float, tuple[tuple[int, float], ...]]
# The pricing it came from; the four rates; the four base prices when no rate has
# tiers (the usual case: the cost is then one sum of products).
_FloatPricing = tuple[
    ModelPricing,
    _FloatRate,
    _FloatRate,
    _FloatRate,
    _FloatRate,
    tuple[float, float, float, float] | None,
]

_WhoKey = WhoKey
# For ``encode_plain``: the ``pricing.prices_version`` the rates are of, the text
# before the token counts and after ``latencyMs``, the four base rates.
_PlainEntry = tuple[int, str, str, float, float, float, float]

_strings: dict[str, str] = {}
_plain: dict[_WhoKey, _PlainEntry] = {}
_segments: dict[tuple[object, ...], tuple[str, str]] = {}
_prices: dict[tuple[str, str], _FloatPricing] = {}
# The last UTC second a timestamp was written for, and its "2026-11-22T10:11:12"; the
# same for timestamps given as seconds since the epoch.
_last_second: tuple[datetime, str] = (datetime.min.replace(tzinfo=UTC), "")
_last_epoch_second: tuple[int, str] = (-1, "")


def _text(value: str | None) -> str:
    """A JSON string (or null), from a bounded cache: most values repeat."""
    if value is None:
        return "null"
    encoded = _strings.get(value)
    if encoded is None:
        if len(_strings) >= _MAX_CACHED_STRINGS:
            _strings.clear()
        # The dict is only ever replaced whole or added to: safe across threads.
        encoded = _strings[value] = (
            encode_basestring(value) if type(value) is str else json.dumps(value)
        )
    return encoded


def _number(value: float) -> str:
    if not math.isfinite(value):
        raise ValueError(f"Out of range float values are not JSON compliant: {value!r}")
    return repr(float(value))


def _float_rate(rate: Rate) -> _FloatRate:
    return float(rate.base), tuple((start, float(price)) for start, price in rate.tiers)


def _float_pricing(pricing: ModelPricing) -> _FloatPricing:
    rates = tuple(
        _float_rate(rate)
        for rate in (pricing.input, pricing.cached_input, pricing.cache_write, pricing.output)
    )
    flat = None if any(tiers for _, tiers in rates) else tuple(base for base, _ in rates)
    return (pricing, *rates, flat)  # type: ignore[return-value]


def cost_usd(record: UsageRecord) -> float:
    """``price_record(record).usd`` as a float, from rates converted once per model."""
    key = (record.model, record.provider)
    model_pricing = resolve_pricing(*key)
    cached = _prices.get(key)
    if cached is None or cached[0] is not model_pricing:  # new model, or prices changed
        if len(_prices) >= _MAX_CACHED_PRICES:
            _prices.clear()
        cached = _prices[key] = _float_pricing(model_pricing)
    uncached, cached_tokens, writes, output, prompt = billable_tokens(
        record.input_tokens,
        record.output_tokens,
        record.cached_input_tokens,
        record.cache_creation_tokens,
        record.reasoning_tokens,
    )
    flat = cached[5]
    if flat is not None:
        return (
            uncached * flat[0] + cached_tokens * flat[1] + writes * flat[2] + output * flat[3]
        ) / 1e6
    _, input_rate, cached_rate, write_rate, output_rate, _ = cached
    return (
        uncached * tier_price(*input_rate, prompt)
        + cached_tokens * tier_price(*cached_rate, prompt)
        + writes * tier_price(*write_rate, prompt)
        + output * tier_price(*output_rate, prompt)
    ) / 1e6


def _timestamp(moment: datetime) -> str:
    """``moment.isoformat()``; for UTC times the date and time to the second are
    kept from the last call, as records made around the same time share them."""
    if moment.tzinfo is not UTC:
        return moment.isoformat()
    global _last_second
    start, prefix = _last_second
    since = moment - start
    if since.days or since.seconds:  # not within the second written last
        start = moment.replace(microsecond=0)
        prefix = start.replace(tzinfo=None).isoformat()
        _last_second = (start, prefix)  # replaced whole: safe across threads
        micro = moment.microsecond
    else:
        micro = since.microseconds
    return f"{prefix}.{micro:06d}+00:00" if micro else prefix + "+00:00"


def _epoch_timestamp(seconds: float) -> str:
    """``datetime.fromtimestamp(seconds, UTC).isoformat()``, with its rounding to the
    microsecond (half to even), the date and time to the second kept from the last
    call."""
    if seconds < 0:
        return datetime.fromtimestamp(seconds, UTC).isoformat()
    global _last_epoch_second
    whole = int(seconds)
    micro = round((seconds - whole) * 1e6)  # the fraction is exact; so is datetime's
    if micro == 1_000_000:
        whole, micro = whole + 1, 0
    second, prefix = _last_epoch_second
    if whole != second:
        prefix = datetime.fromtimestamp(whole, UTC).replace(tzinfo=None).isoformat()
        _last_epoch_second = (whole, prefix)  # replaced whole: safe across threads
    return f"{prefix}.{micro:06d}+00:00" if micro else prefix + "+00:00"


# The fields that are the same for all of a user's calls of one feature and model,
# as a tuple; a C getter, as it runs for every record.
_who_key: Callable[[UsageRecord], _WhoKey] = operator.attrgetter(
    "user_id", "feature", "plan", "plan_revenue_usd", "provider", "model", "status", "source"
)


def _who(key: _WhoKey) -> tuple[str, str]:
    """The fields of ``_who_key``, encoded once per combination: the text between
    ``timestamp`` and ``inputTokens``, and the text after ``latencyMs``."""
    encoded = _segments.get(key)
    if encoded is None:
        if len(_segments) >= _MAX_CACHED_STRINGS:
            _segments.clear()
        user_id, feature, plan, revenue, provider, model, status, source = key
        encoded = _segments[key] = (
            (
                f'"userId":{_text(user_id)}'
                f',"feature":{_text(feature)}'
                f',"planName":{_text(plan)}'
                f',"planRevenueUsd":{"null" if revenue is None else _number(float(revenue))}'
                f',"provider":{_text(provider)}'
                f',"model":{_text(model)}'
            ),
            f',"status":{_text(status)},"source":{_text(source)}',
        )
    return encoded


def encode_event(record: UsageRecord, cost: float | None) -> str:
    """The record's wire payload as compact JSON text (see ``UsageRecord.to_wire``),
    with ``cost`` as its ``costUsd``."""
    who, how = _who(_who_key(record))
    latency = record.latency_ms
    text = (
        f'{{"eventId":{encode_basestring(record.event_id)}'
        # isoformat() gives digits, "-", ":", ".", "+" and "T": nothing to escape.
        f',"timestamp":"{_timestamp(record.timestamp)}",{who}'
        f',"inputTokens":{int(record.input_tokens)}'
        f',"outputTokens":{int(record.output_tokens)}'
        f',"cachedInputTokens":{int(record.cached_input_tokens)}'
        f',"cacheCreationTokens":{int(record.cache_creation_tokens)}'
        f',"reasoningTokens":{int(record.reasoning_tokens)}'
        f',"costUsd":{"null" if cost is None else _number(cost)}'
        f',"latencyMs":{"null" if latency is None else int(latency)}{how}'
    )
    if record.plain_on_wire():
        return text + "}"
    optional = ""
    for key, value in record.optional_wire_fields():
        if value is not None:
            optional += f',"{key}":{_text(value)}'
    if record.tags:
        optional += f',"tags":[{",".join(_text(tag) for tag in record.tags)}]'
    if not record.usage_reported:
        optional += ',"usageReported":false'
    return text + optional + "}"


def encode_plain(record: UsageRecord) -> str | None:
    """``encode_event(record, cost_usd(record))`` in one go, for the usual record: not
    priced yet, nothing beyond weckr-sdk's fields (``plain_on_wire``), counts that
    need no clamping, a model with flat prices. None for any other record."""
    if record.cost_usd is not None or not record.plain_on_wire():
        return None
    return _plain_text(
        record.event_id,
        _timestamp(record.timestamp),
        _who_key(record),
        record.input_tokens,
        record.output_tokens,
        record.cached_input_tokens,
        record.cache_creation_tokens,
        record.reasoning_tokens,
        record.latency_ms,
    )


def encode_plain_call(call: PlainCall) -> str | None:
    """``encode_plain`` of the record a finished call would build (see
    ``PendingRecord.plain``), without building it."""
    event_id, started_at, key, counts, latency = call
    input_tokens, output, cached, writes, reasoning, _reported = counts
    return _plain_text(
        event_id,
        _epoch_timestamp(started_at),
        key,
        input_tokens,
        output,
        cached,
        writes,
        reasoning,
        latency,
    )


def _plain_text(
    event_id: str,
    timestamp: str,
    key: _WhoKey,
    input_tokens: int,
    output: int,
    cached: int,
    writes: int,
    reasoning: int,
    latency: int | None,
) -> str | None:
    """The event's text, or None when its counts or its model's prices need the
    general way. This runs for nearly every record a busy process makes; the text
    around the counts and the model's rates as floats are kept per user, feature and
    model."""
    entry = _plain.get(key)
    if entry is None or entry[0] != pricing.prices_version:
        new_entry = _plain_entry(key)
        if new_entry is None:
            return None
        entry = new_entry
    _, head, tail, input_rate, cached_rate, write_rate, output_rate = entry
    # Plain ints (written as they are), counts that ``billable_tokens`` would not clamp.
    if not (
        type(input_tokens) is type(cached) is type(writes) is type(output) is int
        and type(reasoning) is int
        and 0 <= cached <= input_tokens
        and writes >= 0
        and output >= 0
        and output >= reasoning
    ):
        return None
    # Twins of ``cost_usd``'s flat sum and ``encode_event``'s text, inlined because
    # this runs per record; test_encoding holds the three to the same output.
    cost = (
        (input_tokens - cached) * input_rate
        + cached * cached_rate
        + writes * write_rate
        + output * output_rate
    ) / 1e6
    if not math.isfinite(cost):
        return None
    return (
        f'{{"eventId":{encode_basestring(event_id)}'
        f',"timestamp":"{timestamp}",{head}'
        f',"inputTokens":{input_tokens}'
        f',"outputTokens":{output}'
        f',"cachedInputTokens":{cached}'
        f',"cacheCreationTokens":{writes}'
        f',"reasoningTokens":{reasoning}'
        f',"costUsd":{cost!r}'
        f',"latencyMs":{"null" if latency is None else int(latency)}{tail}'
    )


def _plain_entry(key: _WhoKey) -> _PlainEntry | None:
    """What ``_plain_text`` keeps for events with these fields; None when the model's
    prices have tiers."""
    version = pricing.prices_version  # read first: a change meanwhile is seen next time
    model, provider = key[5], key[4]
    flat = _float_pricing(resolve_pricing(model, provider))[5]
    if flat is None:
        return None
    if len(_plain) >= _MAX_CACHED_STRINGS:
        _plain.clear()
    who, how = _who(key)
    entry = _plain[key] = (version, who, how + "}", *flat)
    return entry


def encode_batch(events: Sequence[str]) -> bytes:
    """The body of ``POST /api/v1/log/batch`` from encoded events."""
    return ('{"events":[' + ",".join(events) + "]}").encode()
