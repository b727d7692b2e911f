"""A durable local queue of usage events: a SQLite file (WAL) on the sender's host.

A backend writes each batch here before it tries to deliver it, and deletes what
was delivered; what could not be delivered (the server or the database away) stays
and is tried again, oldest first, by this process or by the next one that opens
the file. Several processes of one host may share one file: a sender *claims* the
events it is about to send; the claims of a process that died are free again when
another process opens the file, or after ``lease_seconds`` (the server drops an
event it already has, by event id, so an event sent twice is stored once).

When the file holds ``max_events`` events, new ones are refused (and reported by
the backend): the oldest usage is kept.

Run ``python -m weckr_core.spool PATH`` to print what a spool file holds.
"""

from __future__ import annotations

import json
import os
import sqlite3
import sys
import threading
import time
import uuid
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Final

DEFAULT_MAX_EVENTS: Final = 1_000_000
DEFAULT_LEASE_SECONDS: Final = 120.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id TEXT NOT NULL UNIQUE,
    body BLOB NOT NULL,
    added_at REAL NOT NULL,
    claimed_by TEXT,
    claimed_at REAL,
    attempts INTEGER NOT NULL DEFAULT 0
)
"""


@dataclass(frozen=True, slots=True)
class SpooledEvent:
    event_id: str
    body: bytes
    attempts: int  # delivery attempts so far, this one included


@dataclass(frozen=True, slots=True)
class SpoolStats:
    events: int
    claimed: int
    oldest_age_seconds: float | None
    most_attempts: int


class Spool:
    """One spool file, safe to use from several threads and processes."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        max_events: int = DEFAULT_MAX_EVENTS,
        lease_seconds: float = DEFAULT_LEASE_SECONDS,
    ) -> None:
        if max_events < 1 or lease_seconds <= 0:
            raise ValueError("max_events must be >= 1 and lease_seconds > 0")
        self.path = Path(path)
        self.max_events = max_events
        self.lease_seconds = lease_seconds
        self._lock = threading.Lock()
        self._pid = -1
        self._connection: sqlite3.Connection | None = None
        self._owner = ""
        with self._locked():
            pass  # open now: a path that cannot be written fails here, not later

    # -- writing --------------------------------------------------------------------

    def put(self, events: Sequence[tuple[str, bytes]]) -> list[str]:
        """Keep ``(event id, JSON body)`` pairs (an id already here is kept once).
        Returns the ids refused because the spool is full."""
        if not events:
            return []
        with self._locked() as connection:
            connection.execute("BEGIN IMMEDIATE")
            try:
                (count,) = connection.execute("SELECT count(*) FROM events").fetchone()
                room = max(0, self.max_events - count)
                now = time.time()
                connection.executemany(
                    "INSERT OR IGNORE INTO events (event_id, body, added_at) VALUES (?, ?, ?)",
                    [(event_id, body, now) for event_id, body in events[:room]],
                )
            except BaseException:
                connection.execute("ROLLBACK")
                raise
            connection.execute("COMMIT")
        return [event_id for event_id, _ in events[room:]]

    def claim(self, limit: int) -> list[SpooledEvent]:
        """Up to ``limit`` of the oldest events nobody is sending, now this sender's
        to deliver, then to ``done`` or ``unclaim``."""
        now = time.time()
        with self._locked() as connection:
            rows = connection.execute(
                "UPDATE events SET claimed_by = ?, claimed_at = ?, attempts = attempts + 1 "
                "WHERE seq IN (SELECT seq FROM events WHERE claimed_by IS NULL "
                "OR claimed_at < ? ORDER BY seq LIMIT ?) "
                "RETURNING seq, event_id, body, attempts",
                (self._owner, now, now - self.lease_seconds, limit),
            ).fetchall()
        return [
            SpooledEvent(event_id, body, attempts) for _, event_id, body, attempts in sorted(rows)
        ]

    def deliver_oldest(
        self, limit: int, send: Callable[[list[SpooledEvent]], Collection[str]]
    ) -> tuple[list[SpooledEvent], set[str]]:
        """Claim up to ``limit`` of the oldest events and hand them to ``send``, which
        returns the ids it could not deliver (or raises: none delivered). The rest
        leave the spool; those are free for the next try. Returns the events claimed
        (none: the spool has nothing to send) and the ids not delivered."""
        claimed = self.claim(limit)
        if not claimed:
            return [], set()
        try:
            undelivered = set(send(claimed))
        except BaseException:
            self.unclaim(event.event_id for event in claimed)
            raise
        self.done(event.event_id for event in claimed if event.event_id not in undelivered)
        self.unclaim(undelivered)
        return claimed, undelivered

    def done(self, event_ids: Iterable[str]) -> None:
        """Delivered, or refused for good: gone from the spool."""
        self._by_id("DELETE FROM events WHERE event_id = ? AND claimed_by = ?", event_ids)

    def unclaim(self, event_ids: Iterable[str]) -> None:
        """Not delivered this time: to be tried again."""
        self._by_id(
            "UPDATE events SET claimed_by = NULL, claimed_at = NULL "
            "WHERE event_id = ? AND claimed_by = ?",
            event_ids,
        )

    def stats(self) -> SpoolStats:
        with self._locked() as connection:
            count, claimed, oldest, attempts = connection.execute(
                "SELECT count(*), count(claimed_by), min(added_at), coalesce(max(attempts), 0) "
                "FROM events"
            ).fetchone()
        age = None if oldest is None else max(0.0, time.time() - oldest)
        return SpoolStats(count, claimed, age, attempts)

    def close(self) -> None:
        with self._lock:
            if self._connection is not None:
                self._connection.close()
                self._connection = None

    # -- plumbing -------------------------------------------------------------------

    def _by_id(self, sql: str, event_ids: Iterable[str]) -> None:
        rows = [(event_id, self._owner) for event_id in event_ids]
        if rows:
            with self._locked() as connection:
                connection.executemany(sql, rows)

    @contextmanager
    def _locked(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            yield self._open()

    def _open(self) -> sqlite3.Connection:
        """This process's connection (a forked child opens its own, and claims
        under a name of its own)."""
        if self._connection is None or self._pid != os.getpid():
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # Autocommit (isolation_level None): each statement, or our BEGIN..COMMIT.
            connection = sqlite3.connect(
                self.path, timeout=30, isolation_level=None, check_same_thread=False
            )
            connection.execute("PRAGMA journal_mode = WAL")
            connection.execute("PRAGMA synchronous = NORMAL")
            connection.execute(_SCHEMA)
            self._connection, self._pid = connection, os.getpid()
            self._owner = f"{os.getpid()}-{uuid.uuid4().hex[:12]}"
            _release_dead_claims(connection)
        return self._connection


def _release_dead_claims(connection: sqlite3.Connection) -> None:
    """Claims of processes of this host that are gone are free again at once,
    rather than after the lease (a restart after a crash sends at once)."""
    owners = [
        owner
        for (owner,) in connection.execute(
            "SELECT DISTINCT claimed_by FROM events WHERE claimed_by IS NOT NULL"
        )
    ]
    dead = [owner for owner in owners if not _alive(owner)]
    connection.executemany(
        "UPDATE events SET claimed_by = NULL, claimed_at = NULL WHERE claimed_by = ?",
        [(owner,) for owner in dead],
    )


def _alive(owner: str) -> bool:
    try:
        os.kill(int(owner.partition("-")[0]), 0)
    except ProcessLookupError:
        return False
    except (ValueError, PermissionError, OSError):
        return True  # not ours to judge: the lease decides
    return True


def _main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m weckr_core.spool PATH", file=sys.stderr)
        return 2
    path = Path(argv[0])
    if not path.exists():
        print(f"no spool file at {path}", file=sys.stderr)
        return 1
    spool = Spool(path)
    print(json.dumps({"path": str(path), **asdict(spool.stats())}, indent=2))
    spool.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(_main(sys.argv[1:]))
