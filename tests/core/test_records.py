"""Event ids: unique, UUID-shaped, new in every process."""

from __future__ import annotations

import os
import re
import threading
import uuid

from weckr_core.records import UsageRecord, new_event_id

# What weckr_django accepts as an eventId.
SERVER_EVENT_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,64}$")


def test_event_ids_are_unique_version_4_uuids() -> None:
    ids = [new_event_id() for _ in range(10_000)]

    assert len(set(ids)) == len(ids)
    for event_id in ids[:100] + ids[-100:]:
        assert uuid.UUID(event_id).version == 4
        assert SERVER_EVENT_ID.match(event_id)
    assert UsageRecord().event_id != UsageRecord().event_id


def test_event_ids_from_many_threads_do_not_collide() -> None:
    results: list[list[str]] = [[] for _ in range(8)]

    def make(into: list[str]) -> None:
        into.extend(new_event_id() for _ in range(5_000))

    threads = [threading.Thread(target=make, args=(into,)) for into in results]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    every_id = [event_id for ids in results for event_id in ids]
    assert len(set(every_id)) == len(every_id) == 40_000


def test_a_forked_child_makes_ids_of_its_own() -> None:
    before = new_event_id()
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report its next ids and leave at once
        os.close(read_end)
        os.write(write_end, " ".join(new_event_id() for _ in range(3)).encode())
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as pipe:
        child_ids = pipe.read().split()
    os.waitpid(pid, 0)
    parent_ids = [new_event_id() for _ in range(3)]

    assert len(child_ids) == 3
    assert not set(child_ids) & set(parent_ids)
    # A new random prefix, not the parent's with the counter carried on.
    assert {event_id[:24] for event_id in child_ids} != {before[:24]}
