"""Where reservations against caps live: the database, or Redis for many servers.

Both stores keep the same facts per budget (a user's, or an account's: all its
users together) and month: the spend the monthly rollup has recorded, and one hold
per reservation (an estimate while its call runs, the real cost once settled, until
ingest stores the call's event and drops the hold). A call holds against its user's
budget and its account's at once, and goes ahead only if it fits every capped one.
A hold that is never settled stops counting after the reservation TTL; a settled
one whose event never arrives, after ``SETTLED_HOLD_SECONDS``.

- ``DatabaseCapStore`` (the default): a reservation locks the ``CapLock`` row of
  each budget, reads the rollups and the live holds in one statement and inserts
  its own, in one short transaction: on PostgreSQL the row locks, on SQLite the
  database write lock, order the reservations of a budget in every process. Ingest
  deletes the holds of the events it stores in its own transaction.
- ``RedisCapStore`` (``WECKR["CAP_STORE"] = "redis://..."``): one hash per budget
  and month, one Lua script per reservation. Ingest copies the rollups' totals into
  them once its transaction has committed. A Redis that lost its data reloads a
  total from its rollup on the next reservation.
"""

from __future__ import annotations

import logging
import os
import threading
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal
from typing import Any, Final, Literal, cast

from django.db import DatabaseError, connections, router, transaction
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.models import Field, Model
from django.db.utils import load_backend
from django.utils import timezone

from weckr_core.caps import refuses
from weckr_django.conf import weckr_settings
from weckr_django.models import (
    CapLock,
    CapReservation,
    MonthlyAccountSpend,
    MonthlyUserSpend,
    Project,
)
from weckr_django.periods import month_start

logger = logging.getLogger("weckr_django")

#: A settled hold whose usage event has not arrived after this long stops counting.
SETTLED_HOLD_SECONDS: Final = 24 * 3600
_ZERO = Decimal(0)
_PLACES = Decimal("0.0000000001")  # the 10 decimal places of the money columns


class CapStoreUnavailable(Exception):
    """The store could not be reached or refused the operation."""


Scope = Literal["user", "account"]


@dataclass(frozen=True, slots=True)
class SpendKey:
    """One budget in one month of one project: a user's, or an account's (all its
    users together)."""

    project_id: str
    key: str
    month: date
    scope: Scope = "user"

    @classmethod
    def of(cls, project: Project, user_id: str, month: date | None = None) -> SpendKey:
        return cls(str(project.pk), user_id, month or month_start(project))

    @classmethod
    def of_account(cls, project: Project, account_id: str, month: date | None = None) -> SpendKey:
        return cls(str(project.pk), account_id, month or month_start(project), "account")

    @classmethod
    def of_call(
        cls, project: Project, user_id: str | None, account_id: str | None, month: date
    ) -> tuple[SpendKey, ...]:
        """The budgets a call counts against: its user's, then its account's."""
        keys = [cls.of(project, user_id, month)] if user_id else []
        if account_id:
            keys.append(cls.of_account(project, account_id, month))
        return tuple(keys)

    @classmethod
    def of_reservation(
        cls,
        project: Project,
        reservation_id: str,
        user_id: str | None,
        account_id: str | None = None,
    ) -> tuple[SpendKey, ...]:
        """The budgets a reservation was made against: its month is in its id."""
        month = month_of(reservation_id) or month_start(project)
        return cls.of_call(project, user_id, account_id, month)


@dataclass(frozen=True, slots=True)
class Spend:
    """What counts against a cap: recorded spend, and holds of calls not stored yet."""

    recorded: Decimal
    held: Decimal

    @property
    def total(self) -> Decimal:
        return self.recorded + self.held


@dataclass(frozen=True, slots=True)
class Budget:
    """A budget a reservation is decided against, and its cap (None: held, never
    refused)."""

    key: SpendKey
    cap: Decimal | None

    def fits(self, spend: Spend, amount: Decimal) -> bool:
        return not refuses(self.cap, spend.total, amount)


@dataclass(frozen=True, slots=True)
class Hold:
    """The outcome of a reservation: its id, or None when it did not fit every
    budget; and the spend of each budget it was decided against, in their order."""

    reservation_id: str | None
    spends: tuple[Spend, ...]


def new_reservation_id(month: date) -> str:
    return f"{month:%Y%m}-{uuid.uuid4().hex}"


def month_of(reservation_id: str) -> date | None:
    try:
        return date(int(reservation_id[:4]), int(reservation_id[4:6]), 1)
    except ValueError:
        return None


class CapStore(ABC):
    @abstractmethod
    def spends(self, keys: Sequence[SpendKey]) -> tuple[Spend, ...]:
        """The spend of each budget, read together."""

    def spend(self, key: SpendKey) -> Spend:
        return self.spends([key])[0]

    @abstractmethod
    def reserve(self, budgets: Sequence[Budget], amount: Decimal, ttl: float) -> Hold:
        """Hold ``amount`` against every budget when it fits each of them (always,
        for budgets with no cap): atomic against every other reservation of any of
        these budgets. All the budgets are of one month."""

    @abstractmethod
    def settle(self, keys: Sequence[SpendKey], reservation_id: str, cost: Decimal) -> None:
        """The reservation made against ``keys`` now holds the call's real cost."""

    @abstractmethod
    def release(self, keys: Sequence[SpendKey], reservation_id: str) -> None: ...

    @abstractmethod
    def ingested(self, project: Project, stored: Sequence[tuple[SpendKey, str | None]]) -> None:
        """Called by ingest, inside its transaction: the events of these (budget,
        reservation id or None) pairs are stored, and their costs are in the rollups."""

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
    holds, never a stored usage event.

    A reservation is one row holding the call's user and account: it counts against
    the user's budget and the account's, and is settled, released or dropped by its
    id alone."""

    def __init__(self) -> None:
        self._local = threading.local()
        os.register_at_fork(after_in_child=self._forget_connections)

    def spends(self, keys: Sequence[SpendKey]) -> tuple[Spend, ...]:
        with self._cursor(transaction=False) as (cursor, sql):
            return sql.spends(cursor, keys, timezone.now())

    def reserve(self, budgets: Sequence[Budget], amount: Decimal, ttl: float) -> Hold:
        now = timezone.now()
        keys = [budget.key for budget in budgets]
        with self._cursor(transaction=True) as (cursor, sql):
            # Every process takes the locks in one order, so none waits on another's.
            for key in sorted(keys, key=lambda key: (key.scope, key.key)):
                sql.lock(cursor, key)
            spends = sql.spends(cursor, keys, now)
            if not all(map(Budget.fits, budgets, spends, [amount] * len(budgets))):
                return Hold(None, spends)
            reservation_id = new_reservation_id(keys[0].month)
            sql.hold(cursor, keys, reservation_id, _hold(amount), now + timedelta(seconds=ttl))
            return Hold(reservation_id, spends)

    def settle(self, keys: Sequence[SpendKey], reservation_id: str, cost: Decimal) -> None:
        expires = timezone.now() + timedelta(seconds=SETTLED_HOLD_SECONDS)
        with self._cursor(transaction=False) as (cursor, sql):
            if not sql.settle(cursor, reservation_id, _hold(cost), expires):
                # Expired and cleaned up meanwhile: the cost still counts until stored.
                sql.hold(cursor, keys, reservation_id, _hold(cost), expires, settled=True)

    def release(self, keys: Sequence[SpendKey], reservation_id: str) -> None:
        with self._cursor(transaction=False) as (cursor, sql):
            sql.release(cursor, reservation_id)

    def ingested(self, project: Project, stored: Sequence[tuple[SpendKey, str | None]]) -> None:
        # On the caller's connection, inside ingest's transaction, with the rollups.
        # (Spend is read from the rollups themselves: only holds need dropping.)
        ids = sorted({reservation_id for _, reservation_id in stored if reservation_id})
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


#: Where each scope's recorded spend is, and the column of a hold naming it.
_ROLLUPS: Final[dict[str, tuple[type[Model], str]]] = {
    "user": (MonthlyUserSpend, "user_key"),
    "account": (MonthlyAccountSpend, "account_key"),
}


class _Statements:
    """The store's SQL for one database vendor; parameters are prepared for the
    connection of the cursor each statement runs on."""

    def __init__(self, connection: BaseDatabaseWrapper) -> None:
        quote = connection.ops.quote_name
        self._quote = quote
        locks, holds = self._table(CapLock), self._table(CapReservation)
        lock_key = ", ".join(
            self._column(CapLock, name) for name in ("project", "scope", "budget_key", "month")
        )
        count = self._column(CapLock, "reservations")
        amount = self._column(CapReservation, "amount_usd")
        expires = self._column(CapReservation, "expires_at")
        hold_columns = ", ".join(
            self._column(CapReservation, name)
            for name in (
                "id",
                "project",
                "user_key",
                "account_key",
                "month",
                "amount_usd",
                "settled",
                "expires_at",
            )
        )
        identity = self._column(CapReservation, "id")
        # An upsert that always writes: the row lock (PostgreSQL) or the write lock
        # (SQLite) is held from here to the end of the transaction.
        self.lock_sql = (
            f"INSERT INTO {locks} ({lock_key}, {count}) VALUES (%s, %s, %s, %s, 1) "
            f"ON CONFLICT ({lock_key}) DO UPDATE SET {count} = {locks}.{count} + 1"
        )
        self.hold_sql = (
            f"INSERT INTO {holds} ({hold_columns}) VALUES (%s, %s, %s, %s, %s, %s, %s, %s) "
            f"ON CONFLICT ({identity}) DO NOTHING"
        )
        self.settle_sql = (
            f"UPDATE {holds} SET {amount} = %s, {self._column(CapReservation, 'settled')} = %s, "
            f"{expires} = %s WHERE {identity} = %s"
        )
        self.release_sql = f"DELETE FROM {holds} WHERE {identity} = %s"
        self._spends_sql: dict[tuple[str, ...], str] = {}

    def _table(self, model: type[Model]) -> str:
        return self._quote(model._meta.db_table)

    def _column(self, model: type[Model], name: str) -> str:
        return self._quote(_column(model, name))

    def _key_of(self, model: type[Model], name: str) -> str:
        return " AND ".join(
            f"{self._column(model, field)} = %s" for field in ("project", name, "month")
        )

    def spends_sql(self, scopes: tuple[str, ...]) -> str:
        """For each budget, its rollup's total and its live holds, all in one
        statement, so in one snapshot (ingest adds a cost and drops its hold in one
        transaction)."""
        found = self._spends_sql.get(scopes)
        if found is None:
            holds = self._table(CapReservation)
            amount = self._column(CapReservation, "amount_usd")
            expires = self._column(CapReservation, "expires_at")
            parts = []
            for scope in scopes:
                rollup, name = _ROLLUPS[scope]
                parts.append(
                    f"(SELECT {self._column(rollup, 'cost_usd')} FROM {self._table(rollup)} "
                    f"WHERE {self._key_of(rollup, name)})"
                )
                parts.append(
                    f"(SELECT SUM({amount}) FROM {holds} "
                    f"WHERE {self._key_of(CapReservation, name)} AND {expires} > %s)"
                )
            found = self._spends_sql[scopes] = "SELECT " + ", ".join(parts)
        return found

    @staticmethod
    def _values(cursor: Any, model: type[Model], **values: Any) -> list[Any]:
        return _column_values(cursor.db, model, values)

    def lock(self, cursor: Any, key: SpendKey) -> None:
        cursor.execute(
            self.lock_sql,
            self._values(
                cursor,
                CapLock,
                project=key.project_id,
                scope=key.scope,
                budget_key=key.key,
                month=key.month,
            ),
        )

    def spends(self, cursor: Any, keys: Sequence[SpendKey], now: datetime) -> tuple[Spend, ...]:
        params: list[Any] = []
        for key in keys:
            rollup, name = _ROLLUPS[key.scope]
            where = {"project": key.project_id, name: key.key, "month": key.month}
            params += self._values(cursor, rollup, **where)
            params += self._values(cursor, CapReservation, **where, expires_at=now)
        cursor.execute(self.spends_sql(tuple(key.scope for key in keys)), params)
        row = cursor.fetchone()
        return tuple(Spend(_money(row[at]), _money(row[at + 1])) for at in range(0, len(row), 2))

    def hold(
        self,
        cursor: Any,
        keys: Sequence[SpendKey],
        reservation_id: str,
        amount: Decimal,
        expires: datetime,
        *,
        settled: bool = False,
    ) -> None:
        named = {key.scope: key.key for key in keys}
        cursor.execute(
            self.hold_sql,
            self._values(
                cursor,
                CapReservation,
                id=reservation_id,
                project=keys[0].project_id,
                user_key=named.get("user", ""),
                account_key=named.get("account", ""),
                month=keys[0].month,
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
    exact up to 2**53, $9 million; sums of decimal fractions would not be). One hash
    per budget and month; a reservation holds in the hash of each of its budgets."""

    # KEYS: the budgets' month hashes. ARGV: reservation id, amount, TTL in ms, the
    # hashes' own TTL in s, then each budget's cap ('' for none). Returns {fits (1/0),
    # then recorded and held of each budget}, or {-1, k} when hash k has no recorded
    # total yet (the caller loads it).
    _RESERVE = """
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local amount = tonumber(ARGV[2])
local result = {1}
for k = 1, #KEYS do
  local recorded = redis.call('HGET', KEYS[k], 'recorded')
  if not recorded then return {-1, k} end
  local fields = redis.call('HGETALL', KEYS[k])
  local held = 0
  for i = 1, #fields, 2 do
    local name = fields[i]
    if string.sub(name, 1, 2) == 'r:' then
      local value = fields[i + 1]
      local cut = string.find(value, '|', 1, true)
      if tonumber(string.sub(value, cut + 1)) <= now then
        redis.call('HDEL', KEYS[k], name)
      else
        held = held + tonumber(string.sub(value, 1, cut - 1))
      end
    end
  end
  local cap = ARGV[4 + k]
  if cap ~= '' and tonumber(recorded) + held + amount > tonumber(cap) then result[1] = 0 end
  result[#result + 1] = tonumber(recorded)
  result[#result + 1] = held
end
for k = 1, #KEYS do
  if result[1] == 1 then
    redis.call('HSET', KEYS[k], 'r:' .. ARGV[1], ARGV[2] .. '|' .. (now + tonumber(ARGV[3])))
  end
  redis.call('EXPIRE', KEYS[k], ARGV[4])
end
return result
"""
    # KEYS[1]: a budget's month hash. ARGV: the rollup's total, the hash's TTL in s,
    # then the ids of the reservations whose events it now holds. The total only
    # grows within a month, so an older answer never overwrites a newer one; a hash
    # that does not exist is not created (the next reservation loads the total).
    _INGESTED = """
local recorded = redis.call('HGET', KEYS[1], 'recorded')
if not recorded then return 0 end
if tonumber(ARGV[1]) > tonumber(recorded) then
  redis.call('HSET', KEYS[1], 'recorded', ARGV[1])
end
for i = 3, #ARGV do redis.call('HDEL', KEYS[1], 'r:' .. ARGV[i]) end
redis.call('EXPIRE', KEYS[1], ARGV[2])
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
        kind = "cap" if key.scope == "user" else "acap"
        return f"weckr:{kind}:{key.project_id}:{key.month:%Y-%m}:{key.key}"

    def spends(self, keys: Sequence[SpendKey]) -> tuple[Spend, ...]:
        try:
            with self._redis.pipeline(transaction=False) as pipe:
                for key in keys:
                    pipe.hgetall(self.key(key))
                # decode_responses=True: str, whatever the stubs say.
                hashes = cast(list[dict[str, str]], pipe.execute())
        except self._errors as error:
            raise CapStoreUnavailable(str(error)) from error
        now_ms = timezone.now().timestamp() * 1000
        spends = []
        for key, fields in zip(keys, hashes, strict=True):
            held = 0
            for name, value in fields.items():
                if name.startswith("r:"):
                    amount, expires = value.split("|")
                    if int(expires) > now_ms:
                        held += int(amount)
            recorded = fields.get("recorded")
            if recorded is None:
                spends.append(Spend(_recorded_in_rollup(key), _from_nano(held)))
            else:
                spends.append(Spend(_from_nano(int(recorded)), _from_nano(held)))
        return tuple(spends)

    def reserve(self, budgets: Sequence[Budget], amount: Decimal, ttl: float) -> Hold:
        reservation_id = new_reservation_id(budgets[0].key.month)
        args: list[str | int] = [
            reservation_id,
            _to_nano(amount),
            int(ttl * 1000),
            self._KEY_TTL_SECONDS,
            *("" if budget.cap is None else _to_nano(budget.cap, up=False) for budget in budgets),
        ]
        names = [self.key(budget.key) for budget in budgets]
        try:
            for _ in range(len(budgets) + 1):
                result = self._reserve(keys=names, args=args)
                if result[0] != -1:
                    break
                # New this month, or Redis lost its data: the rollup has the total.
                key = budgets[result[1] - 1].key
                self._redis.hsetnx(self.key(key), "recorded", _to_nano(_recorded_in_rollup(key)))
            else:
                raise CapStoreUnavailable("Redis keeps losing the cap totals it is given.")
        except self._errors as error:
            raise CapStoreUnavailable(str(error)) from error
        spends = tuple(
            Spend(_from_nano(result[at]), _from_nano(result[at + 1]))
            for at in range(1, len(result), 2)
        )
        return Hold(reservation_id if result[0] == 1 else None, spends)

    def settle(self, keys: Sequence[SpendKey], reservation_id: str, cost: Decimal) -> None:
        expires = int((timezone.now().timestamp() + SETTLED_HOLD_SECONDS) * 1000)
        held = f"{_to_nano(cost)}|{expires}"
        self._each(keys, lambda pipe, name: pipe.hset(name, f"r:{reservation_id}", held))

    def release(self, keys: Sequence[SpendKey], reservation_id: str) -> None:
        self._each(keys, lambda pipe, name: pipe.hdel(name, f"r:{reservation_id}"))

    def _each(self, keys: Sequence[SpendKey], command: Callable[[Any, str], object]) -> None:
        """``command`` on the hash of each key, in one round trip."""
        try:
            with self._redis.pipeline(transaction=False) as pipe:
                for key in keys:
                    command(pipe, self.key(key))
                pipe.execute()
        except self._errors as error:
            raise CapStoreUnavailable(str(error)) from error

    def ping(self) -> None:
        try:
            self._redis.ping()
        except self._errors as error:
            raise CapStoreUnavailable(str(error)) from error

    def ingested(self, project: Project, stored: Sequence[tuple[SpendKey, str | None]]) -> None:
        # After the commit: the rollups then hold the events' costs.
        transaction.on_commit(
            lambda: self.sync(project, stored), using=router.db_for_write(MonthlyUserSpend)
        )

    def sync(self, project: Project, stored: Iterable[tuple[SpendKey, str | None]]) -> None:
        """Copy the rollups' totals of ``stored``'s budgets into the hashes Redis has
        for them (every stored call, reserved or not, so that usage recorded without
        a reservation counts too), and drop the reserved calls' holds; in one round
        trip. A budget Redis has no hash for loads its total on its next reservation."""
        by_key: dict[SpendKey, list[str]] = {}
        for key, reservation_id in stored:
            by_key.setdefault(key, [])
            if reservation_id:
                by_key[key].append(reservation_id)
        totals = _recorded_in_rollups(by_key)
        try:
            with self._redis.pipeline(transaction=False) as pipe:
                for key, ids in sorted(by_key.items(), key=lambda item: self.key(item[0])):
                    args: list[str | int] = [_to_nano(totals[key]), self._KEY_TTL_SECONDS, *ids]
                    self._ingested(keys=[self.key(key)], args=args, client=pipe)
                pipe.execute()
        except self._errors as error:
            # The holds keep counting until they expire: never less than the real spend.
            logger.warning("Weckr: could not update the Redis cap store after ingest: %s", error)


def _recorded_in_rollup(key: SpendKey) -> Decimal:
    return _recorded_in_rollups([key])[key]


def _recorded_in_rollups(keys: Iterable[SpendKey]) -> dict[SpendKey, Decimal]:
    """Each budget's recorded total: one query per scope, project and month."""
    groups: dict[tuple[str, str, date], list[SpendKey]] = {}
    for key in keys:
        groups.setdefault((key.scope, key.project_id, key.month), []).append(key)
    totals: dict[SpendKey, Decimal] = {}
    for (scope, project_id, month), members in groups.items():
        rollup, name = _ROLLUPS[scope]
        found = dict(
            rollup._default_manager.filter(
                project_id=project_id, month=month, **{f"{name}__in": [k.key for k in members]}
            ).values_list(name, "cost_usd")
        )
        for key in members:
            totals[key] = _money(found.get(key.key))
    return totals


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
