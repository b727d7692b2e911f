"""Overhead of WeckrHandler on a LangChain chat model call.

Run: ``.venv/bin/python -m bench.bench_langchain [--rounds N]``.

Times ``invoke`` of a fake chat model (no network, usage and served model reported
like a real integration) with no handler, with a do-nothing ``BaseCallbackHandler``
(the price of LangChain's callback machinery itself), with a second, identical
do-nothing handler (the control: its distance to the first is the method's noise
floor) and with ``WeckrHandler`` doing a cap check and recording.

The machines this runs on change speed by 20% or more within a fraction of a
second, so the cases are interleaved call by call: each round runs one ``invoke``
of each case, in a shuffled order, and each call is compared with the do-nothing
handler's call of its own round. ``added`` is the median over the rounds of that
difference, and the ratio is (do-nothing + added) / do-nothing. The order is
shuffled rather than rotated: a call runs faster after a call of the same kind (the
caches are warm for it), and a rotation gives each case the same predecessor every
round, which put the control 2.5 us below the do-nothing handler. Long-lived
objects are frozen out of the collector after the warm-up.

The headline is WeckrHandler with a queue backend: a cached cap decision and the
record handed to a queue, which is all a production backend does on the caller's
thread (``HttpBackend`` and ``DjangoBackend`` price and deliver on a thread of
their own). ``MemoryBackend`` is the test backend: it prices each record on the
caller's thread, so its row is shown for reference only. So do loop guards with a
``max_cost_usd``: that limit needs each call's price before the next call.
"""

from __future__ import annotations

import argparse
import functools
import gc
import statistics
import threading
import time
import uuid
import warnings
from collections import deque
from collections.abc import Callable
from typing import Any

from langchain_core.callbacks import BaseCallbackHandler, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.messages.ai import UsageMetadata
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.runnables import RunnableConfig

from bench.interleave import interleaved, paired_added
from weckr_core import MemoryBackend
from weckr_core.backends import ALLOW, Backend, CapDecision
from weckr_core.records import UsageRecord
from weckr_langchain import WeckrHandler

BASELINE = "do-nothing handler"
CONTROL = "do-nothing handler (control)"
HEADLINE = "WeckrHandler (queue backend)"
GOAL = 1.15


class BenchChatModel(BaseChatModel):
    """Answers at once, reporting usage and the served model like a real integration."""

    model: str = "gpt-4o"

    @property
    def _llm_type(self) -> str:
        return "bench-chat"

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        message = AIMessage(
            content="ok",
            usage_metadata=UsageMetadata(
                input_tokens=1200,
                output_tokens=80,
                total_tokens=1280,
                input_token_details={"cache_read": 1024},
            ),
            response_metadata={"model_name": "gpt-4o-2024-08-06", "model_provider": "openai"},
        )
        return ChatResult(generations=[ChatGeneration(message=message)])


class NoopHandler(BaseCallbackHandler):
    """Implements the same events as WeckrHandler, doing nothing."""

    def on_chat_model_start(self, *args: Any, **kwargs: Any) -> None:
        pass

    def on_llm_end(self, *args: Any, **kwargs: Any) -> None:
        pass


class QueueBackend(Backend):
    """What a production backend does on the caller's thread, as HttpBackend does
    it: a decision from a cache under a lock, with its expiry checked, and the
    record appended to a queue under a lock (delivery and pricing happen elsewhere)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._decisions: dict[tuple[str, str, str], tuple[CapDecision, float]] = {}
        self.queue: deque[tuple[int, UsageRecord]] = deque(maxlen=10_000)
        self._last_seq = 0

    def check(
        self, user_id: str | None, plan: str | None, model: str, account_id: str | None = None
    ) -> CapDecision:
        if not user_id or not plan:
            return ALLOW
        key = (user_id, plan, model)
        with self._lock:
            cached = self._decisions.get(key)
            if cached is not None and cached[1] > time.monotonic():
                return cached[0]
            self._decisions[key] = (ALLOW, time.monotonic() + 5.0)
        return ALLOW

    def record(self, record: UsageRecord) -> None:
        with self._lock:
            self._last_seq += 1
            self.queue.append((self._last_seq, record))


def configs() -> dict[str, RunnableConfig]:
    memory = MemoryBackend(max_records=10_000)
    memory.set_cap("pro", "1000")  # a cap to check, far from reached
    guarded = WeckrHandler(
        backend=QueueBackend(), user_id="u1", plan="pro", max_llm_calls=25, max_cost_usd="5"
    )
    return {
        "no handler": {},
        BASELINE: {"callbacks": [NoopHandler()]},
        CONTROL: {"callbacks": [NoopHandler()]},
        HEADLINE: {"callbacks": [WeckrHandler(backend=QueueBackend(), user_id="u1", plan="pro")]},
        "WeckrHandler (MemoryBackend)": {
            "callbacks": [WeckrHandler(backend=memory, user_id="u1", plan="pro")]
        },
        "WeckrHandler + loop guards": {"callbacks": [guarded]},
    }


class _Capture(BaseCallbackHandler):
    def on_chat_model_start(self, *args: Any, **kwargs: Any) -> None:
        self.start = (args, kwargs)

    def on_llm_end(self, *args: Any, **kwargs: Any) -> None:
        self.end = (args, kwargs)


def callback_us(model: BenchChatModel, calls: int = 2000, repeats: int = 9) -> float:
    """The handler alone, replaying the events of one real invoke with fresh run ids
    in a hot loop: median of ``repeats`` batches, in us per call."""
    capture = _Capture()
    model.invoke("hello", {"callbacks": [capture]})
    (start_args, start_kwargs), (end_args, end_kwargs) = capture.start, capture.end
    handler = WeckrHandler(backend=QueueBackend(), user_id="u1", plan="pro")
    batches = []
    for _ in range(repeats):
        events = [
            ({**start_kwargs, "run_id": run_id}, {**end_kwargs, "run_id": run_id})
            for run_id in (uuid.uuid4() for _ in range(calls))
        ]
        begin = time.perf_counter()
        for start, end in events:
            handler.on_chat_model_start(*start_args, **start)
            handler.on_llm_end(*end_args, **end)
        batches.append((time.perf_counter() - begin) / calls * 1e6)
    return statistics.median(batches)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=4000, help="calls per case")
    parser.add_argument("--warmup", type=int, default=300, help="untimed calls per case")
    args = parser.parse_args()

    warnings.simplefilter("ignore")
    model = BenchChatModel()
    cases: dict[str, Callable[[], object]] = {
        name: functools.partial(model.invoke, "hello", config) for name, config in configs().items()
    }
    for call in cases.values():  # imports, price cache, LangChain's own caches
        for _ in range(args.warmup):
            call()
    # Long-lived objects out of the collector's way, so a collection costs what the
    # calls allocate, not what was imported.
    gc.collect()
    gc.freeze()
    times = interleaved(cases, args.rounds, seed=0)

    baseline = times[BASELINE]
    noop = statistics.median(baseline)
    print(
        f"invoke of a fake chat model: {args.rounds} rounds, one call of each case per "
        "round in a shuffled order; us per call"
    )
    print(f"added: median difference to the {BASELINE}'s call of the same round")
    print(f"{'case':<32}{'median':>8}{'added':>8}{'ratio':>7}")
    added = {name: paired_added(values, baseline) for name, values in times.items()}
    ratios = {name: (noop + value) / noop for name, value in added.items()}
    for name, values in times.items():
        print(
            f"{name:<32}{statistics.median(values) * 1e6:>8.1f}{added[name] * 1e6:>+8.1f}"
            f"{ratios[name]:>7.3f}"
        )
    print(
        f"noise floor (control vs {BASELINE}): {added[CONTROL] * 1e6:+.1f} us,"
        f" {ratios[CONTROL] - 1:+.3f}"
    )
    print(f"{HEADLINE} / {BASELINE}: {ratios[HEADLINE]:.3f} (goal <= {GOAL})")
    gc.unfreeze()
    print(
        "WeckrHandler's own callbacks (start + end, queue backend, replayed in a hot "
        f"loop): {callback_us(model):.1f} us per call"
    )


if __name__ == "__main__":
    main()
