"""Overhead of ``Weckr.chat`` and ``wrap(client)`` on a real OpenAI client.

Run: ``.venv/bin/python -m bench.bench_client [--calls N] [--cycles N]``.

Times ``client.chat.completions.create`` of a real ``openai.OpenAI`` client whose
HTTP goes to an ``httpx.MockTransport`` (so the SDK's own request building and
parsing run, without a network), then the same call through ``wk.chat`` and through
``wk.wrap(client)``. Weckr uses an ``HttpBackend`` pointed at a loopback Weckr server
that answers ``/reserve`` as for a plan without a cap (which the backend then
remembers for a few seconds) and takes the usage events, which the benchmark checks
all arrived; the server runs in its own process so its CPU is not charged to the
client. When the published weckr-sdk is installed, its ``Weckr.chat`` against the
same server (``/check`` and ``/log``) is timed too.

Method: blocks. Each mode runs alone for a block of ``--calls`` calls, ended by a
flush that waits until the server has taken every event of the block, so whatever
the mode makes the process do (the backend's sender thread and its GIL traffic, its
records' memory) lands in its own block; the flush counts by the CPU the process
spends in it, not by the time the server takes. Each block is paired with a block
of direct calls run just before or just after it (in turn, which cancels a steady
drift of the machine's speed), and a mode's figure is the median over the cycles of
its block's time per call minus its direct block's, printed with the quartiles of
those differences. "direct again" pairs direct blocks with direct blocks: the noise
floor. CPU is the process's CPU time (all threads) per call, paired the same way.

Why not calls interleaved one by one: a background thread's cost, and the caches a
call leaves cold for the next one, land on whichever call runs next, the direct
calls included, so interleaving hides them.
"""

from __future__ import annotations

import argparse
import gc
import json
import multiprocessing
import random
import statistics
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

import httpx
import openai

from tests.core.http_server import CHECK_PATH, LOG_PATH, FakeWeckrServer
from weckr_core import Weckr, attribute
from weckr_core.backends import Backend
from weckr_core.records import UsageRecord

GOAL_ADDED_US = 30.0
GOAL_RATIO = 1.05

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


class QueueOnlyBackend(Backend):
    """Allows every call and keeps records in a bounded queue, sending nothing: the
    client's own cost on the caller's thread, without any delivery work."""

    def __init__(self) -> None:
        self.records: deque[UsageRecord] = deque(maxlen=1000)

    def record(self, record: UsageRecord) -> None:
        self.records.append(record)


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
    result: dict[str, int] | None = None

    def stop() -> dict[str, int]:
        nonlocal result
        if result is None:
            ours.send(None)
            result = ours.recv()
        return result

    try:
        yield url, stop
    finally:
        stop()
        process.join(10)


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


@dataclass(frozen=True)
class Mode:
    name: str
    call: Callable[[], Any]
    finish: Callable[[], Any] = lambda: None  # waits until the block's events are in


@dataclass
class Figures:
    name: str
    direct: list[float]  # per-call seconds of the paired direct blocks
    wall: list[float]  # per-call seconds of this mode's blocks, cycle by cycle
    direct_cpu: list[float]
    cpu: list[float]

    @property
    def direct_per_call(self) -> float:
        return statistics.median(self.direct)

    @property
    def added_per_cycle(self) -> list[float]:
        return [m - d for m, d in zip(self.wall, self.direct, strict=True)]

    @property
    def added(self) -> float:
        return statistics.median(self.added_per_cycle)

    @property
    def added_quartiles(self) -> tuple[float, float]:
        """The first and third quartiles of the cycles' added time: how far one cycle's
        figure strays from the median."""
        first, _, third = statistics.quantiles(self.added_per_cycle, n=4)
        return first, third

    @property
    def cpu_added(self) -> float:
        return statistics.median(m - d for m, d in zip(self.cpu, self.direct_cpu, strict=True))

    @property
    def ratio(self) -> float:
        return (self.direct_per_call + self.added) / self.direct_per_call


def block(mode: Mode, calls: int) -> tuple[float, float]:
    """Seconds per call of ``calls`` calls and the flush: time, and the process's CPU.

    The flush counts by the CPU it takes (the process's threads finishing their
    sends), not by its wall time, which is mostly the loopback server's own work
    on the last batch: no cost of the client's, and it would weigh on short blocks.
    """
    call = mode.call
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(calls):
        call()
    calls_wall, calls_cpu = time.perf_counter() - wall, time.process_time()
    mode.finish()
    flush_cpu = time.process_time() - calls_cpu
    return (calls_wall + flush_cpu) / calls, (time.process_time() - cpu) / calls


def paired_blocks(direct: Mode, modes: list[Mode], calls: int, cycles: int) -> list[Figures]:
    figures = {mode.name: Figures(mode.name, [], [], [], []) for mode in modes}
    order = list(modes)
    shuffle = random.Random(2026).shuffle
    for cycle in range(cycles):
        shuffle(order)
        for index, mode in enumerate(order):
            first_direct = (cycle + index) % 2 == 0
            if first_direct:
                direct_wall, direct_cpu = block(direct, calls)
            wall, cpu = block(mode, calls)
            if not first_direct:
                direct_wall, direct_cpu = block(direct, calls)
            row = figures[mode.name]
            row.direct.append(direct_wall)
            row.direct_cpu.append(direct_cpu)
            row.wall.append(wall)
            row.cpu.append(cpu)
    return [figures[mode.name] for mode in modes]


def warm_up(modes: list[Mode], calls: int) -> None:
    for mode in modes:
        for _ in range(calls):
            mode.call()
        mode.finish()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=500, help="calls per block")
    parser.add_argument("--cycles", type=int, default=40, help="blocks per mode")
    parser.add_argument("--warmup", type=int, default=500, help="untimed calls per mode")
    args = parser.parse_args()

    with loopback_weckr_server() as (server_url, stop_server):
        log_url, check_url = server_url + LOG_PATH, server_url + CHECK_PATH
        client = openai_client()
        wk = Weckr(
            api_key="wk_bench", plans={"pro": 29}, endpoint=log_url, check_endpoint=check_url
        )
        wrapped = wk.wrap(client)  # the same client as the direct call: same caches
        chat_params = {"model": MODEL, "messages": MESSAGES, "user_id": "u1", "plan": "pro"}

        def direct() -> Any:
            return client.chat.completions.create(model=MODEL, messages=MESSAGES)

        def via_wrap() -> Any:
            with attribute(user_id="u1", plan="pro"):
                return wrapped.chat.completions.create(model=MODEL, messages=MESSAGES)

        def flush_weckr() -> None:
            assert wk.flush(60), "Weckr's events did not all arrive"

        modes = [
            Mode("direct again", direct),
            Mode("wk.chat", lambda: wk.chat(client, chat_params), flush_weckr),
            Mode("wrap(client)", via_wrap, flush_weckr),
        ]
        try:
            import weckr  # the published weckr-sdk
        except ImportError:
            print("weckr-sdk is not installed: its figure is left out.")
        else:
            sdk = weckr.Weckr(
                "wk_bench", plans={"pro": 29}, endpoint=log_url, check_endpoint=check_url
            )

            def flush_sdk() -> None:
                sdk.flush(timeout_seconds=60)  # returns nothing: the server's count tells

            modes.append(
                Mode("weckr-sdk 0.3.0 chat", lambda: sdk.chat(client, chat_params), flush_sdk)
            )
        direct_mode = Mode("direct", direct)
        warm_up([direct_mode, *modes], args.warmup)
        # Long-lived objects (modules, clients) out of the collector's way, so a full
        # collection costs what the calls allocate, not what was imported.
        gc.collect()
        gc.freeze()
        rows = paired_blocks(direct_mode, modes, args.calls, args.cycles)
        wk.close()
        delivered = stop_server()

    print(
        "real openai.OpenAI over httpx.MockTransport, usage events delivered to a loopback "
        f"Weckr server; blocks of {args.calls} calls, each with its own flush, paired with "
        f"a block of direct calls; median of {args.cycles} cycles; us per call"
    )
    print(
        f"{'mode':<22}{'per call':>9}{'added':>8}{'ratio':>7}{'CPU added':>11}"
        f"{'added, quartiles':>20}"
    )
    print(f"{'direct':<22}{statistics.median(r.direct_per_call for r in rows) * 1e6:>9.1f}")
    for row in rows:
        first, third = row.added_quartiles
        quartiles = f"{first * 1e6:+.1f} .. {third * 1e6:+.1f}"
        print(
            f"{row.name:<22}{(row.direct_per_call + row.added) * 1e6:>9.1f}"
            f"{row.added * 1e6:>+8.1f}{row.ratio:>7.3f}{row.cpu_added * 1e6:>+11.1f}"
            f"{quartiles:>20}"
        )
    print(f"goal: added <= {GOAL_ADDED_US:g} us and ratio <= {GOAL_RATIO} per call")
    own = own_work()
    print("\nWeckr's own work on the caller's thread (SDK request replaced by a canned response)")
    for name in ("wk.chat", "wrap(client)"):
        print(f"{name:<22}{(own[name] - own['canned create']) * 1e6:>8.1f} us per call")
    calls_per_mode = args.warmup + args.calls * args.cycles
    print(
        f"usage events the loopback server took ({calls_per_mode} calls per mode): "
        + ", ".join(f"{source} {count}" for source, count in sorted(delivered.items()))
    )


if __name__ == "__main__":
    main()
