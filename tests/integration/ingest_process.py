"""Run as ``python -m tests.integration.ingest_process PROJECT_ID SEED BATCH_SIZE``:
ingest ``EVENTS`` events in batches that overlap with the other process's, as fast as
it can. (On PostgreSQL, batches and rollups of 50 rows or more go through COPY and a
staging table, smaller ones through ``VALUES``.)"""

from __future__ import annotations

import sys
from datetime import UTC, datetime, timedelta
from typing import Any

import django

EVENTS = 1200


def batches(seed: int, size: int) -> list[list[dict[str, Any]]]:
    """Half of each batch is shared by every process (same event ids), half is own;
    a quarter as many users as events per batch."""
    now = datetime.now(UTC)
    result: list[list[dict[str, Any]]] = []
    count = EVENTS // size
    for batch in range(count):
        # Batches out of time order: a later batch may hold a run's first call or its last.
        earlier = timedelta(seconds=(batch * 7 % count) * size)
        events: list[dict[str, Any]] = []
        for i in range(size):
            shared = i % 2 == 0
            owner = "shared" if shared else f"p{seed}"
            events.append(
                {
                    "eventId": f"{owner}-{batch}-{i}",
                    "timestamp": (now - earlier - timedelta(seconds=i)).isoformat(),
                    "userId": f"user-{i % (size // 4)}",
                    "feature": "chat" if i % 3 else "summary",
                    "provider": "openai",
                    "model": "gpt-4o-mini" if i % 5 else "gpt-4o",
                    "inputTokens": 1000 + i,
                    "outputTokens": 200 + batch,
                    # Every fourth call in one of eight agent runs that span every
                    # batch of both processes: concurrent upserts of the same run rows.
                    **({"runId": f"run-{i % 8}"} if i % 4 == 0 else {}),
                    # Two thirds of the calls paid by one of five accounts.
                    **({"accountId": f"acct-{i % 5}"} if i % 3 else {}),
                }
            )
        result.append(events)
    return result


def main() -> None:
    django.setup()
    from weckr_django.ingest import ingest_records
    from weckr_django.models import Project
    from weckr_django.wire import parse_event

    project_id, seed, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    project = Project.objects.get(pk=project_id)
    created = 0
    for events in batches(seed, size):
        created += ingest_records(project, [parse_event(e) for e in events]).created
    print(f"created={created}")


if __name__ == "__main__":
    main()
