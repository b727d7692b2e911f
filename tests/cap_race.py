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
- ``totals``: the user's recorded spend and calls, what the cap store still holds,
  and the reservations left.

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
MESSAGES = [{"role": "user", "content": "x" * 2_988}]


def per_call_usd() -> Decimal:
    from weckr_core.pricing import price_usage

    return price_usage(MODEL, input_tokens=PROMPT_TOKENS, output_tokens=OUTPUT_TOKENS).usd


def _settings_from_env() -> None:
    from django.conf import settings

    from weckr_django.conf import weckr_settings

    # The embedded default's delivery (tests.settings ingests on the caller's thread).
    weckr = dict(getattr(settings, "WECKR", {}) or {})
    weckr["DELIVERY"] = os.environ.get("WECKR_DELIVERY", "thread")
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


def race(args: argparse.Namespace) -> dict[str, Any]:
    from tests.core import providers as p
    from weckr_core import Weckr, WeckrCapError, attribute, get_backend

    fake = p.FakeProvider(
        p.openai_chat_body(MODEL, p.openai_usage(PROMPT_TOKENS, OUTPUT_TOKENS)), delay=args.delay
    )
    if args.http:
        wk = Weckr(
            api_key=args.key,
            endpoint=f"{args.http}/api/v1/log",
            check_endpoint=f"{args.http}/api/v1/check",
        )
    else:
        wk = Weckr()
    params: dict[str, Any] = {"model": MODEL, "messages": MESSAGES}
    if args.max_tokens:
        params["max_tokens"] = args.max_tokens
    made = refused = 0
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
                with lock:
                    made += 1

    started = time.perf_counter()
    workers = [threading.Thread(target=work) for _ in range(args.threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    elapsed = time.perf_counter() - started
    delivered = wk.flush(60) if args.http else get_backend().flush(60)
    wk.close()
    return {"calls": made, "refused": refused, "seconds": elapsed, "delivered": delivered}


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
    summing = commands.add_parser("totals")
    summing.add_argument("--project", required=True)
    args = parser.parse_args()

    django.setup()
    _settings_from_env()
    if args.command == "setup":
        result = setup(args.cap, args.action)
    elif args.command == "race":
        result = race(args)
    else:
        result = totals(args.project)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
