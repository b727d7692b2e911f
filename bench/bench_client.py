"""Overhead of ``Weckr.chat`` and ``wrap(client)`` on a real OpenAI client.

Run: ``.venv/bin/python -m bench.bench_client [--rounds N]``.

Times ``client.chat.completions.create`` of a real ``openai.OpenAI`` client whose
HTTP goes to an ``httpx.MockTransport`` (so the SDK's own request building and
parsing run, without a network), then the same call through ``wk.chat`` and through
``wk.wrap(client)``. Weckr uses an ``HttpBackend`` pointed at a loopback Weckr server
that answers ``/check`` (the cap decision is cached after the first call) and takes
the usage events, which the benchmark checks all arrived; the server runs in its own
process so its CPU is not charged to the client. When the published weckr-sdk is
installed, its ``Weckr.chat`` against the same server is timed too, in a phase of
its own so its thread per POST does not land on the other modes' calls.

The machines this runs on change speed by 20% or more within a fraction of a
second, so the modes are interleaved call by call (one call of each mode per round,
in a random order) and each call is compared with the direct call of its own
round. What a call costs is then two parts, both measured:

- caller: the median over the rounds of the call's time minus the direct call's,
  which is what the caller's thread spends on Weckr;
- delivery: the CPU time the process's other threads spend per call (the
  HttpBackend's sender: pricing, JSON, HTTP; or weckr-sdk's thread per POST),
  including finishing the delivery at the end. Under the GIL that time is taken
  from the caller's thread, so it is charged in full.

added = caller + delivery, and the ratio is (direct + added) / direct.

Most of the delivery share is the sender waiting for the GIL, not working. The
caller's thread here runs Python without pause and lets go of the GIL only for a
moment per call (the SDK reads ``os.urandom``); each time, the waiting sender is
woken, finds the GIL taken again and sleeps on, so it never waits out the switch
interval that would make the caller hand the GIL over. ``--switch-interval 0.0005``
runs the same benchmark with an interval shorter than the gap between those
moments.
"""

from __future__ import annotations

import argparse
import gc
import json
import multiprocessing
import statistics
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

import httpx
import openai

from bench.interleave import interleaved, paired_added
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


def interleaved_with_delivery(
    modes: dict[str, Callable[[], Any]], rounds: int, finish: Callable[[], Any]
) -> tuple[dict[str, list[float]], float]:
    """``interleaved`` plus the CPU time the process's other threads spent, until
    ``finish`` (the final flush) returned."""
    process_start, thread_start = time.process_time(), time.thread_time()
    times = interleaved(modes, rounds)
    finish()
    other_threads = (time.process_time() - process_start) - (time.thread_time() - thread_start)
    return times, max(0.0, other_threads)


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


@dataclass
class Row:
    name: str
    direct: float  # the direct call's median time in the same phase, seconds
    caller: float
    delivery: float

    @property
    def added(self) -> float:
        return self.caller + self.delivery

    @property
    def ratio(self) -> float:
        return (self.direct + self.added) / self.direct


def rows_of(times: dict[str, list[float]], other_threads_cpu: float, rounds: int) -> list[Row]:
    direct = times.pop("direct")
    direct_median = statistics.median(direct)
    # Every mode but direct makes one record (or one POST) per call; the background
    # threads' CPU is theirs, shared out per call.
    delivery = other_threads_cpu / (rounds * len(times))
    return [
        Row(name, direct_median, paired_added(values, direct), delivery)
        for name, values in times.items()
    ]


def warm_up(modes: dict[str, Callable[[], Any]], calls: int) -> None:
    for call in modes.values():
        for _ in range(calls):
            call()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5000, help="calls per mode")
    parser.add_argument("--warmup", type=int, default=500, help="untimed calls per mode")
    parser.add_argument(
        "--switch-interval",
        type=float,
        default=None,
        help="sys.setswitchinterval for the run, in seconds (Python's default: 0.005)",
    )
    args = parser.parse_args()
    rounds = args.rounds
    if args.switch_interval is not None:
        sys.setswitchinterval(args.switch_interval)

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

        ours: dict[str, Callable[[], Any]] = {
            "direct": direct,
            "wk.chat": lambda: wk.chat(client, chat_params),
            "wrap(client)": via_wrap,
        }
        warm_up(ours, args.warmup)
        wk.flush(30)
        # Long-lived objects (modules, clients) out of the collector's way, so a full
        # collection costs what the calls allocate, not what was imported.
        gc.collect()
        gc.freeze()
        times, other_cpu = interleaved_with_delivery(ours, rounds, lambda: wk.flush(60))
        rows = rows_of(times, other_cpu, rounds)
        wk.close()

        try:
            import weckr  # the published weckr-sdk
        except ImportError:
            print("weckr-sdk is not installed: its figure is left out.")
        else:
            sdk = weckr.Weckr(
                "wk_bench", plans={"pro": 29}, endpoint=log_url, check_endpoint=check_url
            )
            theirs: dict[str, Callable[[], Any]] = {
                "direct": direct,
                "weckr-sdk 0.3.0 chat": lambda: sdk.chat(client, chat_params),
            }
            warm_up(theirs, args.warmup)
            sdk.flush(timeout_seconds=30)
            sdk_rounds = max(1, rounds // 3)
            times, other_cpu = interleaved_with_delivery(
                theirs, sdk_rounds, lambda: sdk.flush(timeout_seconds=60)
            )
            rows += rows_of(times, other_cpu, sdk_rounds)
        delivered = stop_server()

    print(
        "real openai.OpenAI over httpx.MockTransport, records delivered to a loopback "
        f"Weckr server; {rounds} rounds, one call of each mode per round; us per call; "
        f"GIL switch interval {sys.getswitchinterval() * 1000:g} ms"
    )
    print(
        "caller: median extra time on the caller's thread, paired with the direct call "
        "of the same round; delivery: CPU of the background threads per call"
    )
    print(f"{'mode':<22}{'direct':>8}{'caller':>8}{'delivery':>10}{'added':>8}{'ratio':>7}")
    for row in rows:
        print(
            f"{row.name:<22}{row.direct * 1e6:>8.1f}{row.caller * 1e6:>8.1f}"
            f"{row.delivery * 1e6:>10.1f}{row.added * 1e6:>8.1f}{row.ratio:>7.3f}"
        )
    own = own_work()
    print("\nWeckr's own work on the caller's thread (SDK request replaced by a canned response)")
    for name in ("wk.chat", "wrap(client)"):
        print(f"{name:<22}{(own[name] - own['canned create']) * 1e6:>8.1f} us per call")
    print(
        f"usage events the loopback server took ({args.warmup} warm-up calls + the rounds "
        "per mode): "
        + ", ".join(f"{source} {count}" for source, count in sorted(delivered.items()))
    )


if __name__ == "__main__":
    main()
