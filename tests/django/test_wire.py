"""The wire rules: text that can be stored, and no personal data in any free-text field."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest

from weckr_core.records import new_event_id
from weckr_django.wire import (
    TEXT_FIELDS,
    CheckQuery,
    WireError,
    contains_personal_data,
    parse_batch,
    parse_check,
    parse_event,
    parse_reserve,
    text_value,
)


def payload(**fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"model": "gpt-4o", "provider": "openai", "inputTokens": 10}
    return {**base, **fields}


def refusal(**fields: Any) -> WireError:
    with pytest.raises(WireError) as caught:
        parse_event(payload(**fields))
    return caught.value


@pytest.mark.parametrize(
    "value",
    [
        "jane@example.com",
        "JANE.DOE+billing@Mail.Example.co.uk",
        "jane @ example.com",
        "jane%40example.com",
        "jane\uff20example.com",
        "jane(at)example.com",
        "mailto:jürgen@exämple.de",
    ],
)
def test_e_mail_addresses_in_their_disguises(value: str) -> None:
    assert contains_personal_data(value) == "an e-mail address"


@pytest.mark.parametrize(
    "value",
    [
        "4111111111111111",
        "4111 1111 1111 1111",
        "4111  1111  1111  1111",
        "4111.1111.1111.1111",
        "4111-1111-1111-1111",
        "4111/1111/1111/1111",
        "card: 4111_1111_1111_1111",
        "card-4242424242424242",
        "3782 822463 10005",  # Amex, 4-6-5
        "5555555555554444",
        "6011 1111 1111 1117",
        "paid with 4111 1111 1111 1111 / 123",
    ],
)
def test_card_numbers_with_any_separators(value: str) -> None:
    assert contains_personal_data(value) == "a card number"


@pytest.mark.parametrize(
    "value",
    [
        "+49 151 12345678",
        "+1 (555) 123-4567",
        "+15551234567",
        "+44 20 7946 0958",
        "(555) 123-4567",
        "555-123-4567",
        "555.123.4567",
        "030 1234567",
        "0151 1234 5678",
        "01 23 45 67 89",
    ],
)
def test_phone_numbers(value: str) -> None:
    assert contains_personal_data(value) == "a phone number"


@pytest.mark.parametrize(
    "value",
    [
        "DE89370400440532013000",
        "DE89 3704 0044 0532 0130 00",
        "de89 3704 0044 0532 0130 00",
        "GB82 WEST 1234 5698 7654 32",
        "iban: FR14 2004 1010 0505 0001 3M02 606",
        "NL91ABNA0417164300",
    ],
)
def test_ibans(value: str) -> None:
    assert contains_personal_data(value) == "a bank account number (IBAN)"


@pytest.mark.parametrize(
    "value",
    [
        "gpt-4o-2024-08-06",
        "claude-3-5-sonnet@20240620",  # Vertex AI model names hold an "@"
        "gemini-1.5-pro@001",
        "o1-2024-12-17",
        "2024-08-06",
        "2024-08-06T12:34:56Z",
        "2024-08-06 12:34:56",
        "2024-08-06T12:34:56.123456+00:00",
        "12345",
        "9876543210",
        "175928847299117063",  # a snowflake id
        "1722945600123",  # milliseconds since 1970
        "550e8400-e29b-41d4-a716-446655440000",
        "12345678-1234-1234-1234-123456789012",
        "abcd1234-5678-9012-3456-abcdef123456",
        "4111111111111112",  # fails Luhn
        # Digit groups that pass Luhn but are not grouped as cards are: ids.
        "api-3428-682065006887",
        "order-20240806-42424246",
        "DE89370400440532013001",  # fails the IBAN check
        "192.168.100.10",
        "v1.2.3",
        "team@home",
        "@channel",
        "summaries",
    ],
)
def test_ids_models_dates_and_numbers_pass(value: str) -> None:
    assert contains_personal_data(value) is None


def test_generated_ids_never_look_like_personal_data() -> None:
    ids = [new_event_id() for _ in range(2000)] + [str(uuid.uuid4()) for _ in range(2000)]
    ids += [f"202608-{uuid.uuid4().hex}" for _ in range(2000)]  # reservation ids
    assert [value for value in ids if contains_personal_data(value)] == []


def test_bare_digits_are_no_phone_number_but_a_formatted_number_is() -> None:
    assert parse_event(payload(userId="15551234567")).user_id == "15551234567"
    assert parse_event(payload(userId=12345)).user_id == "12345"
    assert refusal(userId="+4915112345678").field == "userId"


@pytest.mark.parametrize(
    ("field", "value", "words"),
    [
        ("tags", ["ok", "jane@example.com"], "tags[1] looks like it contains an e-mail address"),
        ("tags", ["+49 151 12345678"], "tags[0] looks like it contains a phone number"),
        ("agent", "researcher for jane@example.com", "e-mail"),
        ("task", "charge 4111 1111 1111 1111", "card number"),
        ("runId", "4111-1111-1111-1111", "card number"),
        ("parentRunId", "4111111111111111", "card number"),
        ("planName", "pro jane@example.com", "e-mail"),
        ("model", "gpt-4o jane@example.com", "e-mail"),
        ("requestedModel", "4111.1111.1111.1111", "card number"),
        ("errorType", "DE89 3704 0044 0532 0130 00", "IBAN"),
        ("feature", "call (555) 123-4567", "phone number"),
        ("step", "4111111111111111", "card number"),
        ("eventId", "4111-1111-1111-1111", "card number"),
    ],
)
def test_every_free_text_field_is_checked(field: str, value: Any, words: str) -> None:
    error = refusal(**{field: value})

    assert error.field == field
    assert words in error.message


def test_phone_numbers_are_not_looked_for_in_ids_models_or_steps() -> None:
    record = parse_event(
        payload(model="model-555-123-4567", runId="555-123-4567", step="030 1234567")
    )
    assert (record.model, record.run_id, record.step) == (
        "model-555-123-4567",
        "555-123-4567",
        "030 1234567",
    )


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ("a\x00b", "NUL character"),
        ("\ud800", "lone UTF-16 surrogate"),
        ("ok\udfffok", "lone UTF-16 surrogate"),
    ],
)
@pytest.mark.parametrize("field", sorted(set(TEXT_FIELDS) - {"tags"}))
def test_text_that_cannot_be_stored_is_refused_in_every_field(
    field: str, value: str, words: str
) -> None:
    error = refusal(**{field: value})

    assert error.field == field
    assert words in error.message


def test_tags_that_cannot_be_stored_are_refused_by_position() -> None:
    assert "tags[1] contains a NUL character" in refusal(tags=["ok", "\x00"]).message
    assert refusal(tags=["\ud83d"]).field == "tags"
    assert refusal(tags=["x" * 101]).message == "tags[0] is longer than 100 characters."
    assert "at most 32" in refusal(tags=["a"] * 33).message


def test_the_longest_value_is_the_columns_length() -> None:
    assert parse_event(payload(userId="u" * 255)).user_id == "u" * 255
    assert refusal(userId="u" * 256).message == "userId is longer than 255 characters."
    assert refusal(userId=10**255).field == "userId"
    assert refusal(provider="p" * 51).field == "provider"


def test_a_valid_surrogate_pair_is_ordinary_text() -> None:
    record = parse_event(json.loads('{"model": "gpt-4o", "feature": "\\ud83d\\ude00 chat"}'))
    assert record.feature == "\U0001f600 chat"


def test_check_parameters_follow_the_text_rules_only() -> None:
    assert parse_check({"userId": " u1 ", "model": ""}) == CheckQuery("u1", None, None, "unknown")
    assert parse_check({"accountId": " acme "}).account_id == "acme"
    # A check stores nothing: an e-mail is the caller's business there.
    assert parse_check({"userId": "jane@example.com"}).user_id == "jane@example.com"
    with pytest.raises(WireError) as caught:
        parse_check({"planName": "p\x00"})
    assert caught.value.field == "planName"
    with pytest.raises(WireError):
        parse_check({"model": "m" * 201})


def test_reservations_follow_the_event_rules() -> None:
    with pytest.raises(WireError) as caught:
        parse_reserve({"model": "gpt-4o", "inputTokens": 1, "userId": "jane@example.com"})
    assert caught.value.field == "userId"
    with pytest.raises(WireError) as caught:
        parse_reserve({"model": "gpt-4o\ud800", "inputTokens": 1})
    assert caught.value.field == "model"


def test_a_batch_is_split_into_valid_records_and_rejections() -> None:
    records, rejected = parse_batch(
        [payload(eventId="a"), payload(eventId="b", tags=["\x00"]), "junk", payload(eventId="d")]
    )

    assert [(index, record.event_id) for index, record in records] == [(0, "a"), (3, "d")]
    assert [(item.index, item.event_id, item.field) for item in rejected] == [
        (1, "b", "tags"),
        (2, None, None),
    ]
    assert rejected[0].to_wire() == {
        "index": 1,
        "eventId": "b",
        "error": "tags[0] contains a NUL character.",
        "field": "tags",
    }


def test_text_value_names_the_field_and_the_position() -> None:
    assert text_value("userId", "u1", max_length=5) == "u1"
    with pytest.raises(WireError) as caught:
        text_value("tags", "\x00", max_length=5, label="tags[2]")
    assert (caught.value.field, caught.value.message) == (
        "tags",
        "tags[2] contains a NUL character.",
    )
