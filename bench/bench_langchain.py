"""Overhead of WeckrHandler on a LangChain chat model call.

Run: ``.venv/bin/python -m bench.bench_langchain``. Times ``invoke`` of a fake chat
model (no network) with no handler, with a do-nothing ``BaseCallbackHandler`` (the
price of LangChain's callback machinery itself) and with ``WeckrHandler`` doing a
cap check and recording. Reports the median of several interleaved rounds.
"""

from __future__ import annotations

import argparse
import functools
import gc
import statistics
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

from weckr_core import MemoryBackend
from weckr_core.backends import CapDecision
from weckr_core.records import UsageRecord
from weckr_langchain import WeckrHandler


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


class QueueBackend:
    """What a production backend does on the caller's thread: a cached decision
    and a hand-off to a queue (delivery and pricing happen elsewhere)."""

    def __init__(self) -> None:
        self.decision = CapDecision("allow")
        self.queue: deque[UsageRecord] = deque(maxlen=10_000)

    def check(self, user_id: str | None, plan: str | None, model: str) -> CapDecision:
        return self.decision

    def record(self, record: UsageRecord) -> None:
        self.queue.append(record)

    def flush(self, timeout: float = 5.0) -> bool:
        return True


def per_call_us(call: Callable[[], object], calls: int) -> float:
    # CPU time of this process: on a shared machine, wall time mostly measures the
    # neighbours.
    gc.collect()
    start = time.process_time()
    for _ in range(calls):
        call()
    return (time.process_time() - start) / calls * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=21)
    parser.add_argument("--calls", type=int, default=500)
    args = parser.parse_args()

    warnings.simplefilter("ignore")
    model = BenchChatModel()
    memory = MemoryBackend(max_records=10_000)
    memory.set_cap("pro", "1000")  # a cap to check, far from reached
    cases: dict[str, Callable[[], object]] = {}
    configs: dict[str, Any] = {
        "no handler": {},
        "do-nothing handler": {"callbacks": [NoopHandler()]},
        "WeckrHandler (MemoryBackend)": {
            "callbacks": [WeckrHandler(backend=memory, user_id="u1", plan="pro")]
        },
        "WeckrHandler (queue backend)": {
            "callbacks": [WeckrHandler(backend=QueueBackend(), user_id="u1", plan="pro")]
        },
        "WeckrHandler + loop guards": {
            "callbacks": [
                WeckrHandler(
                    backend=QueueBackend(),
                    user_id="u1",
                    plan="pro",
                    max_llm_calls=25,
                    max_cost_usd="5",
                )
            ]
        },
    }
    for name, config in configs.items():
        cases[name] = functools.partial(model.invoke, "hello", config)

    for call in cases.values():  # warm up: imports, price cache
        per_call_us(call, 200)
    samples: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(args.rounds):
        for name, call in cases.items():
            samples[name].append(per_call_us(call, args.calls))

    medians = {name: statistics.median(values) for name, values in samples.items()}
    noop = medians["do-nothing handler"]
    print(
        f"invoke of a fake chat model, CPU time: median of {args.rounds} rounds"
        f" x {args.calls} calls"
    )
    for name, median in medians.items():
        print(
            f"  {name:30} {median:7.1f} us/call   x{median / noop:.3f}"
            f"   {median - noop:+6.1f} us vs do-nothing"
        )
    headline = medians["WeckrHandler (MemoryBackend)"] / noop
    print(f"WeckrHandler / do-nothing handler: {headline:.3f} (goal <= 1.15)")
    callbacks = statistics.median(callback_us(model, args.calls) for _ in range(args.rounds))
    print(f"WeckrHandler's own callbacks (start + end, queue backend): {callbacks:.1f} us/call")


class _Capture(BaseCallbackHandler):
    def on_chat_model_start(self, *args: Any, **kwargs: Any) -> None:
        self.start = (args, kwargs)

    def on_llm_end(self, *args: Any, **kwargs: Any) -> None:
        self.end = (args, kwargs)


def callback_us(model: BenchChatModel, calls: int) -> float:
    """The handler alone, replaying the events of one real invoke with fresh run ids."""
    capture = _Capture()
    model.invoke("hello", {"callbacks": [capture]})
    (start_args, start_kwargs), (end_args, end_kwargs) = capture.start, capture.end
    handler = WeckrHandler(backend=QueueBackend(), user_id="u1", plan="pro")
    run_ids = [uuid.uuid4() for _ in range(calls)]
    gc.collect()
    begin = time.process_time()
    for run_id in run_ids:
        handler.on_chat_model_start(*start_args, **{**start_kwargs, "run_id": run_id})
        handler.on_llm_end(*end_args, **{**end_kwargs, "run_id": run_id})
    return (time.process_time() - begin) / calls * 1e6


if __name__ == "__main__":
    main()
