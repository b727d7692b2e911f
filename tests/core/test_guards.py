from __future__ import annotations

import threading
from decimal import Decimal

import pytest

from weckr_core import WeckrCapError, WeckrLoopError, is_weckr_cap_error
from weckr_core.guards import RunGuard, RunLimits, tool_fingerprint


def test_max_llm_calls_allows_exactly_n() -> None:
    guard = RunGuard(RunLimits.of(max_llm_calls=3), run_id="r1", user_id="u")
    for _ in range(3):
        guard.before_llm_call()
        guard.after_llm_call(10, Decimal("0.01"))
    with pytest.raises(WeckrLoopError) as caught:
        guard.before_llm_call()
    error = caught.value
    assert error.llm_calls == 3
    assert error.tokens == 30
    assert error.cost == Decimal("0.03")
    assert error.run_id == "r1"
    assert "max_llm_calls=3" in error.reason
    assert isinstance(error, WeckrCapError) and is_weckr_cap_error(error)
    assert guard.stopped == error.reason


def test_cost_and_token_limits_stop_the_next_call() -> None:
    guard = RunGuard(RunLimits.of(max_cost_usd="0.05", max_tokens=1_000))
    guard.before_llm_call()
    guard.after_llm_call(400, Decimal("0.03"))
    guard.before_llm_call()
    guard.after_llm_call(400, Decimal("0.03"))
    with pytest.raises(WeckrLoopError, match="max_cost_usd"):
        guard.before_llm_call()
    tokens_only = RunGuard(RunLimits.of(max_tokens=500))
    tokens_only.before_llm_call()
    tokens_only.after_llm_call(500, None)
    with pytest.raises(WeckrLoopError, match="max_tokens"):
        tokens_only.before_llm_call()


def test_repeated_tool_guard_counts_identical_calls_in_a_row() -> None:
    guard = RunGuard(RunLimits.of(max_repeated_tool_calls=2))
    guard.on_tool_call("search", {"q": "x", "n": 1})
    guard.on_tool_call("search", '{"n": 1, "q": "x"}')  # same call, other key order
    with pytest.raises(WeckrLoopError, match="search called 3 times"):
        guard.on_tool_call("search", {"q": "x", "n": 1})


def test_a_different_call_resets_the_repeat_count() -> None:
    guard = RunGuard(RunLimits.of(max_repeated_tool_calls=2))
    for arguments in ({"q": "a"}, {"q": "a"}, {"q": "b"}, {"q": "a"}, {"q": "a"}):
        guard.on_tool_call("search", arguments)
    assert guard.stopped is None
    assert guard.tool_calls == ["search"] * 5


def test_parallel_calls_cannot_slip_past_the_limit() -> None:
    guard = RunGuard(RunLimits.of(max_llm_calls=10))
    allowed: list[int] = []
    barrier = threading.Barrier(8)

    def worker() -> None:
        barrier.wait()
        for _ in range(5):
            try:
                guard.before_llm_call()
            except WeckrLoopError:
                return
            allowed.append(1)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(allowed) == 10


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_llm_calls": 0},
        {"max_tokens": -1},
        {"max_cost_usd": 0},
        {"max_repeated_tool_calls": 1.5},
    ],
)
def test_limits_must_be_positive(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        RunLimits.of(**kwargs)  # type: ignore[arg-type]


def test_fingerprint_of_unparseable_text_arguments() -> None:
    assert tool_fingerprint("shell", " ls -la ") == "shell:ls -la"
    assert tool_fingerprint("t", {"b": 1, "a": 2}) == tool_fingerprint("t", {"a": 2, "b": 1})
