"""Where reservations against caps live: the database, or Redis for many servers.

Both stores keep the same facts per user and month: the spend the monthly rollup
has recorded, and one hold per reservation (an estimate while its call runs, the
real cost once settled, until ingest stores the call's event and drops the hold).
A hold that is never settled stops counting after the reservation TTL; a settled
one whose event never arrives, after ``SETTLED_HOLD_SECONDS``.

- ``DatabaseCapStore`` (the default): a reservation locks the user's ``CapLock``
  row, reads the rollup and the live holds in one statement and inserts its own,
  in one short transaction: on PostgreSQL the row lock, on SQLite the database
  write lock, orders the reservations of a user in every process. Ingest deletes
  the holds of the events it stores in its own transaction.
- ``RedisCapStore`` (``WECKR["CAP_STORE"] = "redis://..."``): one hash per user and
  month, one Lua script per reservation. Ingest copies the rollup's total into it
  once its transaction has committed. A Redis that lost its data reloads the total
  from the rollup on the next reservation.
"""

from __future__ import annotations

import logging
import os
import threading
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal
from typing import Any, Final, cast

from django.db import DatabaseError, connections, router, transaction
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.models import Field, Model
from django.db.utils import load_backend
from django.utils import timezone

from weckr_django.conf import weckr_settings
from weckr_django.models import CapLock, CapReservation, MonthlyUserSpend, Project
from weckr_django.periods import month_start

logger = logging.getLogger("weckr_django")

#: A settled hold whose usage event has not arrived after this long stops counting.
SETTLED_HOLD_SECONDS: Final = 24 * 3600
_ZERO = Decimal(0)
_PLACES = Decimal("0.0000000001")  # the 10 decimal places of the money columns


class CapStoreUnavailable(Exception):
    """The store could not be reached or refused the operation."""


@dataclass(frozen=True, slots=True)
class SpendKey:
    """One user's budget in one month of one project."""

    project_id: str
    user_key: str
    month: date

    @classmethod
    def of(cls, project: Project, user_id: str, month: date | None = None) -> SpendKey:
        return cls(str(project.pk), user_id, month or month_start(project))

    def columns(self) -> dict[str, Any]:
        return {"project": self.project_id, "user_key": self.user_key, "month": self.month}

    @classmethod
    def of_reservation(cls, project: Project, user_id: str, reservation_id: str) -> SpendKey:
        """The key a reservation was made under: its month is in its id."""
        return cls.of(project, user_id, month_of(reservation_id) or month_start(project))


@dataclass(frozen=True, slots=True)
class Spend:
    """What counts against a cap: recorded spend, and holds of calls not stored yet."""

    recorded: Decimal
    held: Decimal

    @property
    def total(self) -> Decimal:
        return self.recorded + self.held


@dataclass(frozen=True, slots=True)
class Hold:
    """The outcome of a reservation: its id, or None when it did not fit; and the
    spend it was decided against."""

    reservation_id: str | None
    spend: Spend


def new_reservation_id(month: date) -> str:
    return f"{month:%Y%m}-{uuid.uuid4().hex}"


def month_of(reservation_id: str) -> date | None:
    try:
        return date(int(reservation_id[:4]), int(reservation_id[4:6]), 1)
    except ValueError:
        return None


class CapStore(ABC):
    @abstractmethod
    def spend(self, key: SpendKey) -> Spend: ...

    @abstractmethod
    def reserve(self, key: SpendKey, amount: Decimal, cap: Decimal | None, ttl: float) -> Hold:
        """Hold ``amount`` for ``key`` when the spend plus it stays within ``cap``
        (always, with no cap): atomic against every other reservation."""

    @abstractmethod
    def settle(self, key: SpendKey, reservation_id: str, cost: Decimal) -> None: ...

    @abstractmethod
    def release(self, key: SpendKey, reservation_id: str) -> None: ...

    @abstractmethod
    def ingested(self, project: Project, stored: Sequence[tuple[SpendKey, str]]) -> None:
        """Called by ingest, inside its transaction: the events of these (key,
        reservation id) pairs are stored, and their costs are in the rollup."""

    @abstractmethod
    def ping(self) -> None:
        """One round trip to the store and back, doing nothing: what every operation
        costs at least (health checks, ``bench/bench_caps.py``)."""


class DatabaseCapStore(CapStore):
    """Reservations in the project's database, written through a connection of this
    store's own in each thread: a hold is committed at once even when the caller runs
    inside a transaction (``ATOMIC_REQUESTS``), which would otherwise keep it from
    every other process until the request ends. (SQLite, which lets one writer in at
    a time, joins the caller's transaction instead.) On PostgreSQL that connection
    commits without waiting for the disk (``synchronous_commit = off``) and prepares
    its statements: a server crash can forget the last fraction of a second of
    holds, never a stored usage event."""

    def __init__(self) -> None:
        self._local = threading.local()
        os.register_at_fork(after_in_child=self._forget_connections)

    def spend(self, key: SpendKey) -> Spend:
        with self._cursor(transaction=False) as (cursor, sql):
            return sql.spend(cursor, key, timezone.now())

    def reserve(self, key: SpendKey, amount: Decimal, cap: Decimal | None, ttl: float) -> Hold:
        now = timezone.now()
        with self._cursor(transaction=True) as (cursor, sql):
            sql.lock(cursor, key)
            spend = sql.spend(cursor, key, now)
            if cap is not None and spend.total + amount > cap:
                return Hold(None, spend)
            reservation_id = new_reservation_id(key.month)
            sql.hold(cursor, key, reservation_id, _hold(amount), now + timedelta(seconds=ttl))
            return Hold(reservation_id, spend)

    def settle(self, key: SpendKey, reservation_id: str, cost: Decimal) -> None:
        expires = timezone.now() + timedelta(seconds=SETTLED_HOLD_SECONDS)
        with self._cursor(transaction=False) as (cursor, sql):
            if not sql.settle(cursor, reservation_id, _hold(cost), expires):
                # Expired and cleaned up meanwhile: the cost still counts until stored.
                sql.hold(cursor, key, reservation_id, _hold(cost), expires, settled=True)

    def release(self, key: SpendKey, reservation_id: str) -> None:
        with self._cursor(transaction=False) as (cursor, sql):
            sql.release(cursor, reservation_id)

    def ingested(self, project: Project, stored: Sequence[tuple[SpendKey, str]]) -> None:
        # On the caller's connection, inside ingest's transaction, with the rollup.
        ids = sorted({reservation_id for _, reservation_id in stored})
        for start in range(0, len(ids), 500):
            CapReservation.objects.filter(project=project, pk__in=ids[start : start + 500]).delete()

    def ping(self) -> None:
        with self._cursor(transaction=False) as (cursor, _):
            cursor.execute("SELECT 1")

    @contextmanager
    def _cursor(self, *, transaction: bool) -> Iterator[tuple[Any, _Statements]]:
        """A cursor on this thread's connection and the statements for its database,
        in one transaction when asked; every database error is ``CapStoreUnavailable``
        (and a fresh connection next time)."""
        alias = router.db_for_write(CapReservation)
        shared = connections[alias]
        if shared.vendor == "sqlite" and (_in_memory(shared) or shared.in_atomic_block):
            # Each connection to an in-memory database is its own: share the caller's.
            # Inside the caller's transaction, too: SQLite has one writer at a time,
            # and a second connection of this thread would wait for this one's lock.
            try:
                with _atomic_if(transaction, alias), shared.cursor() as cursor:
                    yield cursor, _statements(shared)
            except DatabaseError as error:
                raise CapStoreUnavailable(str(error)) from error
            return
        connection = self._connection(alias)
        try:
            # Errors surfacing when a pipeline ends are psycopg's own: made Django's here.
            with connection.wrap_database_errors, connection.cursor() as cursor:
                if not transaction:
                    yield cursor, _statements(connection)
                    return
                with _pipelined(connection):
                    cursor.execute("BEGIN IMMEDIATE" if connection.vendor == "sqlite" else "BEGIN")
                    try:
                        yield cursor, _statements(connection)
                    except BaseException:
                        cursor.execute("ROLLBACK")
                        raise
                    cursor.execute("COMMIT")
        except DatabaseError as error:
            # This thread reconnects on its next call; other threads keep theirs.
            self._local.connection = None
            connection.close()
            raise CapStoreUnavailable(str(error)) from error

    def _connection(self, alias: str) -> BaseDatabaseWrapper:
        connection: BaseDatabaseWrapper | None = getattr(self._local, "connection", None)
        if connection is None or connection.alias != alias:
            settings_dict = dict(connections[alias].settings_dict)
            if settings_dict["ENGINE"].endswith("postgresql"):
                # Server-side parameters: psycopg prepares the statements it runs
                # often, so each runs without being planned again.
                settings_dict["OPTIONS"] = {
                    **settings_dict.get("OPTIONS", {}),
                    "server_side_binding": True,
                    "prepare_threshold": 0,
                }
            connection = load_backend(settings_dict["ENGINE"]).DatabaseWrapper(settings_dict, alias)
            self._local.connection = connection
        if connection.connection is None:
            connection.connect()
            if connection.vendor == "postgresql":
                with connection.cursor() as cursor:
                    cursor.execute("SET synchronous_commit TO off")
        return connection

    def _forget_connections(self) -> None:
        self._local = threading.local()


def _in_memory(connection: BaseDatabaseWrapper) -> bool:
    name = str(connection.settings_dict.get("NAME") or "")
    return connection.vendor == "sqlite" and (name == ":memory:" or "mode=memory" in name)


@contextmanager
def _pipelined(connection: BaseDatabaseWrapper) -> Iterator[None]:
    """On PostgreSQL, send statements without waiting for each one's answer until a
    result is read (psycopg's pipeline mode): a reservation's transaction then takes
    two round trips to the server instead of five."""
    if connection.vendor != "postgresql":
        yield
        return
    with connection.connection.pipeline():
        yield


@contextmanager
def _atomic_if(wanted: bool, alias: str) -> Iterator[None]:
    if wanted:
        with transaction.atomic(using=alias):
            yield
    else:
        yield


class _Statements:
    """The store's SQL for one database vendor; parameters are prepared for the
    connection of the cursor each statement runs on."""

    def __init__(self, connection: BaseDatabaseWrapper) -> None:
        quote = connection.ops.quote_name

        def table(model: type[Model]) -> str:
            return quote(model._meta.db_table)

        def column(model: type[Model], name: str) -> str:
            return quote(_column(model, name))

        def key_of(model: type[Model]) -> str:
            names = ("project", "user_key", "month")
            return " AND ".join(f"{column(model, name)} = %s" for name in names)

        locks, holds, rollup = table(CapLock), table(CapReservation), table(MonthlyUserSpend)
        lock_key = ", ".join(column(CapLock, name) for name in ("project", "user_key", "month"))
        count = column(CapLock, "reservations")
        amount, expires = column(CapReservation, "amount_usd"), column(CapReservation, "expires_at")
        hold_columns = ", ".join(
            column(CapReservation, name)
            for name in (
                "id",
                "project",
                "user_key",
                "month",
                "amount_usd",
                "settled",
                "expires_at",
            )
        )
        identity = column(CapReservation, "id")
        # An upsert that always writes: the row lock (PostgreSQL) or the write lock
        # (SQLite) is held from here to the end of the transaction.
        self.lock_sql = (
            f"INSERT INTO {locks} ({lock_key}, {count}) VALUES (%s, %s, %s, 1) "
            f"ON CONFLICT ({lock_key}) DO UPDATE SET {count} = {locks}.{count} + 1"
        )
        # The rollup's total and the live holds in one statement, so in one snapshot
        # (ingest adds a cost and drops its hold in one transaction).
        self.spend_sql = (
            f"SELECT (SELECT {column(MonthlyUserSpend, 'cost_usd')} FROM {rollup} "
            f"WHERE {key_of(MonthlyUserSpend)}), (SELECT SUM({amount}) FROM {holds} "
            f"WHERE {key_of(CapReservation)} AND {expires} > %s)"
        )
        self.hold_sql = (
            f"INSERT INTO {holds} ({hold_columns}) VALUES (%s, %s, %s, %s, %s, %s, %s) "
            f"ON CONFLICT ({identity}) DO NOTHING"
        )
        self.settle_sql = (
            f"UPDATE {holds} SET {amount} = %s, {column(CapReservation, 'settled')} = %s, "
            f"{expires} = %s WHERE {identity} = %s"
        )
        self.release_sql = f"DELETE FROM {holds} WHERE {identity} = %s"

    @staticmethod
    def _values(cursor: Any, model: type[Model], **values: Any) -> list[Any]:
        return _column_values(cursor.db, model, values)

    def lock(self, cursor: Any, key: SpendKey) -> None:
        cursor.execute(self.lock_sql, self._values(cursor, CapLock, **key.columns()))

    def spend(self, cursor: Any, key: SpendKey, now: datetime) -> Spend:
        cursor.execute(
            self.spend_sql,
            [
                *self._values(cursor, MonthlyUserSpend, **key.columns()),
                *self._values(cursor, CapReservation, **key.columns(), expires_at=now),
            ],
        )
        recorded, held = cursor.fetchone()
        return Spend(_money(recorded), _money(held))

    def hold(
        self,
        cursor: Any,
        key: SpendKey,
        reservation_id: str,
        amount: Decimal,
        expires: datetime,
        *,
        settled: bool = False,
    ) -> None:
        cursor.execute(
            self.hold_sql,
            self._values(
                cursor,
                CapReservation,
                id=reservation_id,
                **key.columns(),
                amount_usd=amount,
                settled=settled,
                expires_at=expires,
            ),
        )

    def settle(self, cursor: Any, reservation_id: str, cost: Decimal, expires: datetime) -> bool:
        cursor.execute(
            self.settle_sql,
            self._values(
                cursor,
                CapReservation,
                amount_usd=cost,
                settled=True,
                expires_at=expires,
                id=reservation_id,
            ),
        )
        return bool(cursor.rowcount)

    def release(self, cursor: Any, reservation_id: str) -> None:
        cursor.execute(self.release_sql, self._values(cursor, CapReservation, id=reservation_id))


_statements_by_vendor: dict[str, _Statements] = {}


def _statements(connection: BaseDatabaseWrapper) -> _Statements:
    found = _statements_by_vendor.get(connection.vendor)
    if found is None:
        found = _statements_by_vendor[connection.vendor] = _Statements(connection)
    return found


def delete_expired_reservations(project: Project) -> int:
    """Housekeeping: holds that stopped counting (expired or settled long ago)."""
    deleted, _ = CapReservation.objects.filter(
        project=project, expires_at__lte=timezone.now()
    ).delete()
    return deleted


def _alias() -> str:
    return router.db_for_write(CapReservation)


def _money(value: Any) -> Decimal:
    """A money value read from the database (SQLite sums in floats), to the columns'
    10 places."""
    if value is None:
        return _ZERO
    amount = value if isinstance(value, Decimal) else Decimal(str(value))
    return amount.quantize(_PLACES)


def _hold(amount: Decimal) -> Decimal:
    """An amount to hold, rounded up to the columns' 10 places: never below it."""
    return amount.quantize(_PLACES, rounding=ROUND_CEILING)


def _column_values(
    connection: BaseDatabaseWrapper, model: type[Model], values: dict[str, Any]
) -> list[Any]:
    prepared = []
    for name, value in values.items():
        field = model._meta.get_field(name)
        assert isinstance(field, Field)
        target = field.target_field if field.is_relation else field  # type: ignore[attr-defined]
        prepared.append(target.get_db_prep_value(value, connection, prepared=False))
    return prepared


def _column(model: type[Model], name: str) -> str:
    field = model._meta.get_field(name)
    assert isinstance(field, Field) and field.column is not None
    return field.column


class RedisCapStore(CapStore):
    """Holds in Redis, as whole nanodollars (Lua numbers are doubles: integers are
    exact up to 2**53, $9 million; sums of decimal fractions would not be)."""

    # KEYS[1]: the user's month hash. ARGV: reservation id, amount, cap ('' for
    # none), TTL in ms, the hash's own TTL in s. Returns {fits (1/0), recorded, held},
    # or {-1} when the hash has no recorded total yet (the caller loads it).
    _RESERVE = """
local recorded = redis.call('HGET', KEYS[1], 'recorded')
if not recorded then return {-1, 0, 0} end
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local fields = redis.call('HGETALL', KEYS[1])
local held = 0
for i = 1, #fields, 2 do
  local name = fields[i]
  if string.sub(name, 1, 2) == 'r:' then
    local value = fields[i + 1]
    local cut = string.find(value, '|', 1, true)
    if tonumber(string.sub(value, cut + 1)) <= now then
      redis.call('HDEL', KEYS[1], name)
    else
      held = held + tonumber(string.sub(value, 1, cut - 1))
    end
  end
end
local amount = tonumber(ARGV[2])
if ARGV[3] ~= '' and tonumber(recorded) + held + amount > tonumber(ARGV[3]) then
  return {0, tonumber(recorded), held}
end
redis.call('HSET', KEYS[1], 'r:' .. ARGV[1], ARGV[2] .. '|' .. (now + tonumber(ARGV[4])))
redis.call('EXPIRE', KEYS[1], ARGV[5])
return {1, tonumber(recorded), held}
"""
    # KEYS[1]: the user's month hash. ARGV: the rollup's total, then the ids of the
    # reservations whose events it now holds. The total only grows within a month,
    # so an older answer never overwrites a newer one.
    _INGESTED = """
local recorded = tonumber(redis.call('HGET', KEYS[1], 'recorded') or '-1')
if tonumber(ARGV[1]) > recorded then redis.call('HSET', KEYS[1], 'recorded', ARGV[1]) end
for i = 2, #ARGV do redis.call('HDEL', KEYS[1], 'r:' .. ARGV[i]) end
return 1
"""
    _KEY_TTL_SECONDS: Final = 40 * 24 * 3600

    def __init__(self, url: str) -> None:
        import redis

        self._redis = redis.Redis.from_url(
            url,
            decode_responses=True,
            socket_timeout=1.0,
            socket_connect_timeout=1.0,
            health_check_interval=30,
        )
        self._errors: tuple[type[Exception], ...] = (redis.RedisError,)
        self._reserve = self._redis.register_script(self._RESERVE)
        self._ingested = self._redis.register_script(self._INGESTED)

    @staticmethod
    def key(key: SpendKey) -> str:
        return f"weckr:cap:{key.project_id}:{key.month:%Y-%m}:{key.user_key}"

    def spend(self, key: SpendKey) -> Spend:
        try:
            # decode_responses=True: str, whatever the stubs say.
            fields = cast(dict[str, str], self._redis.hgetall(self.key(key)))
        except self._errors as error:
            raise CapStoreUnavailable(str(error)) from error
        now_ms = timezone.now().timestamp() * 1000
        recorded = fields.get("recorded")
        held = 0
        for name, value in fields.items():
            if name.startswith("r:"):
                amount, expires = value.split("|")
                if int(expires) > now_ms:
                    held += int(amount)
        if recorded is None:
            return Spend(_recorded_in_rollup(key), _from_nano(held))
        return Spend(_from_nano(int(recorded)), _from_nano(held))

    def reserve(self, key: SpendKey, amount: Decimal, cap: Decimal | None, ttl: float) -> Hold:
        reservation_id = new_reservation_id(key.month)
        args: list[str | int] = [
            reservation_id,
            _to_nano(amount),
            "" if cap is None else _to_nano(cap, up=False),
            int(ttl * 1000),
            self._KEY_TTL_SECONDS,
        ]
        name = self.key(key)
        try:
            fits, recorded, held = self._reserve(keys=[name], args=args)
            if fits == -1:
                # New this month, or Redis lost its data: the rollup has the total.
                self._redis.hsetnx(name, "recorded", _to_nano(_recorded_in_rollup(key)))
                fits, recorded, held = self._reserve(keys=[name], args=args)
        except self._errors as error:
            raise CapStoreUnavailable(str(error)) from error
        spend = Spend(_from_nano(recorded), _from_nano(held))
        return Hold(reservation_id if fits == 1 else None, spend)

    def settle(self, key: SpendKey, reservation_id: str, cost: Decimal) -> None:
        expires = int((timezone.now().timestamp() + SETTLED_HOLD_SECONDS) * 1000)
        try:
            self._redis.hset(self.key(key), f"r:{reservation_id}", f"{_to_nano(cost)}|{expires}")
        except self._errors as error:
            raise CapStoreUnavailable(str(error)) from error

    def release(self, key: SpendKey, reservation_id: str) -> None:
        try:
            self._redis.hdel(self.key(key), f"r:{reservation_id}")
        except self._errors as error:
            raise CapStoreUnavailable(str(error)) from error

    def ping(self) -> None:
        try:
            self._redis.ping()
        except self._errors as error:
            raise CapStoreUnavailable(str(error)) from error

    def ingested(self, project: Project, stored: Sequence[tuple[SpendKey, str]]) -> None:
        # After the commit: the rollup then holds the events' costs.
        transaction.on_commit(
            lambda: self.sync(project, stored), using=router.db_for_write(MonthlyUserSpend)
        )

    def sync(self, project: Project, stored: Iterable[tuple[SpendKey, str]]) -> None:
        """Copy the rollup's totals of ``stored``'s users in, and drop their holds."""
        by_key: dict[SpendKey, list[str]] = {}
        for key, reservation_id in stored:
            by_key.setdefault(key, []).append(reservation_id)
        try:
            for key, ids in sorted(by_key.items(), key=lambda item: self.key(item[0])):
                recorded = _to_nano(_recorded_in_rollup(key))
                self._ingested(keys=[self.key(key)], args=[recorded, *ids])
        except self._errors as error:
            # The holds keep counting until they expire: never less than the real spend.
            logger.warning("Weckr: could not update the Redis cap store after ingest: %s", error)


def _recorded_in_rollup(key: SpendKey) -> Decimal:
    cost = (
        MonthlyUserSpend.objects.filter(
            project_id=key.project_id, user_key=key.user_key, month=key.month
        )
        .values_list("cost_usd", flat=True)
        .first()
    )
    return _money(cost)


def _to_nano(amount: Decimal, *, up: bool = True) -> int:
    """Whole nanodollars: holds round up, caps round down."""
    scaled = amount * 1_000_000_000
    return int(scaled.to_integral_value(rounding=ROUND_CEILING if up else ROUND_FLOOR))


def _from_nano(value: int) -> Decimal:
    return Decimal(int(value)) / 1_000_000_000


_store_lock = threading.Lock()
_stores: dict[str, CapStore] = {}


def cap_store() -> CapStore:
    """The store ``WECKR["CAP_STORE"]`` names, one per process and setting."""
    setting = weckr_settings.CAP_STORE
    store = _stores.get(setting)
    if store is not None:
        return store
    with _store_lock:
        store = _stores.get(setting)
        if store is None:
            if setting == "database":
                store = DatabaseCapStore()
            elif setting.startswith(("redis://", "rediss://", "unix://")):
                store = RedisCapStore(setting)
            else:
                raise ValueError(
                    f"WECKR['CAP_STORE'] = {setting!r}: use 'database' or a redis:// URL."
                )
            _stores[setting] = store
    return store
