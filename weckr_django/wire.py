"""The Weckr wire format: a camelCase JSON event in, a validated ``UsageRecord`` out.

Every rule that rejects an event raises ``WireError`` with a message that says what
is wrong, so the API answers 400 and never 500, and the task queue never drops a
row without saying why. The client's ``costUsd`` and ``marginUsd`` are ignored: the
server prices every call itself.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any, NamedTuple

from weckr_core.backends.base import CapRequest
from weckr_core.pricing import is_priced
from weckr_core.records import SOURCES, UsageRecord, new_event_id
from weckr_django.conf import weckr_settings
from weckr_django.periods import event_cutoff

#: A single call above this many tokens of one kind is a client bug or an attack.
MAX_TOKENS_PER_CALL = 20_000_000
MAX_LATENCY_MS = 24 * 3600 * 1000
MAX_TAGS = 32
MAX_TAG_LENGTH = 100


class TextField(NamedTuple):
    """A text field of the wire format: its longest value (the length of the column
    it is stored in) and whether phone numbers are looked for in it."""

    max_length: int
    phones: bool = False


#: Every text field of an event and of a reservation. Phone numbers are looked for
#: only in free text: ids, model names and step counters hold dates, versions and
#: long numbers that a phone pattern would mistake for one.
TEXT_FIELDS: dict[str, TextField] = {
    "eventId": TextField(64),
    "timestamp": TextField(64),
    "userId": TextField(255, phones=True),
    "accountId": TextField(255, phones=True),
    "feature": TextField(255, phones=True),
    "planName": TextField(100, phones=True),
    "provider": TextField(50),
    "model": TextField(200),
    "requestedModel": TextField(200),
    "errorType": TextField(200),
    "runId": TextField(64),
    "parentRunId": TextField(64),
    "agent": TextField(255, phones=True),
    "task": TextField(255, phones=True),
    "step": TextField(100),
    "reservationId": TextField(64),
    "tags": TextField(MAX_TAG_LENGTH, phones=True),  # each tag
}
_EVENT_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,64}$")
_RESERVATION_ID = re.compile(r"^[A-Za-z0-9\-]{1,64}$")
_SURROGATE = re.compile("[\ud800-\udfff]")
_TOKEN_FIELDS = (
    ("inputTokens", "input_tokens"),
    ("outputTokens", "output_tokens"),
    ("cachedInputTokens", "cached_input_tokens"),
    ("cacheCreationTokens", "cache_creation_tokens"),
    ("reasoningTokens", "reasoning_tokens"),
)

# Personal data. An e-mail address: also with "%40", a full-width at sign, "(at)" or
# spaces around the "@"; the top-level domain is letters, so a Vertex AI model name
# such as "claude-3-5-sonnet@20240620" passes.
_EMAIL = re.compile(
    r"[\w.!#$%&'*+/=?^`{|}~-]+\s*(?:@|\uff20|%40|\(at\)|\[at\])\s*"
    r"[\w-]+(?:\.[\w-]+)*\.[^\W\d_]{2,}",
    re.IGNORECASE,
)
# Every rule below needs a digit or an at sign (in one of its spellings): a value with
# neither ("chat", "openai", "pro") is let through without running them.
_MAY_BE_PERSONAL = re.compile(r"[\d@\uff20]|%40|\(at\)|\[at\]", re.IGNORECASE)
# Set aside before any of these rules: a UUID is an id, whatever its digits look like.
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.IGNORECASE)
# A card number: digit groups with any separators (up to three characters between
# groups), checked by length, first digit and Luhn.
_DIGIT_GROUPS = re.compile(r"\d+(?:[^0-9A-Za-z]{1,3}\d+)*")
_DIGITS = re.compile(r"\d+")
# A phone number: international (+ and 8 to 15 digits), North American
# ("(555) 123-4567", "555.123.4567") or national with a leading 0 ("030 1234567",
# "01 23 45 67 89"). Bare digits are not a phone number: numeric user ids pass.
_PHONE = re.compile(
    r"(?<![\w+])\+\d[\d\s().\-/]{5,22}\d(?!\d)"
    r"|(?<![\w.])\(?\d{3}\)?[\s.\-]{1,2}\d{3}[\s.\-]\d{4}(?![\w])"
    r"|(?<![\w.])0\d{2,4}[\s/\-]\d{3,8}(?:[\s\-]\d{2,5})?(?![\w.])"
    r"|(?<![\w.])0\d(?:[\s.\-]\d{2}){4}(?![\w.])"
)
# An IBAN: country, check digits, then the country's length in letters and digits,
# in groups separated by single spaces or dashes, checked modulo 97.
_IBAN_START = re.compile(r"(?<![A-Za-z0-9])[A-Za-z]{2}\d{2}")
_IBAN_LENGTHS = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22,
    "BH": 22, "BI": 27, "BR": 29, "BY": 28, "CH": 21, "CR": 22, "CY": 28, "CZ": 24,
    "DE": 22, "DJ": 27, "DK": 18, "DO": 28, "EE": 20, "EG": 29, "ES": 24, "FI": 18,
    "FK": 18, "FO": 18, "FR": 27, "GB": 22, "GE": 22, "GI": 23, "GL": 18, "GR": 27,
    "GT": 28, "HR": 21, "HU": 28, "IE": 22, "IL": 23, "IQ": 23, "IS": 26, "IT": 27,
    "JO": 30, "KW": 30, "KZ": 20, "LB": 28, "LC": 32, "LI": 21, "LT": 20, "LU": 20,
    "LV": 21, "LY": 25, "MC": 27, "MD": 24, "ME": 22, "MK": 19, "MN": 20, "MR": 27,
    "MT": 31, "MU": 30, "NI": 28, "NL": 18, "NO": 15, "OM": 23, "PK": 24, "PL": 28,
    "PS": 29, "PT": 25, "QA": 29, "RO": 24, "RS": 22, "RU": 33, "SA": 24, "SC": 31,
    "SD": 18, "SE": 24, "SI": 19, "SK": 24, "SM": 27, "SO": 23, "ST": 25, "SV": 28,
    "TL": 23, "TN": 24, "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20, "YE": 30,
}  # fmt: skip


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


def _has_card_number(value: str) -> bool:
    for match in _DIGIT_GROUPS.finditer(value):
        groups = _DIGITS.findall(match.group())
        # Digits glued to letters are part of an identifier (hex, "v2024..."), not a card.
        first = 1 if match.start() > 0 and value[match.start() - 1].isalpha() else 0
        last = len(groups) - (1 if value[match.end() : match.end() + 1].isalpha() else 0)
        for start in range(first, last):
            digits = ""
            for end in range(start, last):
                digits += groups[end]
                if len(digits) > 19:
                    break
                if (
                    len(digits) >= 13
                    and digits[0] in "23456"
                    and _grouped_like_a_card([len(group) for group in groups[start : end + 1]])
                    and _luhn_valid(digits)
                ):
                    return True
    return False


def _grouped_like_a_card(lengths: list[int]) -> bool:
    """Cards are printed in one run of digits, in fours (the last group shorter:
    4-4-4-1, 4-4-4-4-3) or as 4-6-5 and 4-6-4. Other groupings ("3428-682065006887",
    a date then a number) are ids."""
    if len(lengths) == 1:
        return True
    if len(lengths) == 3 and lengths[:2] == [4, 6] and lengths[2] in (4, 5):
        return True
    return all(length == 4 for length in lengths[:-1]) and 1 <= lengths[-1] <= 4


def _has_phone_number(value: str) -> bool:
    for match in _PHONE.finditer(value):
        digits = sum(char.isdigit() for char in match.group())
        if match.group().startswith("+"):
            if 8 <= digits <= 15:
                return True
        elif digits >= 9 or match.group().startswith("("):
            return True
    return False


def _has_iban(value: str) -> bool:
    for match in _IBAN_START.finditer(value):
        country = match.group()[:2].upper()
        length = _IBAN_LENGTHS.get(country)
        if length is None:
            continue
        compact = match.group().upper()
        position = match.end()
        while len(compact) < length and position < len(value):
            char = value[position]
            if char.isascii() and char.isalnum():
                compact += char.upper()
            elif not (char in " -" and value[position + 1 : position + 2].isalnum()):
                break
            position += 1
        following = value[position : position + 1]
        if len(compact) != length or (following.isascii() and following.isalnum()):
            continue
        rearranged = compact[4:] + compact[:4]
        if int("".join(str(int(char, 36)) for char in rearranged)) % 97 == 1:
            return True
    return False


def contains_personal_data(value: str, *, phones: bool = True) -> str | None:
    """What kind of personal data ``value`` holds ("an e-mail address", "a card
    number", ...), or None. Phone numbers only with ``phones`` (free text). UUIDs
    are set aside first: their digit groups are neither cards nor phone numbers."""
    if not _MAY_BE_PERSONAL.search(value):
        return None
    value = _UUID.sub(" ", value)
    if _EMAIL.search(value):
        return "an e-mail address"
    # A card has at least 13 digits and a phone number 8: most ids have fewer.
    digits = sum(map(str.isdigit, value))
    if digits >= 13 and _has_card_number(value):
        return "a card number"
    if _has_iban(value):
        return "a bank account number (IBAN)"
    if phones and digits >= 8 and _has_phone_number(value):
        return "a phone number"
    return None


def text_value(key: str, value: str, *, max_length: int, label: str | None = None) -> str:
    """``value`` when it can be stored as text: not over ``max_length``, no NUL
    character, no lone surrogate (neither PostgreSQL nor UTF-8 can hold those).
    ``label`` names the value in the message (``tags[3]``); ``key`` is the field."""
    name = label or key
    if len(value) > max_length:
        raise WireError(f"{name} is longer than {max_length} characters.", key)
    if "\x00" in value:
        raise WireError(f"{name} contains a NUL character.", key)
    if _SURROGATE.search(value):
        raise WireError(f"{name} contains a lone UTF-16 surrogate, which is not text.", key)
    return value


def _free_text(key: str, value: str, *, label: str | None = None) -> str:
    """``text_value`` with ``TEXT_FIELDS``'s limit, and no personal data."""
    rule = TEXT_FIELDS[key]
    text_value(key, value, max_length=rule.max_length, label=label)
    found = contains_personal_data(value, phones=rule.phones)
    if found:
        raise WireError(
            f"{label or key} looks like it contains {found}. Weckr stores no personal "
            "data: send an opaque id (such as the database primary key) or label instead.",
            key,
        )
    return value


def _text(
    payload: Mapping[str, Any], key: str, *, required: bool = False, allow_int: bool = False
) -> str | None:
    value = payload.get(key)
    if value is None or value == "":
        if required:
            raise WireError(f"{key} is required.", key)
        return None
    if allow_int and isinstance(value, int) and not isinstance(value, bool):
        if abs(value) >= 10 ** TEXT_FIELDS[key].max_length:
            raise WireError(f"{key} is longer than {TEXT_FIELDS[key].max_length} digits.", key)
        value = str(value)
    if not isinstance(value, str):
        raise WireError(f"{key} must be a string, not {type(value).__name__}.", key)
    return _free_text(key, value)


def _tags(payload: Mapping[str, Any]) -> tuple[str, ...]:
    value = payload.get("tags") or []
    if not isinstance(value, list) or not all(isinstance(tag, str) for tag in value):
        raise WireError("tags must be a list of strings.", "tags")
    if len(value) > MAX_TAGS:
        raise WireError(f"tags: at most {MAX_TAGS}, not {len(value)}.", "tags")
    return tuple(_free_text("tags", tag, label=f"tags[{index}]") for index, tag in enumerate(value))


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
    text_value("timestamp", value, max_length=TEXT_FIELDS["timestamp"].max_length)
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
    cutoff = event_cutoff(now)
    if cutoff is not None and moment < cutoff:
        raise WireError(
            f"timestamp is before {cutoff:%Y-%m-%d}: this server keeps "
            f"{weckr_settings.EVENT_RETENTION_MONTHS} month(s) of events "
            "(WECKR['EVENT_RETENTION_MONTHS']).",
            "timestamp",
        )
    return moment


def reservation_id(payload: Mapping[str, Any], key: str = "reservationId") -> str | None:
    value = _text(payload, key)
    if value is not None and not _RESERVATION_ID.match(value):
        raise WireError(f"{key} is not a reservation id.", key)
    return value


def event_id_of(payload: Any) -> str | None:
    """The ``eventId`` of a payload when it is a valid one (to name a rejected event)."""
    value = payload.get("eventId") if isinstance(payload, Mapping) else None
    return value if isinstance(value, str) and _EVENT_ID.match(value) else None


@dataclass(frozen=True, slots=True)
class CheckQuery:
    """A valid ``GET /api/v1/check`` query, each value stripped."""

    user_id: str | None
    account_id: str | None
    plan: str | None
    model: str


def parse_check(params: Mapping[str, str]) -> CheckQuery:
    """Validate the query of ``GET /api/v1/check``; the model is "unknown" when not
    given. The check stores nothing, so only the text rules apply, not the
    personal-data ones."""
    values: dict[str, str] = {}
    for key in ("userId", "accountId", "planName", "model"):
        value = params.get(key, "").strip()
        values[key] = text_value(key, value, max_length=TEXT_FIELDS[key].max_length)
    return CheckQuery(
        values["userId"] or None,
        values["accountId"] or None,
        values["planName"] or None,
        values["model"] or "unknown",
    )


def parse_reserve(payload: Any) -> CapRequest:
    """Validate the body of ``POST /api/v1/reserve``: who is about to call which
    model, and the call's size (prompt tokens counted by the client, its output
    limit). Raises ``WireError`` with a clear message."""
    if not isinstance(payload, Mapping):
        raise WireError("Send a JSON object.")
    model = _text(payload, "model", required=True)
    assert model is not None
    if "inputTokens" not in payload:
        raise WireError("inputTokens is required: the prompt tokens of the call.", "inputTokens")
    max_output = payload.get("maxOutputTokens")
    return CapRequest(
        user_id=_text(payload, "userId", allow_int=True),
        account_id=_text(payload, "accountId", allow_int=True),
        plan=_text(payload, "planName"),
        model=model,
        provider=_text(payload, "provider"),
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

    event_id = _text(payload, "eventId")
    if event_id is not None and not _EVENT_ID.match(event_id):
        raise WireError("eventId may hold only letters, digits and . _ : -", "eventId")
    model = _text(payload, "model", required=True)
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

    plan = _text(payload, "planName")
    provider = _text(payload, "provider") or "unknown"
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

    record = UsageRecord(
        event_id=event_id or new_event_id(),
        timestamp=_timestamp(payload, now),
        user_id=_text(payload, "userId", allow_int=True),
        account_id=_text(payload, "accountId", allow_int=True),
        feature=_text(payload, "feature", allow_int=True),
        plan=plan,
        plan_revenue_usd=_money(payload, "planRevenueUsd"),
        provider=provider,
        model=model,
        requested_model=_text(payload, "requestedModel"),
        latency_ms=None if latency is None else int(latency),
        status="error" if status == "error" else "ok",
        error_type=_text(payload, "errorType"),
        usage_reported=usage_reported,
        run_id=_text(payload, "runId"),
        parent_run_id=_text(payload, "parentRunId"),
        agent=_text(payload, "agent"),
        task=_text(payload, "task"),
        step=_text(payload, "step", allow_int=True),
        tags=_tags(payload),
        source=source,
        reservation_id=reservation_id(payload),
    )
    for attr, value in tokens.items():
        setattr(record, attr, value)
    return record


@dataclass(frozen=True, slots=True)
class Rejection:
    """An event of a batch that was not stored: its position in the batch, its
    ``eventId`` when it had a valid one, and why."""

    index: int
    event_id: str | None
    error: str
    field: str | None = None

    def to_wire(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "eventId": self.event_id,
            "error": self.error,
            "field": self.field,
        }


def parse_batch(
    payloads: Sequence[Any], *, now: datetime | None = None
) -> tuple[list[tuple[int, UsageRecord]], list[Rejection]]:
    """``parse_event`` for each payload: the valid records with their index in the
    batch, and a ``Rejection`` for each invalid payload."""
    records: list[tuple[int, UsageRecord]] = []
    rejected: list[Rejection] = []
    for index, payload in enumerate(payloads):
        try:
            records.append((index, parse_event(payload, now=now)))
        except WireError as error:
            rejected.append(Rejection(index, event_id_of(payload), error.message, error.field))
    return records, rejected
