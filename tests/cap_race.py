"""Callers racing for one user's last dollars, in processes of their own.

Run as ``python -m tests.cap_race COMMAND`` with ``DJANGO_SETTINGS_MODULE`` (and, for
SQLite, ``WECKR_TEST_SQLITE``) pointing at the database under test; ``WECKR_CAP_STORE``
selects the cap store (see ``tests/settings.py``). Each command prints one JSON object:

- ``setup --cap USD [--action block|downgrade]``: migrate, create a project with the
  plan "free", print its id (and an API key, for racers over HTTP).
- ``race --threads N [--max-tokens N] [--delay S] [--http URL --key KEY]``: N threads
  call ``wk.chat`` for user "racer" on a real OpenAI client over a fake transport
  (1,000 prompt tokens, 500 output tokens, ``--delay`` seconds per answer) until
  each is refused; in this Django process through ``DjangoBackend``, or with
  ``--http`` as an outside service through ``HttpBackend``.
  ``--mode check`` races as caps worked before reservations (the baseline of
  ``bench_caps``): a decision read from the rollup and cached for 2 s in-process,
  ``HttpBackend``'s cached ``/check`` over HTTP; nothing held.
- ``totals``: the user's recorded spend and calls, what the cap store still holds,
  and the reservations left.
- ``latency --calls N``: time per call of a cached check, of a reservation with its
  settle, and of a bare round trip to the configured store, in this process.
- ``hang``: start one call whose provider never answers, print when it is under
  way, and wait there to be killed.

The tests and ``bench/bench_caps.py`` drive it.
"""

from __future__ import annotations

import argparse
import json
import os
import threading
import time
from decimal import Decimal
from typing import Any

import django

USER = "racer"
PLAN = "free"
PROMPT_TOKENS = 1000
OUTPUT_TOKENS = 500
MODEL = "gpt-4o"
# 2,988 characters: estimated at 996 tokens plus 4 for the message, the 1,000 the
# fake provider bills.
MESSAGES: Any = [{"role": "user", "content": "x" * 2_988}]


def per_call_usd() -> Decimal:
    from weckr_core.pricing import price_usage

    return price_usage(MODEL, input_tokens=PROMPT_TOKENS, output_tokens=OUTPUT_TOKENS).usd


def _settings_from_env() -> None:
    from django.conf import settings

    from weckr_django.conf import weckr_settings

    # The embedded default's delivery (tests.settings ingests on the caller's thread).
    weckr = dict(getattr(settings, "WECKR", {}) or {})
    weckr["DELIVERY"] = os.environ.get("WECKR_DELIVERY", "thread")
    # The project ``setup`` made, when the database holds others too.
    weckr["DEFAULT_PROJECT"] = os.environ.get("WECKR_DEFAULT_PROJECT")
    settings.WECKR = weckr
    weckr_settings.reload()


def setup(cap: str, action: str) -> dict[str, Any]:
    from django.core.management import call_command

    from weckr_django.models import ApiKey, Plan, Project

    call_command("migrate", verbosity=0)
    project = Project.objects.create(name=f"race-{time.monotonic_ns()}")
    Plan.objects.create(
        project=project,
        name=PLAN,
        monthly_price_usd=Decimal(0),
        monthly_cap_usd=Decimal(cap),
        cap_action=action,
    )
    _, key = ApiKey.objects.create_key(project, name="race")
    return {"project": str(project.pk), "key": key}


def cached_check_backend() -> Any:
    from weckr_core.backends.base import CapDecision, CapRequest
    from weckr_django.backend import DjangoBackend

    class CachedCheckBackend(DjangoBackend):
        """Caps before reservations: the rollup's decision, cached, nothing held."""

        def __init__(self, ttl: float = 2.0) -> None:
            super().__init__()
            self._ttl = ttl
            self._cache: dict[tuple[Any, ...], tuple[float, CapDecision]] = {}

        def reserve(self, request: CapRequest) -> CapDecision:
            key = (request.user_id, request.plan, request.model)
            cached = self._cache.get(key)
            if cached is not None and cached[0] > time.monotonic():
                return cached[1]
            decision = self.check(request.user_id, request.plan, request.model)
            self._cache[key] = (time.monotonic() + self._ttl, decision)
            return decision

    return CachedCheckBackend()


def race(args: argparse.Namespace) -> dict[str, Any]:
    from tests.core import providers as p
    from weckr_core import HttpBackend, Weckr, WeckrCapError, attribute, get_backend

    fake = p.FakeProvider(
        p.openai_chat_body(MODEL, p.openai_usage(PROMPT_TOKENS, OUTPUT_TOKENS)), delay=args.delay
    )
    if args.http:
        endpoint, check = f"{args.http}/api/v1/log", f"{args.http}/api/v1/check"
        if args.mode == "check":
            wk = Weckr(backend=HttpBackend(args.key, endpoint, check, reserve_endpoint=None))
        else:
            wk = Weckr(api_key=args.key, endpoint=endpoint, check_endpoint=check)
    elif args.mode == "check":
        wk = Weckr(backend=cached_check_backend())
    else:
        wk = Weckr()
    params: dict[str, Any] = {"model": MODEL, "messages": MESSAGES}
    if args.max_tokens:
        params["max_tokens"] = args.max_tokens
    made = refused = 0
    errors: list[str] = []
    lock = threading.Lock()
    start = threading.Barrier(args.threads)

    def work() -> None:
        nonlocal made, refused
        client = p.openai_client(fake)
        start.wait()
        with attribute(user_id=USER, plan=PLAN):
            for _ in range(args.max_calls):
                try:
                    wk.chat(client, params)
                except WeckrCapError:
                    with lock:
                        refused += 1
                    return
                except Exception as error:  # reported: a racer must not die unseen
                    with lock:
                        errors.append(repr(error))
                    return
                with lock:
                    made += 1

    # One call first, outside Weckr: the SDK loads parts of itself on first use, and
    # threads doing that at once can trip over each other (not what is measured).
    p.openai_client(fake).chat.completions.create(model=MODEL, messages=MESSAGES)
    started = time.perf_counter()
    workers = [threading.Thread(target=work) for _ in range(args.threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    elapsed = time.perf_counter() - started
    delivered = wk.flush(60) and get_backend().flush(60)
    wk.close()
    return {
        "calls": made,
        "refused": refused,
        "errors": errors,
        "seconds": elapsed,
        "delivered": delivered,
    }


def latency(calls: int) -> dict[str, Any]:
    """Per call, in microseconds: a cached check, and a reservation with its settle
    (the hold released after each, untimed, as ingest would drop it)."""
    from statistics import median, quantiles

    from weckr_core.backends.base import CapRequest
    from weckr_core.records import UsageRecord
    from weckr_django.backend import DjangoBackend
    from weckr_django.stores import cap_store

    request = CapRequest(
        USER, PLAN, MODEL, "openai", input_tokens=PROMPT_TOKENS, max_output_tokens=OUTPUT_TOKENS
    )
    record = UsageRecord(
        user_id=USER, model=MODEL, input_tokens=PROMPT_TOKENS, output_tokens=OUTPUT_TOKENS
    )
    baseline, backend = cached_check_backend(), DjangoBackend(delivery="sync")
    store = cap_store()
    checks, reservations, round_trips = [], [], []
    for n in range(calls + 50):
        started = time.perf_counter()
        baseline.reserve(request)
        checked = time.perf_counter()
        decision = backend.reserve(request)
        assert decision.reservation is not None, decision
        backend.settle(decision.reservation, record)
        done = time.perf_counter()
        store.ping()
        pinged = time.perf_counter()
        if n >= 50:  # warmed up
            checks.append((checked - started) * 1e6)
            reservations.append((done - checked) * 1e6)
            round_trips.append((pinged - done) * 1e6)
        backend.release(decision.reservation)

    def figures(values: list[float]) -> dict[str, float]:
        return {"median": median(values), "p90": quantiles(values, n=10)[-1]}

    return {
        "cached_check_us": figures(checks),
        "reserve_settle_us": figures(reservations),
        "round_trip_us": figures(round_trips),
    }


def hang() -> None:
    """A caller that dies mid-call: its reservation is made, its call never ends."""
    import sys

    from tests.core import providers as p
    from weckr_core import Weckr, attribute

    class Stuck(p.FakeProvider):
        def _answer(self, url: str, content: bytes) -> tuple[int, dict[str, str], bytes]:
            print(json.dumps({"calling": True}), flush=True)
            sys.stdout.close()
            time.sleep(3600)
            raise AssertionError("killed before this")

    with attribute(user_id=USER, plan=PLAN):
        Weckr().chat(
            p.openai_client(Stuck()), {"model": MODEL, "messages": MESSAGES, "max_tokens": 500}
        )


def totals(project_id: str) -> dict[str, Any]:
    from weckr_django.models import CapReservation, MonthlyUserSpend, Project
    from weckr_django.stores import SpendKey, cap_store

    project = Project.objects.get(pk=project_id)
    row = MonthlyUserSpend.objects.filter(project=project, user_key=USER).first()
    spend = cap_store().spend(SpendKey.of(project, USER))
    return {
        "spend": str(row.cost_usd if row else 0),
        "calls": row.calls if row else 0,
        "store_recorded": str(spend.recorded),
        "store_held": str(spend.held),
        "reservations": CapReservation.objects.filter(project=project).count(),
        "per_call": str(per_call_usd()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.cap_race")
    commands = parser.add_subparsers(dest="command", required=True)
    make = commands.add_parser("setup")
    make.add_argument("--cap", required=True)
    make.add_argument("--action", default="block")
    racing = commands.add_parser("race")
    racing.add_argument("--threads", type=int, default=16)
    racing.add_argument("--max-tokens", type=int, default=0)
    racing.add_argument("--max-calls", type=int, default=1_000)
    racing.add_argument("--delay", type=float, default=0.05)
    racing.add_argument("--http", default="")
    racing.add_argument("--key", default="")
    racing.add_argument("--mode", choices=("reserve", "check"), default="reserve")
    timing = commands.add_parser("latency")
    timing.add_argument("--calls", type=int, default=2_000)
    commands.add_parser("hang")
    summing = commands.add_parser("totals")
    summing.add_argument("--project", required=True)
    args = parser.parse_args()

    django.setup()
    _settings_from_env()
    if args.command == "setup":
        result = setup(args.cap, args.action)
    elif args.command == "race":
        result = race(args)
    elif args.command == "latency":
        result = latency(args.calls)
    elif args.command == "hang":
        hang()
        return
    else:
        result = totals(args.project)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
