"""CPU that Weckr adds to an LLM call, next to the published weckr-sdk 0.3.0.

Run: ``.venv/bin/python -m bench.bench_client [--rounds N] [--calls N] [--cycles N]``.

A real ``openai.OpenAI`` client calls an ``httpx.MockTransport`` that answers after
2 ms asleep (the GIL released, like a provider's network wait), so the SDK's own
request building and parsing run. ``wk.chat`` (``HttpBackend``: one sender thread,
batches) and weckr-sdk 0.3.0's ``chat`` (``import weckr``: one thread and connection
per event) report to a loopback Weckr server in its own process, so its CPU is not the
client's; it answers ``/reserve`` and ``/check`` as for a plan without a cap. Every
event is checked to have reached it, so a sender that loses events cannot look cheap.

1. Caller's thread: CPU of the calling thread (``time.thread_time_ns``) per call,
   minus a direct ``client.chat.completions.create``'s. Direct and wrapped calls
   alternate one by one in a shuffled order; the figure is the median of the
   round-by-round differences. Goal: <= 15 us for ``wk.chat``. Beside them, the floor:
   a five-line wrapper that only reads the usage into a tuple, measured the same way
   (on a cold cache after the provider's wait, no recorder adds less).
2. Whole process, per event: figure 1 plus the CPU of every other thread (the
   sender's encoding and HTTP, weckr-sdk's threads). Those are timed in blocks: a
   block of ``--calls`` calls ended by a flush that waits until the server has every
   event, paired with a block of as many direct calls run just before or after it (in
   turn); per call, (process CPU - calling thread's CPU) of the one minus that of the
   other, median over ``--cycles``. Goal: <= 40 us, and weckr-sdk >= 10 times that.
   The plain difference of the blocks' process CPU, the same figure in principle, is
   printed as a check only: the calls' own CPU drifts from block to block by more
   than the figure itself.
3. Informational, not a target: with an instant provider (no wait), the wall time of
   a block of ``wk.chat`` calls (and its flush's CPU) over a block of direct calls.
4. ``instrument()`` next to ``wrap()``, as figure 1, with the SDK patched: a plain
   ``client.chat.completions.create`` attributed by ``weckr_*`` keywords, and the
   wrapped client (whose call passes through the patched method), each against the
   SDK's own unpatched method.
"""

from __future__ import annotations

import argparse
import gc
import json
import multiprocessing
import random
import statistics
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

import httpx
import openai

from tests.core.http_server import CHECK_PATH, LOG_PATH, FakeWeckrServer
from weckr_core import Weckr, attribute, uninstrument

PROVIDER_WAIT = 0.002  # seconds the fake provider takes to answer
GOAL_CALLER_US = 15.0
GOAL_EVENT_US = 40.0
GOAL_SDK_RATIO = 10.0
CHUNKS = 3  # turns of figure 1: each group of modes runs in this many stretches

MODEL = "gpt-4o-mini"
MESSAGES: Any = [{"role": "user", "content": "Summarize this."}]
CHAT_PARAMS = {"model": MODEL, "messages": MESSAGES, "user_id": "u1", "plan": "pro"}
INSTRUMENT_KEYWORDS: dict[str, Any] = {"weckr_user_id": "u1", "weckr_plan": "pro"}
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


def openai_client(wait: float) -> openai.OpenAI:
    """A real client whose provider answers after ``wait`` seconds."""

    def answer(request: httpx.Request) -> httpx.Response:
        if wait:
            time.sleep(wait)
        return httpx.Response(200, headers={"content-type": "application/json"}, content=BODY)

    return openai.OpenAI(
        api_key="bench",
        base_url="http://fake/v1",
        max_retries=0,
        http_client=httpx.Client(transport=httpx.MockTransport(answer)),
    )


def serve(connection: Connection) -> None:
    """Child process: run the loopback Weckr server. ``("wait", n, timeout)`` answers
    the number of events taken once it reaches ``n`` (or ``timeout`` passed); any other
    message answers the events taken per source and stops."""
    with FakeWeckrServer() as server:
        connection.send(server.url)
        while (message := connection.recv())[0] == "wait":
            _, count, timeout = message
            deadline = time.monotonic() + timeout
            while len(server.accepted_events) < count and time.monotonic() < deadline:
                time.sleep(0.002)
            connection.send(len(server.accepted_events))
        sources = Counter(event.get("source") for event in server.accepted_events)
        connection.send(
            {
                f"Weckr source={source}" if source else "weckr-sdk 0.3.0": count
                for source, count in sources.items()
            }
        )


@dataclass
class LoopbackServer:
    url: str
    connection: Connection
    expected: int = 0  # events sent so far
    delivered: dict[str, int] | None = None  # per source, once stopped

    def wait_for_events(self, count: int, timeout: float = 60.0) -> None:
        """Blocks (without CPU: the server polls) until the server has ``count``
        more events; fails the benchmark if they do not all arrive."""
        self.expected += count
        self.connection.send(("wait", self.expected, timeout))
        taken: int = self.connection.recv()
        if taken != self.expected:
            raise SystemExit(f"the server took {taken} usage events of {self.expected} sent")

    def stop(self) -> dict[str, int]:
        if self.delivered is None:
            self.connection.send(("stop",))
            self.delivered = self.connection.recv()
        return self.delivered


@contextmanager
def loopback_weckr_server() -> Iterator[LoopbackServer]:
    """A Weckr server in its own process, so its CPU is not charged to the client."""
    context = multiprocessing.get_context("spawn")
    ours, theirs = context.Pipe()
    process = context.Process(target=serve, args=(theirs,), daemon=True)
    process.start()
    server = LoopbackServer(ours.recv(), ours)
    try:
        yield server
    finally:
        server.stop()
        process.join(10)


@dataclass(frozen=True)
class Mode:
    name: str
    call: Callable[[], Any]
    flush: Callable[[], Any] | None = None  # None: the mode sends no events


def settle(server: LoopbackServer, modes: list[Mode], calls: int) -> None:
    """After ``calls`` calls of each of ``modes``: flush, and wait until the server has
    every event."""
    senders = [mode for mode in modes if mode.flush is not None]
    for mode in senders:
        assert mode.flush is not None
        mode.flush()
    if senders:
        server.wait_for_events(calls * len(senders))


def caller_cpu(
    server: LoopbackServer, direct: Mode, groups: list[list[Mode]], rounds: int, chunks: int
) -> dict[str, list[int]]:
    """Nanoseconds of the calling thread's CPU each call of a mode took more than the
    direct call of its round (and, under the direct mode's name, the direct calls' own).
    Each group runs its own rounds (so weckr-sdk's threads do not land on Weckr's
    calls), in ``chunks`` turns, settled after each."""
    added: dict[str, list[int]] = {mode.name: [] for group in groups for mode in group}
    added[direct.name] = []
    shuffle = random.Random(2026).shuffle
    clock = time.thread_time_ns
    per_chunk = rounds // chunks
    for _ in range(chunks):
        for group in groups:
            order = [direct, *group]
            for _ in range(per_chunk):
                shuffle(order)
                spent: dict[str, int] = {}
                for mode in order:
                    call = mode.call
                    start = clock()
                    call()
                    spent[mode.name] = clock() - start
                for mode in group:
                    added[mode.name].append(spent[mode.name] - spent[direct.name])
                added[direct.name].append(spent[direct.name])
            settle(server, group, per_chunk)
    return added


@dataclass
class BlockFigures:
    """Per-call seconds of CPU a mode's blocks took more than their direct blocks,
    one value per cycle."""

    process: list[float] = field(default_factory=list)
    caller: list[float] = field(default_factory=list)  # the calling thread's part

    @property
    def others(self) -> list[float]:
        return [p - c for p, c in zip(self.process, self.caller, strict=True)]


def cpu_block(server: LoopbackServer, mode: Mode, calls: int) -> tuple[float, float]:
    """Process and calling-thread CPU seconds per call of ``calls`` calls and the
    flush until the server has their events."""
    call = mode.call
    process, caller = time.process_time(), time.thread_time()
    for _ in range(calls):
        call()
    settle(server, [mode], calls)
    return (time.process_time() - process) / calls, (time.thread_time() - caller) / calls


def process_cpu(
    server: LoopbackServer, direct: Mode, modes: list[Mode], calls: int, cycles: int
) -> dict[str, BlockFigures]:
    figures = {mode.name: BlockFigures() for mode in modes}
    order = list(modes)
    shuffle = random.Random(2026).shuffle
    for cycle in range(cycles):
        shuffle(order)
        for index, mode in enumerate(order):
            direct_first = (cycle + index) % 2 == 0
            if direct_first:
                direct_process, direct_caller = cpu_block(server, direct, calls)
            mode_process, mode_caller = cpu_block(server, mode, calls)
            if not direct_first:
                direct_process, direct_caller = cpu_block(server, direct, calls)
            figures[mode.name].process.append(mode_process - direct_process)
            figures[mode.name].caller.append(mode_caller - direct_caller)
    return figures


def wall_block(server: LoopbackServer, mode: Mode, calls: int) -> float:
    """Seconds per call of ``calls`` calls, plus the CPU of the flush (its wall time is
    mostly the loopback server's work, no cost of the client's)."""
    call = mode.call
    start = time.perf_counter()
    for _ in range(calls):
        call()
    calls_wall, flush_start = time.perf_counter() - start, time.process_time()
    settle(server, [mode], calls)
    return (calls_wall + time.process_time() - flush_start) / calls


def instant_ratio(
    server: LoopbackServer, direct: Mode, mode: Mode, calls: int, cycles: int
) -> float:
    """Median per-call time of ``mode``'s blocks over that of the paired direct blocks."""
    direct_times, added = [], []
    for cycle in range(cycles):
        if cycle % 2 == 0:
            direct_time = wall_block(server, direct, calls)
        mode_time = wall_block(server, mode, calls)
        if cycle % 2:
            direct_time = wall_block(server, direct, calls)
        direct_times.append(direct_time)
        added.append(mode_time - direct_time)
    direct_median = statistics.median(direct_times)
    return (direct_median + statistics.median(added)) / direct_median


def warm_up(server: LoopbackServer, modes: list[Mode], calls: int) -> None:
    for mode in modes:
        for _ in range(calls):
            mode.call()
        settle(server, [mode], calls)


def us(seconds: float) -> str:
    return f"{seconds * 1e6:+.1f}"


def spread(values: list[float]) -> str:
    first, _, third = statistics.quantiles(values, n=4)
    return f"{us(first)} .. {us(third)}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3000, help="rounds of figure 1")
    parser.add_argument("--calls", type=int, default=250, help="calls per block, figure 2")
    parser.add_argument("--cycles", type=int, default=12, help="blocks per mode, figure 2")
    parser.add_argument("--instant-cycles", type=int, default=16, help="blocks of 500, line 3")
    parser.add_argument("--warmup", type=int, default=200, help="untimed calls per mode")
    args = parser.parse_args()
    began = time.perf_counter()

    try:
        import weckr  # the published weckr-sdk
    except ImportError:
        raise SystemExit(
            "weckr-sdk 0.3.0 is not installed (pip install weckr-sdk==0.3.0)"
        ) from None

    with loopback_weckr_server() as server:
        log_url, check_url = server.url + LOG_PATH, server.url + CHECK_PATH
        client, instant_client = openai_client(PROVIDER_WAIT), openai_client(0)
        wk = Weckr(
            api_key="wk_bench", plans={"pro": 29}, endpoint=log_url, check_endpoint=check_url
        )
        wrapped = wk.wrap(client)  # the same client as the direct call: same caches
        sdk = weckr.Weckr("wk_bench", plans={"pro": 29}, endpoint=log_url, check_endpoint=check_url)

        def via_wrap() -> Any:
            with attribute(user_id="u1", plan="pro"):
                return wrapped.chat.completions.create(model=MODEL, messages=MESSAGES)

        def flush_weckr() -> None:
            assert wk.flush(60), "Weckr's events were not all settled within 60 s"

        def flush_sdk() -> None:
            sdk.flush(timeout_seconds=60)  # returns nothing: the server's count tells

        direct = Mode(
            "direct", lambda: client.chat.completions.create(model=MODEL, messages=MESSAGES)
        )
        kept: list[tuple[Any, ...]] = []

        def least_wrapper() -> Any:
            """The least any recorder does on the caller's thread: take the attribution
            out of the parameters, call, read the usage, keep a tuple (nothing priced,
            queued or sent). What the machine measures for it is the floor of figure 1."""
            params = dict(CHAT_PARAMS)
            user, plan = params.pop("user_id"), params.pop("plan")
            response = client.chat.completions.create(**params)
            usage = response.usage
            kept.append((user, plan, response.model, usage.prompt_tokens, time.time()))
            return response

        floor = Mode("floor: a 5-line wrapper", least_wrapper)
        weckr_chat = Mode("wk.chat", lambda: wk.chat(client, CHAT_PARAMS), flush_weckr)
        wrap_mode = Mode("wrap(client)", via_wrap, flush_weckr)
        sdk_chat = Mode("weckr-sdk 0.3.0 chat", lambda: sdk.chat(client, CHAT_PARAMS), flush_sdk)
        instant_direct = Mode(
            "direct", lambda: instant_client.chat.completions.create(model=MODEL, messages=MESSAGES)
        )
        instant_chat = Mode("wk.chat", lambda: wk.chat(instant_client, CHAT_PARAMS), flush_weckr)

        warm_up(
            server,
            [direct, weckr_chat, wrap_mode, sdk_chat, instant_direct, instant_chat],
            args.warmup,
        )
        # Long-lived objects (modules, clients) out of the collector's way, so a full
        # collection costs what the calls allocate, not what was imported.
        gc.collect()
        gc.freeze()
        caller = caller_cpu(
            server, direct, [[weckr_chat, wrap_mode, floor], [sdk_chat]], args.rounds, CHUNKS
        )
        kept.clear()
        blocks = process_cpu(server, direct, [weckr_chat, sdk_chat], args.calls, args.cycles)
        ratio = instant_ratio(server, instant_direct, instant_chat, 500, args.instant_cycles)
        sdk_create = type(client.chat.completions).create  # before the patch
        wk.instrument()
        try:
            unpatched = Mode(
                "direct",
                lambda: sdk_create(client.chat.completions, model=MODEL, messages=MESSAGES),
            )
            instrumented = Mode(
                "instrument()",
                lambda: client.chat.completions.create(
                    model=MODEL, messages=MESSAGES, **INSTRUMENT_KEYWORDS
                ),
                flush_weckr,
            )
            wrap_patched = Mode("wrap(client)", via_wrap, flush_weckr)
            warm_up(server, [unpatched, instrumented, wrap_patched], args.warmup)
            patched = caller_cpu(
                server, unpatched, [[instrumented, wrap_patched]], args.rounds, CHUNKS
            )
        finally:
            uninstrument()
        wk.close()
        delivered = server.stop()

    print(
        f"real openai.OpenAI over httpx.MockTransport answering after {PROVIDER_WAIT * 1e3:g} ms "
        "(GIL released); usage events delivered to a loopback Weckr server; us of CPU"
    )
    rounds = args.rounds // CHUNKS * CHUNKS
    print(
        f"\n1. caller's thread, added per call (calls alternated one by one; median of "
        f"{rounds} rounds' differences)"
    )
    print(f"{'mode':<24}{'added':>8}{'quartiles':>22}")
    direct_seconds = [value / 1e9 for value in caller.pop(direct.name)]
    print(f"{'(direct create itself)':<24}{us(statistics.median(direct_seconds))[1:]:>8}")
    callers: dict[str, float] = {}
    for name, values in caller.items():
        seconds = [value / 1e9 for value in values]
        callers[name] = statistics.median(seconds)
        print(f"{name:<24}{us(callers[name]):>8}{spread(seconds):>22}")
    print(f"goal: wk.chat <= {GOAL_CALLER_US:g} us")

    print(
        f"\n2. whole process, per event: the caller's thread (1.) + the other threads "
        f"(blocks of {args.calls} calls + flush until the server has every event, minus "
        f"{args.calls} direct calls; median of {args.cycles} cycles)"
    )
    print(
        f"{'mode':<24}{'per event':>10}{'caller':>9}{'others':>9}{'others, quartiles':>20}"
        f"{'check: blocks':>15}{'quartiles':>22}"
    )
    per_event: dict[str, float] = {}
    for name, row in blocks.items():
        others = statistics.median(row.others)
        per_event[name] = callers[name] + others
        print(
            f"{name:<24}{us(per_event[name]):>10}{us(callers[name]):>9}{us(others):>9}"
            f"{spread(row.others):>20}{us(statistics.median(row.process)):>15}"
            f"{spread(row.process):>22}"
        )
    print(
        f"weckr-sdk 0.3.0 / wk.chat: {per_event[sdk_chat.name] / per_event[weckr_chat.name]:.1f}x"
        f"  (goal: wk.chat <= {GOAL_EVENT_US:g} us per event, ratio >= {GOAL_SDK_RATIO:g}x)"
    )

    print(
        f"\n3. not a target: instant provider (no wait), wk.chat time / direct time "
        f"= {ratio:.3f} (blocks of 500 calls, median of {args.instant_cycles} cycles)"
    )
    patched.pop(unpatched.name)
    print("\n4. caller's thread with the SDK patched by instrument(), added per call (as 1.)")
    print(f"{'mode':<24}{'added':>8}{'quartiles':>22}")
    for name, values in patched.items():
        seconds = [value / 1e9 for value in values]
        print(f"{name:<24}{us(statistics.median(seconds)):>8}{spread(seconds):>22}")
    print(
        "usage events the loopback server took, all that were sent: "
        + ", ".join(f"{source} {count}" for source, count in sorted(delivered.items()))
        + f"; run took {time.perf_counter() - began:.0f} s"
    )


if __name__ == "__main__":
    main()
