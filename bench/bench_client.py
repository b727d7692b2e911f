"""Overhead of ``Weckr.chat`` and ``wrap(client)`` on a real OpenAI client.

Run: ``.venv/bin/python -m bench.bench_client [--calls N] [--rounds R]``.

Times ``client.chat.completions.create`` of a real ``openai.OpenAI`` client whose
HTTP goes to an ``httpx.MockTransport`` (so the SDK's own request building and
parsing run, without a network), then the same call through ``wk.chat`` and through
``wk.wrap(client)``. Weckr uses an ``HttpBackend`` pointed at a loopback Weckr server
that answers ``/check`` (the cap decision is cached after the first call) and takes
the usage events, which the benchmark checks all arrived; the server runs in its own
process so its CPU is not charged to the client. The "no delivery" rows use a backend
that only queues records: the client's own cost on the caller's thread, without the
HttpBackend's sender thread (pricing, JSON, HTTP) competing for the GIL. When the
published weckr-sdk is installed, its ``Weckr.chat`` against the same server is
timed too. Modes run in interleaved batches; figures are medians over the batches.

Columns: wall-clock time per call and what it adds to the direct call (paired with
the direct batch of the same round); the caller thread's own CPU time per call
(``time.thread_time``: immune to other processes on the machine, and what the
caller's thread spends on Weckr); and the CPU time of the process's other threads
per call (the HttpBackend sender, or weckr-sdk's thread per POST), including the
delivery finished between batches.
"""

from __future__ import annotations

import argparse
import gc
import json
import multiprocessing
import statistics
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

import httpx
import openai

from tests.core.http_server import CHECK_PATH, LOG_PATH, FakeWeckrServer
from weckr_core import Weckr, attribute
from weckr_core.backends import ALLOW, CapDecision
from weckr_core.records import UsageRecord

MODEL = "gpt-4o-mini"
MESSAGES: Any = [{"role": "user", "content": "Summarize this."}]
BODY = json.dumps(
    {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": "gpt-4o-mini-2024-07-18",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}
        ],
        "usage": {
            "prompt_tokens": 1200,
            "completion_tokens": 80,
            "total_tokens": 1280,
            "prompt_tokens_details": {"cached_tokens": 1024, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0},
        },
    }
).encode()


def answer(request: httpx.Request) -> httpx.Response:
    return httpx.Response(200, headers={"content-type": "application/json"}, content=BODY)


def openai_client() -> openai.OpenAI:
    return openai.OpenAI(
        api_key="bench",
        base_url="http://fake/v1",
        max_retries=0,
        http_client=httpx.Client(transport=httpx.MockTransport(answer)),
    )


class QueueOnlyBackend:
    """Allows every call and keeps records in a bounded queue, sending nothing: the
    client's own cost on the caller's thread, without any delivery work."""

    def __init__(self) -> None:
        self.records: deque[UsageRecord] = deque(maxlen=1000)

    def check(self, user_id: str | None, plan: str | None, model: str) -> CapDecision:
        return ALLOW

    def record(self, record: UsageRecord) -> None:
        self.records.append(record)

    def flush(self, timeout: float = 5.0) -> bool:
        return True


def serve(connection: Connection) -> None:
    """Child process: run the loopback Weckr server until told to stop, then report
    how many usage events it took, per source."""
    with FakeWeckrServer() as server:
        connection.send(server.url)
        connection.recv()
        sources: dict[str, int] = {}
        for event in server.accepted_events:
            sources[event.get("source") or "weckr-sdk"] = (
                sources.get(event.get("source") or "weckr-sdk", 0) + 1
            )
        connection.send(sources)


@contextmanager
def loopback_weckr_server() -> Iterator[tuple[str, Callable[[], dict[str, int]]]]:
    """A Weckr server in its own process, so its CPU is not charged to the client."""
    ours, theirs = multiprocessing.get_context("spawn").Pipe()
    process = multiprocessing.get_context("spawn").Process(
        target=serve, args=(theirs,), daemon=True
    )
    process.start()
    url: str = ours.recv()
    result: dict[str, int] = {}

    def stop() -> dict[str, int]:
        ours.send(None)
        result.update(ours.recv())
        return result

    try:
        yield url, stop
    finally:
        if not result:
            stop()
        process.join(10)


@dataclass
class Samples:
    """Per-call figures of each timed batch, in seconds."""

    wall: list[float] = field(default_factory=list)
    caller_cpu: list[float] = field(default_factory=list)
    other_cpu: list[float] = field(default_factory=list)


def run_batch(
    call: Callable[[], Any], calls: int, flushes: list[Callable[[], Any]], samples: Samples
) -> None:
    """Time ``calls`` calls, then wait (untimed) until their records are delivered,
    so every batch pays for its own delivery and for nothing else's."""
    process_start, thread_start = time.process_time(), time.thread_time()
    start = time.perf_counter()
    for _ in range(calls):
        call()
    wall = time.perf_counter() - start
    caller_cpu = time.thread_time() - thread_start
    for flush in flushes:
        flush()
    other_cpu = (time.process_time() - process_start) - (time.thread_time() - thread_start)
    samples.wall.append(wall / calls)
    samples.caller_cpu.append(caller_cpu / calls)
    samples.other_cpu.append(max(0.0, other_cpu) / calls)


def paired_added(values: list[float], baseline: list[float]) -> float:
    """Median difference to the direct batch of the same round: robust to load drift."""
    return statistics.median(v - b for v, b in zip(values, baseline, strict=True))


def own_work(repeats: int = 7, calls: int = 20_000) -> dict[str, float]:
    """Weckr's own work per call on the caller's thread, without the SDK's request:
    ``chat.completions.create`` of a real client replaced by one returning a canned,
    already-parsed response. Best of ``repeats`` runs, in seconds per call."""
    client = openai_client()
    response = client.chat.completions.create(model=MODEL, messages=MESSAGES)
    canned = client.chat.completions
    canned.create = lambda **_: response  # type: ignore[method-assign, assignment]
    wk = Weckr(backend=QueueOnlyBackend(), plans={"pro": 29})
    wrapped = wk.wrap(client)
    chat_params = {"model": MODEL, "messages": MESSAGES, "user_id": "u1", "plan": "pro"}

    def via_wrap() -> Any:
        with attribute(user_id="u1", plan="pro"):
            return wrapped.chat.completions.create(model=MODEL, messages=MESSAGES)

    modes: dict[str, Callable[[], Any]] = {
        "canned create": lambda: client.chat.completions.create(model=MODEL, messages=MESSAGES),
        "wk.chat": lambda: wk.chat(client, chat_params),
        "wrap(client)": via_wrap,
    }
    best = {name: float("inf") for name in modes}
    for _ in range(repeats):
        for name, call in modes.items():
            start = time.perf_counter()
            for _ in range(calls):
                call()
            best[name] = min(best[name], (time.perf_counter() - start) / calls)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=200, help="calls per timed batch")
    parser.add_argument("--rounds", type=int, default=40, help="batches per mode")
    parser.add_argument("--warmup", type=int, default=500, help="untimed calls per mode")
    args = parser.parse_args()

    with loopback_weckr_server() as (server_url, stop_server):
        log_url, check_url = server_url + LOG_PATH, server_url + CHECK_PATH
        client = openai_client()
        wk = Weckr(
            api_key="wk_bench", plans={"pro": 29}, endpoint=log_url, check_endpoint=check_url
        )
        wrapped = wk.wrap(openai_client())
        chat_params = {"model": MODEL, "messages": MESSAGES, "user_id": "u1", "plan": "pro"}

        def direct() -> Any:
            return client.chat.completions.create(model=MODEL, messages=MESSAGES)

        def via_chat() -> Any:
            return wk.chat(client, chat_params)

        def via_wrap() -> Any:
            with attribute(user_id="u1", plan="pro"):
                return wrapped.chat.completions.create(model=MODEL, messages=MESSAGES)

        local = Weckr(backend=QueueOnlyBackend(), plans={"pro": 29})
        local_wrapped = local.wrap(openai_client())

        def local_chat() -> Any:
            return local.chat(client, chat_params)

        def local_wrap() -> Any:
            with attribute(user_id="u1", plan="pro"):
                return local_wrapped.chat.completions.create(model=MODEL, messages=MESSAGES)

        modes: dict[str, Callable[[], Any]] = {
            "direct": direct,
            "wk.chat": via_chat,
            "wrap(client)": via_wrap,
            "wk.chat, no delivery": local_chat,
            "wrap, no delivery": local_wrap,
        }
        flushes: list[Callable[[], Any]] = [lambda: wk.flush(30)]
        try:
            import weckr  # the published weckr-sdk

            sdk = weckr.Weckr(
                "wk_bench", plans={"pro": 29}, endpoint=log_url, check_endpoint=check_url
            )
            modes["weckr-sdk 0.3.0 chat"] = lambda: sdk.chat(client, chat_params)
            flushes.append(lambda: sdk.flush(timeout_seconds=30))
        except ImportError:
            print("weckr-sdk is not installed: its figure is left out.")

        for call in modes.values():
            for _ in range(args.warmup):
                call()
        for flush in flushes:
            flush()

        names = list(modes)
        samples = {name: Samples() for name in names}
        gc.collect()
        for round_number in range(args.rounds):
            # Rotate the order so no mode always runs right after another.
            shift = round_number % len(names)
            for name in names[shift:] + names[:shift]:
                run_batch(modes[name], args.batch, flushes, samples[name])

        calls_per_mode = args.warmup + args.rounds * args.batch
        wk.close()
        delivered = stop_server()

    baseline = samples["direct"]
    print(
        f"real openai.OpenAI over httpx.MockTransport; {args.rounds} interleaved batches "
        f"of {args.batch} calls per mode; medians; us per call"
    )
    print(
        f"{'mode':<24}{'wall':>9}{'added':>8}{'ratio':>7}"
        f"{'caller CPU':>12}{'added':>8}{'other threads CPU':>19}"
    )
    direct_wall = statistics.median(baseline.wall)
    for name in names:
        mode = samples[name]
        added = paired_added(mode.wall, baseline.wall)
        print(
            f"{name:<24}{statistics.median(mode.wall) * 1e6:>9.1f}{added * 1e6:>8.1f}"
            f"{(direct_wall + added) / direct_wall:>7.3f}"
            f"{statistics.median(mode.caller_cpu) * 1e6:>12.1f}"
            f"{paired_added(mode.caller_cpu, baseline.caller_cpu) * 1e6:>8.1f}"
            f"{statistics.median(mode.other_cpu) * 1e6:>19.1f}"
        )
    own = own_work()
    print("\nWeckr's own work on the caller's thread (SDK request replaced by a canned response)")
    for name in ("wk.chat", "wrap(client)"):
        print(f"{name:<24}{(own[name] - own['canned create']) * 1e6:>9.1f} us per call")
    print(
        f"usage events the loopback server took, of {calls_per_mode} calls per mode: "
        + ", ".join(f"{source} {count}" for source, count in sorted(delivered.items()))
    )


if __name__ == "__main__":
    main()
