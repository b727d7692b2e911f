"""The Weckr wire format: a camelCase JSON event in, a validated ``UsageRecord`` out.

Every rule that rejects an event raises ``WireError`` with a message that says what
is wrong, so the API answers 400 and never 500, and the task queue never drops a
row without saying why. The client's ``costUsd`` and ``marginUsd`` are ignored: the
server prices every call itself.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

from weckr_core.backends.base import CapRequest
from weckr_core.pricing import is_priced
from weckr_core.records import SOURCES, UsageRecord, new_event_id

#: A single call above this many tokens of one kind is a client bug or an attack.
MAX_TOKENS_PER_CALL = 20_000_000
MAX_LATENCY_MS = 24 * 3600 * 1000
MAX_TAGS = 32
_EVENT_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,64}$")
_RESERVATION_ID = re.compile(r"^[A-Za-z0-9\-]{1,64}$")
_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[A-Za-z]{2,}")
_DIGIT_RUN = re.compile(r"\d(?:[ -]?\d){12,18}")
_TOKEN_FIELDS = (
    ("inputTokens", "input_tokens"),
    ("outputTokens", "output_tokens"),
    ("cachedInputTokens", "cached_input_tokens"),
    ("cacheCreationTokens", "cache_creation_tokens"),
    ("reasoningTokens", "reasoning_tokens"),
)


class WireError(ValueError):
    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field


def _luhn_valid(digits: str) -> bool:
    total = 0
    for index, char in enumerate(reversed(digits)):
        digit = int(char)
        if index % 2 == 1:
            digit *= 2
            if digit > 9:
                digit -= 9
        total += digit
    return total % 10 == 0


def contains_personal_data(value: str) -> str | None:
    """What kind of personal data ``value`` holds ("an e-mail address", "a card
    number"), or None. User ids and feature names must be opaque."""
    if _EMAIL.search(value):
        return "an e-mail address"
    for match in _DIGIT_RUN.finditer(value):
        digits = re.sub(r"\D", "", match.group())
        if 13 <= len(digits) <= 19 and _luhn_valid(digits):
            return "a card number"
    return None


def _text(
    payload: Mapping[str, Any],
    key: str,
    *,
    max_length: int,
    required: bool = False,
    allow_int: bool = False,
) -> str | None:
    value = payload.get(key)
    if value is None or value == "":
        if required:
            raise WireError(f"{key} is required.", key)
        return None
    if allow_int and isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        raise WireError(f"{key} must be a string, not {type(value).__name__}.", key)
    if len(value) > max_length:
        raise WireError(f"{key} is longer than {max_length} characters.", key)
    if "\x00" in value:
        raise WireError(f"{key} contains a NUL character.", key)
    return value


def _opaque(payload: Mapping[str, Any], key: str, *, max_length: int) -> str | None:
    value = _text(payload, key, max_length=max_length, allow_int=True)
    if value is not None:
        found = contains_personal_data(value)
        if found:
            raise WireError(
                f"{key} looks like it contains {found}. Send an opaque id (such as the "
                "database primary key) instead of personal data.",
                key,
            )
    return value


def _token_count(payload: Mapping[str, Any], key: str) -> int:
    value = payload.get(key, 0)
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise WireError(f"{key} must be a whole number, not {type(value).__name__}.", key)
    if isinstance(value, float) and (not math.isfinite(value) or not value.is_integer()):
        raise WireError(f"{key} must be a whole number, not {value!r}.", key)
    number = int(value)
    if number < 0:
        raise WireError(f"{key} must not be negative.", key)
    if number > MAX_TOKENS_PER_CALL:
        raise WireError(f"{key}={number} is more than one call can use.", key)
    return number


def _money(payload: Mapping[str, Any], key: str) -> Decimal | None:
    value = payload.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise WireError(f"{key} must be a number.", key)
    try:
        amount = Decimal(str(value))
    except InvalidOperation:
        raise WireError(f"{key} must be a number.", key) from None
    if not amount.is_finite() or amount < 0 or amount > Decimal(10) ** 9:
        raise WireError(f"{key} must be a non-negative amount of USD.", key)
    return amount.quantize(Decimal("0.01"))


def _timestamp(payload: Mapping[str, Any], now: datetime) -> datetime:
    value = payload.get("timestamp")
    if value is None:
        return now
    if not isinstance(value, str):
        raise WireError("timestamp must be an ISO 8601 string.", "timestamp")
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise WireError(f"timestamp {value!r} is not ISO 8601.", "timestamp") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    if moment > now + timedelta(hours=1):
        raise WireError("timestamp is in the future.", "timestamp")
    if moment < now - timedelta(days=400):
        raise WireError("timestamp is more than 400 days old.", "timestamp")
    return moment


def reservation_id(payload: Mapping[str, Any], key: str) -> str | None:
    value = _text(payload, key, max_length=64)
    if value is not None and not _RESERVATION_ID.match(value):
        raise WireError(f"{key} is not a reservation id.", key)
    return value


def parse_reserve(payload: Any) -> CapRequest:
    """Validate the body of ``POST /api/v1/reserve``: who is about to call which
    model, and the call's size (prompt tokens counted by the client, its output
    limit). Raises ``WireError`` with a clear message."""
    if not isinstance(payload, Mapping):
        raise WireError("Send a JSON object.")
    model = _text(payload, "model", max_length=200, required=True)
    assert model is not None
    if "inputTokens" not in payload:
        raise WireError("inputTokens is required: the prompt tokens of the call.", "inputTokens")
    max_output = payload.get("maxOutputTokens")
    return CapRequest(
        user_id=_opaque(payload, "userId", max_length=255),
        plan=_text(payload, "planName", max_length=100),
        model=model,
        provider=_text(payload, "provider", max_length=50),
        input_tokens=_token_count(payload, "inputTokens"),
        max_output_tokens=None
        if max_output is None
        else _token_count(payload, "maxOutputTokens") or None,
    )


def parse_event(payload: Any, *, now: datetime | None = None) -> UsageRecord:
    """Validate one wire event. Raises ``WireError`` with a clear message."""
    if not isinstance(payload, Mapping):
        raise WireError("Each event must be a JSON object.")
    now = now or datetime.now(UTC)

    event_id = _text(payload, "eventId", max_length=64)
    if event_id is not None and not _EVENT_ID.match(event_id):
        raise WireError("eventId may hold only letters, digits and . _ : -", "eventId")
    model = _text(payload, "model", max_length=200, required=True)
    assert model is not None
    tokens = {attr: _token_count(payload, key) for key, attr in _TOKEN_FIELDS}
    if tokens["cached_input_tokens"] > tokens["input_tokens"]:
        raise WireError("cachedInputTokens cannot exceed inputTokens.", "cachedInputTokens")

    status = payload.get("status") or "ok"
    if status not in ("ok", "error"):
        raise WireError("status must be 'ok' or 'error'.", "status")
    source = payload.get("source") or "sdk"
    if source not in SOURCES:
        raise WireError(f"source must be one of {', '.join(SOURCES)}.", "source")
    usage_reported = payload.get("usageReported", True)
    if not isinstance(usage_reported, bool):
        raise WireError("usageReported must be true or false.", "usageReported")

    plan = _text(payload, "planName", max_length=100)
    provider = _text(payload, "provider", max_length=50) or "unknown"
    if (
        plan is not None
        and status == "ok"
        and usage_reported
        and not any(tokens.values())
        and is_priced(model, provider)
    ):
        # A successful call on a priced model costs something; a client sending zeros
        # with a plan would otherwise spend without ever reaching its cap.
        raise WireError(
            f"A successful call to {model} cannot use zero tokens. Send the real counts, "
            "or status 'error' for a failed call.",
            "inputTokens",
        )

    latency = payload.get("latencyMs")
    if latency is not None:
        if isinstance(latency, bool) or not isinstance(latency, int | float):
            raise WireError("latencyMs must be a number.", "latencyMs")
        if not math.isfinite(latency) or not 0 <= latency <= MAX_LATENCY_MS:
            raise WireError("latencyMs must be between 0 and one day.", "latencyMs")

    tags_value = payload.get("tags") or []
    if not isinstance(tags_value, list) or not all(isinstance(tag, str) for tag in tags_value):
        raise WireError("tags must be a list of strings.", "tags")
    if len(tags_value) > MAX_TAGS or any(len(tag) > 100 for tag in tags_value):
        raise WireError(f"tags: at most {MAX_TAGS}, each up to 100 characters.", "tags")

    record = UsageRecord(
        event_id=event_id or new_event_id(),
        timestamp=_timestamp(payload, now),
        user_id=_opaque(payload, "userId", max_length=255),
        feature=_opaque(payload, "feature", max_length=255),
        plan=plan,
        plan_revenue_usd=_money(payload, "planRevenueUsd"),
        provider=provider,
        model=model,
        requested_model=_text(payload, "requestedModel", max_length=200),
        latency_ms=None if latency is None else int(latency),
        status="error" if status == "error" else "ok",
        error_type=_text(payload, "errorType", max_length=200),
        usage_reported=usage_reported,
        run_id=_text(payload, "runId", max_length=64),
        parent_run_id=_text(payload, "parentRunId", max_length=64),
        agent=_text(payload, "agent", max_length=255),
        task=_text(payload, "task", max_length=255),
        step=_text(payload, "step", max_length=100, allow_int=True),
        tags=tuple(tags_value),
        source=source,
        reservation_id=reservation_id(payload, "reservationId"),
    )
    for attr, value in tokens.items():
        setattr(record, attr, value)
    return record
