from __future__ import annotations

import warnings
from decimal import Decimal

import weckr_core
from weckr_core import MemoryBackend, UsageRecord, WeckrLoopError, calculate_cost
from weckr_core.backends import Backend, RunStop, report_run_stop


def record(user: str | None, model: str = "gpt-4o", input_tokens: int = 1000) -> UsageRecord:
    return UsageRecord(user_id=user, model=model, input_tokens=input_tokens, output_tokens=100)


def test_records_are_priced_and_spend_accumulates() -> None:
    backend = MemoryBackend()
    backend.record(record("u1"))
    backend.record(record("u1", model="acme-unknown"))
    first, second = backend.records
    assert first.cost_usd == calculate_cost("gpt-4o", 1000, 100)
    assert first.priced is True
    assert second.priced is False
    assert backend.spend("u1") == first.cost_usd


def test_cap_blocks_or_downgrades_once_spend_reaches_it() -> None:
    backend = MemoryBackend()
    backend.set_cap("free", "0.50")
    backend.set_cap("pro", 5, action="downgrade")
    assert backend.check("u1", "free", "gpt-4o").allowed
    backend.set_spend("u1", "0.50")
    blocked = backend.check("u1", "free", "gpt-4o")
    assert blocked.action == "block"
    assert blocked.current_spend == Decimal("0.50")
    assert blocked.remaining_budget == 0
    backend.set_spend("u2", 7)
    downgraded = backend.check("u2", "pro", "gpt-4o-2024-08-06")
    assert (downgraded.action, downgraded.alternative_model) == ("downgrade", "gpt-4o-mini")
    # No cheaper model: a downgrade plan blocks instead of letting the call through.
    assert backend.check("u2", "pro", "gpt-4o-mini").action == "block"
    # No user, or a plan with no cap: allowed.
    assert backend.check(None, "free", "gpt-4o").allowed
    assert backend.check("u1", "team", "gpt-4o").allowed
    assert backend.check_calls == 6


def test_bounded_memory() -> None:
    backend = MemoryBackend(max_records=3)
    for n in range(5):
        backend.record(record(f"u{n}"))
    assert [r.user_id for r in backend.records] == ["u2", "u3", "u4"]


def test_default_backend_keeps_records_with_a_warning() -> None:
    previous = weckr_core.configure(None)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            backend = weckr_core.get_backend()
        assert isinstance(backend, MemoryBackend)
        assert any("no backend configured" in str(w.message) for w in caught)
        assert weckr_core.get_backend() is backend
    finally:
        weckr_core.configure(previous)


def test_configure_returns_the_previous_backend() -> None:
    first, second = MemoryBackend(), MemoryBackend()
    original = weckr_core.configure(first)
    try:
        assert weckr_core.configure(second) is first
        assert weckr_core.get_backend() is second
    finally:
        weckr_core.configure(original)


def test_wire_payload_is_camel_case_and_carries_no_text() -> None:
    payload = UsageRecord(
        event_id="e1",
        user_id="u1",
        plan="pro",
        plan_revenue_usd=Decimal("29"),
        model="gpt-4o",
        input_tokens=10,
        cached_input_tokens=4,
        cache_creation_tokens=2,
        tags=("a",),
    ).to_wire()
    assert payload["eventId"] == "e1"
    assert payload["cachedInputTokens"] == 4
    assert payload["cacheCreationTokens"] == 2
    assert payload["planName"] == "pro"
    assert payload["planRevenueUsd"] == 29.0
    assert payload["tags"] == ["a"]
    assert not {"prompt", "messages", "content", "completion"} & set(payload)


def test_run_stops_go_to_backends_that_keep_them_and_nowhere_else() -> None:
    error = WeckrLoopError(
        "max_llm_calls=3 reached", llm_calls=3, tokens=90, cost=Decimal("0.2"), run_id="r1"
    )
    stop = RunStop.from_error(error, source="langchain", agent="researcher")
    assert (stop.run_id, stop.llm_calls, stop.tokens, stop.cost_usd) == (
        "r1",
        3,
        90,
        Decimal("0.2"),
    )

    memory = MemoryBackend()
    report_run_stop(memory, stop)
    assert memory.run_stops == [stop]

    class RecordsOnly(Backend):
        def record(self, record: UsageRecord) -> None:
            raise AssertionError("a stop is not a usage record")

    report_run_stop(RecordsOnly(), stop)  # nowhere to keep it: ignored, no error
