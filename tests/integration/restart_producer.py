"""Run as ``python -m tests.integration.restart_producer COUNT``, with
``tests.settings`` on the database of ``WECKR_TEST_DATABASE_URL``: record COUNT
usage events through ``DjangoBackend`` ("thread" delivery, the spool of
``WECKR_SPOOL``), printing ``sent N`` as it goes; then wait until every event is
delivered and the capped user ``racer`` is blocked again, and print the outcome as
JSON. The test stops and starts the database meanwhile."""

from __future__ import annotations

import json
import os
import sys
import time

import django


def main() -> None:
    django.setup()
    from django.conf import settings

    from weckr_core.records import UsageRecord
    from weckr_django.backend import DjangoBackend
    from weckr_django.conf import weckr_settings

    settings.WECKR = {
        **settings.WECKR,
        "DELIVERY": "thread",
        "SPOOL": os.environ["WECKR_SPOOL"],
        "DEFAULT_PROJECT": os.environ["WECKR_DEFAULT_PROJECT"],
    }
    weckr_settings.reload()
    count = int(sys.argv[1])
    backend = DjangoBackend()
    allowed_while_away = 0
    for n in range(count):
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

    deadline = time.monotonic() + 120
    delivered = False
    while time.monotonic() < deadline:
        health = backend.health()
        if not health["queued"] and not health["spooled"]:
            delivered = True
            break
        time.sleep(0.2)
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
