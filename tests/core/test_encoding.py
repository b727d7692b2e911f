"""The HttpBackend's JSON encoder against ``json.dumps(record.to_wire())``."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

import pytest

from weckr_core.backends.encoding import (
    cost_usd,
    encode_batch,
    encode_event,
    encode_plain,
    encode_plain_call,
)
from weckr_core.pricing import (
    ModelPricing,
    clear_pricing_cache,
    price_record,
    set_price_overrides,
)
from weckr_core.records import SOURCES, PlainCall, UsageRecord

# Strings that need escaping in JSON, or are not ASCII.
AWKWARD = ['say "hi"', "back\\slash", "tab\there", "line\nbreak", "\x00\x1f", "é中😀", "</script>"]
MODELS = [
    "gpt-4o-mini",
    "gpt-4o-2024-08-06",
    "openai/gpt-4o",
    "claude-3-5-sonnet-20241022",
    "gemini-2.5-pro",  # long-context tier
    "claude-sonnet-4-5",  # long-context tier
    "no-such-model",
]


def random_record(rng: random.Random) -> UsageRecord:
    def maybe(value: object) -> object:
        return value if rng.random() < 0.5 else None

    input_tokens = rng.choice([0, 5, 1200, 250_000])
    output_tokens = rng.choice([0, 80, 4000])
    return UsageRecord(
        event_id=rng.choice(["e1", f"{rng.getrandbits(64):x}", "a.b:c-d_e"]),
        timestamp=datetime(
            2026,
            11,
            22,
            10,
            rng.choice([11, 59]),
            rng.randint(0, 59),
            rng.choice([0, 7, 123456, 999999]),
            tzinfo=rng.choice([UTC, UTC, None, timezone(timedelta(hours=5, minutes=30))]),
        ),
        user_id=maybe(rng.choice(["u1", "42", *AWKWARD])),  # type: ignore[arg-type]
        feature=maybe(rng.choice(["summary", *AWKWARD])),  # type: ignore[arg-type]
        plan=maybe(rng.choice(["pro", "free"])),  # type: ignore[arg-type]
        plan_revenue_usd=maybe(rng.choice([Decimal(0), Decimal("29"), Decimal("9.99")])),  # type: ignore[arg-type]
        provider=rng.choice(["openai", "anthropic", "gemini", "unknown"]),
        model=rng.choice(MODELS),
        requested_model=maybe("gpt-4o"),  # type: ignore[arg-type]
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        cached_input_tokens=rng.choice([0, input_tokens // 2]),
        cache_creation_tokens=rng.choice([0, 50]),
        reasoning_tokens=rng.choice([0, output_tokens // 4]),
        usage_reported=rng.random() < 0.8,
        latency_ms=maybe(rng.choice([0, 850])),  # type: ignore[arg-type]
        status=rng.choice(["ok", "error"]),
        error_type=maybe("RateLimitError"),  # type: ignore[arg-type]
        source=rng.choice(SOURCES),
        run_id=maybe("run-1"),  # type: ignore[arg-type]
        parent_run_id=maybe("run-0"),  # type: ignore[arg-type]
        agent=maybe(rng.choice(["researcher", *AWKWARD])),  # type: ignore[arg-type]
        task=maybe("write"),  # type: ignore[arg-type]
        step=maybe("3"),  # type: ignore[arg-type]
        tags=tuple(rng.sample(["web", "beta", *AWKWARD], rng.randint(0, 3))),
    )


def test_events_are_the_json_of_to_wire() -> None:
    rng = random.Random(7)
    for _ in range(2000):
        record = random_record(rng)
        cost = rng.choice([None, 0.0, 0.0003525, 12.5])

        decoded = json.loads(encode_event(record, cost))

        assert decoded == {**record.to_wire(), "costUsd": cost}
        assert list(decoded) == list(record.to_wire())  # same key order, too


def test_the_batch_body_carries_every_event_in_order() -> None:
    records = [random_record(random.Random(seed)) for seed in range(20)]

    body = encode_batch([encode_event(record, None) for record in records])

    events = json.loads(body)["events"]
    assert [event["eventId"] for event in events] == [record.event_id for record in records]
    assert encode_batch([]) == b'{"events":[]}'


def test_non_finite_money_is_refused_as_json_dumps_would() -> None:
    with pytest.raises(ValueError, match="not JSON compliant"):
        encode_event(UsageRecord(plan_revenue_usd=Decimal("Infinity")), None)
    with pytest.raises(ValueError, match="not JSON compliant"):
        encode_event(UsageRecord(), float("nan"))


def test_cost_matches_the_decimal_price_for_every_kind_of_token() -> None:
    rng = random.Random(11)
    for _ in range(2000):
        record = random_record(rng)
        assert cost_usd(record) == pytest.approx(float(price_record(record).usd), rel=1e-12)


@pytest.fixture
def overrides() -> Iterator[None]:
    yield
    set_price_overrides(None)


def test_cost_follows_price_overrides(overrides: None) -> None:
    record = UsageRecord(model="gpt-4o-mini", provider="openai", input_tokens=1_000_000)
    before = cost_usd(record)

    set_price_overrides(
        lambda name: (
            ModelPricing.flat(name, input="2", output="8") if name == "gpt-4o-mini" else None
        )
    )

    assert cost_usd(record) == 2.0 != before


@pytest.mark.parametrize(
    "moment",
    [
        datetime(1969, 12, 31, 23, 59, 59, 500000, tzinfo=UTC),
        datetime(2026, 1, 1, 0, 0, 0, tzinfo=UTC),
        datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
        datetime(2026, 6, 1, 12, 0, 0, 1, tzinfo=timezone(timedelta(hours=-7))),
    ],
)
def test_timestamps_are_written_as_isoformat_writes_them(moment: datetime) -> None:
    record = UsageRecord(timestamp=moment)

    assert json.loads(encode_event(record, None))["timestamp"] == moment.isoformat()
    # Twice: the second time from the cache of seconds already written.
    assert json.loads(encode_event(record, None))["timestamp"] == moment.isoformat()


def plain_record(rng: random.Random) -> UsageRecord:
    """A record as an LLM call through the client makes it: counts normalised."""
    input_tokens = rng.choice([0, 5, 1200, 250_000])
    output_tokens = rng.choice([0, 80, 4000])
    return random_record(rng).replace(
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        cached_input_tokens=rng.choice([0, input_tokens // 2, input_tokens]),
        reasoning_tokens=rng.choice([0, output_tokens // 4, output_tokens]),
        requested_model=None,
        error_type=None,
        run_id=None,
        parent_run_id=None,
        agent=None,
        task=None,
        step=None,
        tags=(),
        usage_reported=True,
        latency_ms=rng.choice([None, 0, 850]),
    )


def test_the_one_pass_encoding_is_the_priced_encoding() -> None:
    rng = random.Random(13)
    taken = 0
    for _ in range(3000):
        record = plain_record(rng)

        text = encode_plain(record)

        if record.model in ("gemini-2.5-pro", "claude-sonnet-4-5"):
            assert text is None  # tiered prices: left to the general way
        else:
            assert text == encode_event(record, cost_usd(record))
            taken += 1
    assert taken > 2000


@pytest.mark.parametrize(
    "changes",
    [
        {"cost_usd": Decimal("0.5")},  # priced already
        {"agent": "researcher"},  # a field beyond weckr-sdk's
        {"tags": ("web",)},
        {"usage_reported": False},
        {"cached_input_tokens": 2000},  # more than the input: billed clamped
        {"reasoning_tokens": 90},  # more than the output
        {"input_tokens": -1, "cached_input_tokens": -1},
        {"input_tokens": 1200.0},  # not an int
        {"input_tokens": True},
    ],
)
def test_records_out_of_the_usual_are_left_to_the_general_way(changes: dict[str, object]) -> None:
    usual = UsageRecord(model="gpt-4o-mini", provider="openai", input_tokens=1200, output_tokens=80)
    assert encode_plain(usual) == encode_event(usual, cost_usd(usual))

    assert encode_plain(usual.replace(**changes)) is None


def test_the_one_pass_encoding_follows_price_changes(overrides: None) -> None:
    record = UsageRecord(model="gpt-4o-mini", provider="openai", input_tokens=1_000_000)
    before = json.loads(encode_plain(record) or "")["costUsd"]

    set_price_overrides(
        lambda name: (
            ModelPricing.flat(name, input="2", output="8") if name == "gpt-4o-mini" else None
        )
    )
    overridden = json.loads(encode_plain(record) or "")["costUsd"]
    set_price_overrides(None)
    clear_pricing_cache()

    assert overridden == 2.0 != before
    assert json.loads(encode_plain(record) or "")["costUsd"] == before


def test_timestamps_around_second_boundaries_in_any_order() -> None:
    start = datetime(2026, 12, 31, 23, 59, 58, 999_000, tzinfo=UTC)
    moments = [start + timedelta(microseconds=step * 250) for step in range(-8, 4000, 37)]
    random.Random(5).shuffle(moments)

    for moment in moments:
        assert json.loads(encode_event(UsageRecord(timestamp=moment), None))["timestamp"] == (
            moment.isoformat()
        )


def plain_call(record: UsageRecord, started_at: float) -> PlainCall:
    """The ``PlainCall`` of a finished call whose record is ``record`` at ``started_at``."""
    who = (
        record.user_id,
        record.feature,
        record.plan,
        record.plan_revenue_usd,
        record.provider,
        record.model,
        record.status,
        record.source,
    )
    return record.event_id, started_at, who, record.token_usage().counts(), record.latency_ms


def epoch_seconds(rng: random.Random) -> float:
    whole = rng.choice([0, 1, 1_700_000_000, 1_798_761_599, 4_102_444_800])
    fraction = rng.choice(
        [
            0.0,
            0.5,
            rng.random(),
            rng.randrange(1_000_000) / 1e6,  # on a microsecond, as time.time() rarely is
            (rng.randrange(1_000_000) + 0.5) / 1e6,  # half way: rounded to even
            0.9999995,
            0.99999951,
            1 - 2**-30,
        ]
    )
    return whole + fraction


def test_a_call_encoded_unbuilt_is_its_record_encoded() -> None:
    rng = random.Random(29)
    taken = 0
    for _ in range(3000):
        started_at = epoch_seconds(rng)
        record = plain_record(rng).replace(
            timestamp=datetime.fromtimestamp(started_at, UTC), status="ok"
        )

        text = encode_plain_call(plain_call(record, started_at))

        assert text == encode_plain(record)
        taken += text is not None
    assert taken > 2000


def test_unbuilt_calls_timestamps_round_as_datetime_does_in_any_order() -> None:
    rng = random.Random(31)
    moments = [epoch_seconds(rng) for _ in range(2000)]
    moments += [1_798_761_599 + step * 0.000_250_3 for step in range(-8, 8000, 37)]
    rng.shuffle(moments)
    record = UsageRecord(model="gpt-4o-mini", provider="openai")

    for seconds in moments:
        text = encode_plain_call(plain_call(record, seconds)) or ""
        expected = datetime.fromtimestamp(seconds, UTC).isoformat()
        assert json.loads(text)["timestamp"] == expected, seconds
