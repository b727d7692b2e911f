"""Run as ``python -m tests.integration.outage_producer COUNT``: record COUNT usage
events through ``DjangoBackend`` (the delivery of ``WECKR_DELIVERY``, "thread" by
default, and the spool of ``WECKR_SPOOL``), printing ``sent N`` as it goes; then
wait until every event is delivered (ingested, or handed to the broker) and a user
of the capped plan "free" is blocked again, and print the outcome as JSON. The test
stops and starts the database or the broker meanwhile.

With ``WECKR_IT_PAUSE_AT=N`` and ``WECKR_IT_RESUME_FILE=PATH`` it prints ``paused N``
after N events and waits until PATH exists before it goes on."""

from __future__ import annotations

import faulthandler
import json
import os
import signal
import sys
import time

import django


def main() -> None:
    faulthandler.register(signal.SIGUSR1)  # kill -USR1 <pid>: every thread's stack
    django.setup()
    from django.conf import settings

    from weckr_core.records import UsageRecord
    from weckr_django.backend import DjangoBackend
    from weckr_django.conf import weckr_settings

    settings.WECKR = {
        **settings.WECKR,
        "DELIVERY": os.environ.get("WECKR_DELIVERY", "thread"),
        "SPOOL": os.environ["WECKR_SPOOL"],
        "DEFAULT_PROJECT": os.environ["WECKR_DEFAULT_PROJECT"],
    }
    weckr_settings.reload()
    count = int(sys.argv[1])
    pause_at = int(os.environ.get("WECKR_IT_PAUSE_AT", -1))
    backend = DjangoBackend()
    allowed_while_away = 0
    for n in range(count):
        if n == pause_at:
            print(f"paused {n}", flush=True)
            while not os.path.exists(os.environ["WECKR_IT_RESUME_FILE"]):
                time.sleep(0.01)
        backend.record(
            UsageRecord(
                event_id=f"00000000-0000-4000-8000-{n:012d}",
                user_id=f"user-{n % 10}",
                provider="openai",
                model="gpt-4o-mini",
                input_tokens=100,
                output_tokens=20,
            )
        )
        if n % 100 == 0:
            print(f"sent {n}", flush=True)
            if backend.check("racer", "free", "gpt-4o").action == "allow":
                allowed_while_away += 1  # fail open while the database is away
        time.sleep(0.004)

    started = time.monotonic()
    deadline = started + 120
    delivered = False
    while time.monotonic() < deadline:
        health = backend.health()
        if not health["queued"] and not health["spooled"]:
            delivered = True
            break
        print(f"{time.monotonic() - started:6.1f} s waiting: {health}", file=sys.stderr)
        time.sleep(1)
    print(f"{time.monotonic() - started:6.1f} s delivered: {delivered}", file=sys.stderr)
    capped_again = False
    while time.monotonic() < deadline:
        # A user this process never asked about: decided by the database again.
        if backend.check("racer-after", "free", "gpt-4o").action == "block":
            capped_again = True
            break
        time.sleep(0.2)
    print(
        json.dumps(
            {
                "sent": count,
                "delivered": delivered,
                "capped_again": capped_again,
                "allowed_while_away": allowed_while_away,
                "health": backend.health(),
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
