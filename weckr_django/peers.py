"""What Tokenr's and AICostManager's SDKs send to ``/track``, as Weckr wire events.

Their attribution lands on ours: Tokenr's ``feature_name`` on the feature, its
``agent_id`` on the agent, its ``team_id`` and AICostManager's ``customer_key`` on
the account (the customer who pays), a ``user_id`` in Tokenr's ``tags`` or
AICostManager's ``context`` on the user, the rest of ``tags`` and ``context`` on
tags as ``key:value``. AICostManager's ``response_id`` is the event
id, so a resend is stored once. Then the events go through the wire's own
validation, pricing and dedupe (``ingest.ingest_payloads``), like any other; a
rejection names the field as the sender wrote it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from weckr_core.records import TokenUsage
from weckr_core.usage import (
    usage_from_anthropic,
    usage_from_bedrock,
    usage_from_gemini,
    usage_from_openai,
)
from weckr_django.wire import MAX_TOKENS_PER_CALL, WireError

#: The most records one AICostManager request holds (its SDK's own limit).
MAX_TRACKED = 1_000

#: Our wire fields, as Tokenr's payload names them (for error messages).
TOKENR_FIELDS = {
    "model": "model",
    "provider": "provider",
    "inputTokens": "input_tokens",
    "outputTokens": "output_tokens",
    "cachedInputTokens": "cache_read_tokens",
    "cacheCreationTokens": "cache_write_tokens",
    "feature": "feature_name",
    "agent": "agent_id",
    "accountId": "team_id",
    "userId": "tags.user_id",
    "latencyMs": "latency_ms",
    "timestamp": "requested_at",
    "status": "status",
    "tags": "tags",
}
_TOKENR_STATUS = {"success": "ok", "ok": "ok", "error": "error"}


def tokenr_event(payload: Any) -> dict[str, Any]:
    """One call as Tokenr's ``track()`` posts it (null fields left out; its
    ``input_tokens`` leaves out the cache reads it sends apart)."""
    if not isinstance(payload, Mapping):
        raise WireError(
            'Send a JSON object: one call as Tokenr sends it, or {"tracked": [...]} as '
            "AICostManager does."
        )
    cache_read = _tokens(payload, "cache_read_tokens")
    status = payload.get("status", "success")
    if not isinstance(status, str) or status not in _TOKENR_STATUS:
        raise WireError("status must be 'success' or 'error'.", "status")
    tags = payload.get("tags")
    if tags is not None and not isinstance(tags, Mapping):
        raise WireError("tags must be a JSON object of names and values.", "tags")
    event: dict[str, Any] = {
        "model": payload.get("model"),
        "provider": payload.get("provider"),
        "inputTokens": _tokens(payload, "input_tokens", required=True) + cache_read,
        "outputTokens": _tokens(payload, "output_tokens", required=True),
        "cachedInputTokens": cache_read,
        "cacheCreationTokens": _tokens(payload, "cache_write_tokens"),
        "feature": payload.get("feature_name"),
        "agent": payload.get("agent_id"),
        "latencyMs": payload.get("latency_ms"),
        "timestamp": payload.get("requested_at"),
        "status": _TOKENR_STATUS[status],
        "source": "manual",
    }
    event.update(_who(payload.get("team_id"), tags or {}))
    return {name: value for name, value in event.items() if value is not None}


def _who(payer: Any, attributes: Mapping[str, Any]) -> dict[str, Any]:
    """The account (the team or customer who pays), the user (a ``user_id`` among
    the attributes) and the other attributes as tags."""
    tags = [
        f"{name}:{value}"
        for name, value in attributes.items()
        if name != "user_id" and value is not None
    ]
    user = attributes.get("user_id")
    return {"accountId": payer, "userId": None if user == "" else user, "tags": tags or None}


def _tokens(payload: Mapping[str, Any], name: str, *, required: bool = False) -> int:
    value = payload.get(name)
    if value is None:
        if required:
            raise WireError(f"{name} is required.", name)
        return 0
    return _count(value, name)


def _count(value: Any, where: str) -> int:
    """A token count of theirs: a whole number >= 0 (junk is refused, not read as 0)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise WireError(f"{where} must be a whole number >= 0.", where)
    if value > MAX_TOKENS_PER_CALL:
        raise WireError(f"{where} is more than {MAX_TOKENS_PER_CALL:,} tokens.", where)
    return value


#: AICostManager's vendors (the part of ``service_key`` before ``::``) and how each
#: one's raw usage object reads.
AICOSTMANAGER_VENDORS: dict[str, Callable[[Any], TokenUsage]] = {
    "openai": usage_from_openai,
    "xai": usage_from_openai,
    "fireworks-ai": usage_from_openai,
    "anthropic": usage_from_anthropic,
    "google": usage_from_gemini,
    "amazon-bedrock": usage_from_bedrock,
}


class UnknownServiceKey(WireError):
    """A ``service_key`` that names no vendor Weckr reads (AICostManager's
    ``service_key_unknown``)."""


def aicostmanager_event(record: Any) -> dict[str, Any]:
    """One record of AICostManager's ``{"tracked": [...]}``: ``service_key``
    ("vendor::model"), ``response_id``, ``timestamp`` (epoch seconds, as a string),
    ``payload`` (the provider's raw usage object), ``customer_key``, ``context``."""
    if not isinstance(record, Mapping):
        raise WireError("Each tracked record must be a JSON object.")
    service_key = record.get("service_key")
    if not isinstance(service_key, str) or "::" not in service_key:
        raise UnknownServiceKey(
            "service_key must be 'vendor::model', e.g. 'openai::gpt-4o-mini'.", "service_key"
        )
    vendor, _, model = service_key.partition("::")
    reader = AICOSTMANAGER_VENDORS.get(vendor)
    if reader is None or not model:
        raise UnknownServiceKey(
            f"service_key {service_key!r}: the vendor must be one of "
            f"{', '.join(sorted(AICOSTMANAGER_VENDORS))}, followed by '::' and the model.",
            "service_key",
        )
    payload = record.get("payload")
    if payload is None:
        payload = {}
    if not isinstance(payload, Mapping):
        raise WireError("payload must be the provider's usage object.", "payload")
    _check_counts(payload, "payload")
    usage = reader(payload)
    context = record.get("context")
    if context is not None and not isinstance(context, Mapping):
        raise WireError("context must be a JSON object of names and values.", "context")
    event: dict[str, Any] = {
        "eventId": record.get("response_id"),
        "timestamp": _epoch_seconds(record.get("timestamp")),
        "provider": vendor,
        "model": model,
        "inputTokens": usage.input_tokens,
        "outputTokens": usage.output_tokens,
        "cachedInputTokens": usage.cached_input_tokens,
        "cacheCreationTokens": usage.cache_creation_tokens,
        "reasoningTokens": usage.reasoning_tokens,
        "usageReported": usage.reported,
        "source": "manual",
    }
    event.update(_who(record.get("customer_key"), context or {}))
    return {name: value for name, value in event.items() if value is not None}


#: Our wire fields, as AICostManager's record names them (for error messages).
AICOSTMANAGER_FIELDS = {
    "eventId": "response_id",
    "timestamp": "timestamp",
    "model": "service_key",
    "provider": "service_key",
    "accountId": "customer_key",
    "userId": "context.user_id",
    "tags": "context",
}


def _check_counts(usage: Mapping[str, Any], path: str) -> None:
    """Every token count in a raw usage object is a whole number >= 0 (nested
    details included): junk is refused, not read as 0."""
    for name, value in usage.items():
        where = f"{path}.{name}"
        if isinstance(value, Mapping):
            _check_counts(value, where)
        elif value is not None and ("token" in name.lower() or name.endswith("Count")):
            if isinstance(value, list) and name.lower().endswith("details"):
                continue  # per-modality breakdowns (Gemini's); the totals are read
            _count(value, where)


def _epoch_seconds(value: Any) -> str | None:
    """AICostManager's timestamp, seconds since the epoch (a string of a float), as
    the ISO 8601 the wire reads; an ISO string passes as it is."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, bool):
        raise WireError("timestamp must be seconds since the epoch.", "timestamp")
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        if isinstance(value, str):
            return value  # ISO 8601: the wire validates it
        raise WireError("timestamp must be seconds since the epoch.", "timestamp") from None
    try:
        return datetime.fromtimestamp(seconds, UTC).isoformat()
    except (OverflowError, OSError, ValueError):
        raise WireError("timestamp is out of range.", "timestamp") from None
