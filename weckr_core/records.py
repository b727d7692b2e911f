from __future__ import annotations

import dataclasses
import functools
import itertools
import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Literal

Status = Literal["ok", "error"]
Source = Literal["sdk", "wrap", "langchain", "crewai", "manual", "otel"]
SOURCES: tuple[Source, ...] = ("sdk", "wrap", "langchain", "crewai", "manual", "otel")


def _new_id_prefix() -> str:
    digits = uuid.uuid4().hex
    return f"{digits[:8]}-{digits[8:12]}-{digits[12:16]}-{digits[16:20]}-"


# Event ids are this process's random UUID prefix and a counter. ``uuid.uuid4()``
# per call reads ``os.urandom``, which releases the GIL (with a backend's sender
# thread waiting for it, the caller can then wait milliseconds to get it back), and
# costs microseconds on a busy thread. The prefix keeps 74 random bits, new in every
# process and every forked child, so ids stay unique across processes and restarts;
# the counter makes them unique within one. ``next()`` on a count is atomic.
# The counter starts at 2**48, so its hex() always has the 12 digits of the id's last
# group at its end: cheaper to cut out than to format with a width (once per call).
_ID_COUNTER_START = 1 << 48
_id_prefix = _new_id_prefix()
_id_counter = itertools.count(_ID_COUNTER_START)


def _renew_id_prefix() -> None:
    global _id_prefix, _id_counter
    _id_prefix, _id_counter = _new_id_prefix(), itertools.count(_ID_COUNTER_START)


os.register_at_fork(after_in_child=_renew_id_prefix)


def new_event_id() -> str:
    """A unique event id in the form of a version 4 UUID."""
    return _id_prefix + hex(next(_id_counter))[-12:]


# The current time in UTC, without a Python frame of ours (called once per record).
utc_now: Callable[[], datetime] = functools.partial(datetime.now, UTC)


@dataclass(slots=True, kw_only=True)
class TokenUsage:
    """Token counts of one LLM call, in one convention for every provider.

    ``input_tokens`` is the whole prompt, cache reads included; ``cached_input_tokens``
    is the cache-read part of it. ``cache_creation_tokens`` (Anthropic cache writes)
    come on top of ``input_tokens``. ``output_tokens`` includes ``reasoning_tokens``.
    ``reported`` is False when the provider's response carried no usage at all, so a
    missing figure is never mistaken for a free call.
    """

    input_tokens: int = 0
    output_tokens: int = 0
    cached_input_tokens: int = 0
    cache_creation_tokens: int = 0
    reasoning_tokens: int = 0
    reported: bool = True

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.cache_creation_tokens + self.output_tokens

    def __add__(self, other: TokenUsage) -> TokenUsage:
        return TokenUsage(
            input_tokens=self.input_tokens + other.input_tokens,
            output_tokens=self.output_tokens + other.output_tokens,
            cached_input_tokens=self.cached_input_tokens + other.cached_input_tokens,
            cache_creation_tokens=self.cache_creation_tokens + other.cache_creation_tokens,
            reasoning_tokens=self.reasoning_tokens + other.reasoning_tokens,
            reported=self.reported and other.reported,
        )


@dataclass(slots=True, kw_only=True)
class UsageRecord:
    """One LLM call: who made it, for which feature and plan, what it used.

    Holds no prompt or completion text, by design. ``timestamp`` is when the call
    started, for the calls Weckr intercepts (SDK, wrap, LangChain, CrewAI).
    ``cost_usd`` is None until the call is priced; ``priced`` is False when no price
    is known for the model, so an unknown model is never silently counted as free.
    """

    event_id: str = field(default_factory=new_event_id)
    timestamp: datetime = field(default_factory=utc_now)
    user_id: str | None = None
    feature: str | None = None
    plan: str | None = None
    plan_revenue_usd: Decimal | None = None
    # The paying customer (workspace, team, organisation) when it is not the user.
    account_id: str | None = None
    provider: str = "unknown"
    model: str = "unknown"
    requested_model: str | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    cached_input_tokens: int = 0
    cache_creation_tokens: int = 0
    reasoning_tokens: int = 0
    cost_usd: Decimal | None = None
    priced: bool = True
    usage_reported: bool = True
    latency_ms: int | None = None
    status: Status = "ok"
    error_type: str | None = None
    source: Source = "sdk"
    run_id: str | None = None
    parent_run_id: str | None = None
    agent: str | None = None
    task: str | None = None
    step: str | None = None
    tags: tuple[str, ...] = ()
    # The cap reservation this call settled (the server drops it when it stores the row).
    reservation_id: str | None = None

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.cache_creation_tokens + self.output_tokens

    def token_usage(self) -> TokenUsage:
        """The record's counts as a ``TokenUsage`` (the inverse of ``apply_usage``)."""
        return TokenUsage(
            input_tokens=self.input_tokens,
            output_tokens=self.output_tokens,
            cached_input_tokens=self.cached_input_tokens,
            cache_creation_tokens=self.cache_creation_tokens,
            reasoning_tokens=self.reasoning_tokens,
            reported=self.usage_reported,
        )

    def apply_usage(self, usage: TokenUsage) -> None:
        self.input_tokens = usage.input_tokens
        self.output_tokens = usage.output_tokens
        self.cached_input_tokens = usage.cached_input_tokens
        self.cache_creation_tokens = usage.cache_creation_tokens
        self.reasoning_tokens = usage.reasoning_tokens
        self.usage_reported = usage.reported

    def replace(self, **changes: Any) -> UsageRecord:
        return dataclasses.replace(self, **changes)

    def to_wire(self) -> dict[str, Any]:
        """The camelCase payload of ``POST /api/v1/log``: weckr-sdk's fields, always,
        and ours where they differ from the server's defaults (absent means None,
        no tags, usage reported)."""
        payload: dict[str, Any] = {
            "eventId": self.event_id,
            "timestamp": self.timestamp.isoformat(),
            "userId": self.user_id,
            "feature": self.feature,
            "planName": self.plan,
            "planRevenueUsd": _float_or_none(self.plan_revenue_usd),
            "provider": self.provider,
            "model": self.model,
            "inputTokens": self.input_tokens,
            "outputTokens": self.output_tokens,
            "cachedInputTokens": self.cached_input_tokens,
            "cacheCreationTokens": self.cache_creation_tokens,
            "reasoningTokens": self.reasoning_tokens,
            # Informational only: the server recomputes the cost from the tokens.
            "costUsd": _float_or_none(self.cost_usd),
            "latencyMs": self.latency_ms,
            "status": self.status,
            "source": self.source,
        }
        optional = (
            ("accountId", self.account_id),
            ("requestedModel", self.requested_model),
            ("errorType", self.error_type),
            ("runId", self.run_id),
            ("parentRunId", self.parent_run_id),
            ("agent", self.agent),
            ("task", self.task),
            ("step", self.step),
            ("reservationId", self.reservation_id),
        )
        for key, value in optional:
            if value is not None:
                payload[key] = value
        if self.tags:
            payload["tags"] = list(self.tags)
        if not self.usage_reported:
            payload["usageReported"] = False
        return payload


def _float_or_none(value: Decimal | None) -> float | None:
    return None if value is None else float(value)
