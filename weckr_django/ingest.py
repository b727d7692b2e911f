"""Ingest usage records: price them, insert them once, keep the rollups current.

Everything happens in one transaction, so a caller that sees ``ingest_records``
return knows the events and the rollups are committed together (a cap check right
after sees the spend); after the commit, ``signals.usage_ingested`` announces the new
usage to the follow-up work. Idempotency rests on the unique (project, event_id)
constraint: ``INSERT ... ON CONFLICT DO NOTHING RETURNING`` says which rows are new,
and only those reach the rollups, which are updated with additive upserts. That
stays exact with any number of concurrent workers on PostgreSQL, and on SQLite.
"""

from __future__ import annotations

import functools
import hashlib
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from django.db import DatabaseError, DataError, IntegrityError, connections, router, transaction
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.models import Field, Model
from django.utils import timezone

from weckr_core import pricing
from weckr_core.records import UsageRecord
from weckr_django import overrides
from weckr_django.models import (
    ANONYMOUS_KEY,
    AgentRunUsage,
    DailyAccountUsage,
    DailyUsage,
    MonthlyAccountSpend,
    MonthlyAccountUserSpend,
    MonthlyUserSpend,
    Project,
    UsageEvent,
)
from weckr_django.periods import local_day
from weckr_django.plans import match_plan
from weckr_django.signals import usage_ingested
from weckr_django.stores import SpendKey, cap_store
from weckr_django.wire import Rejection, parse_batch

logger = logging.getLogger("weckr_django")

_COST_PLACES = Decimal("0.0000000001")  # UsageEvent.cost_usd has 10 decimal places
_COUNTERS = (
    "cost_usd",
    "calls",
    "error_calls",
    "unpriced_calls",
    "input_tokens",
    "output_tokens",
    "cached_input_tokens",
    "cache_creation_tokens",
    "reasoning_tokens",
)
_TOKEN_COUNTERS = _COUNTERS[4:]


@dataclass
class IngestResult:
    created: int
    duplicates: int
    created_event_ids: list[str] = field(default_factory=list)
    #: The server's cost of each event stored now, by event id.
    costs: dict[str, Decimal] = field(default_factory=dict)


def ingest_records(project: Project, records: Sequence[UsageRecord]) -> IngestResult:
    """Insert ``records`` for ``project`` once each and update the rollups.

    The cost is recomputed here from model and tokens (admin price overrides
    included); whatever cost the client sent is ignored. Returns how many events were
    new and how many were already known (within the batch or in the table).
    """
    unique: dict[str, UsageRecord] = {}
    for record in records:
        unique.setdefault(record.event_id, record)
    if not unique:
        return IngestResult(created=0, duplicates=len(records))

    overrides.refresh_if_stale()
    now = timezone.now()
    plan_names = _plan_names(project, unique.values())
    events = [_event(project, record, now, plan_names) for record in unique.values()]
    # One lock order for every writer: concurrent batches sharing ids cannot deadlock.
    events.sort(key=lambda event: event.event_id)
    using = router.db_for_write(UsageEvent)
    with transaction.atomic(using=using):
        new_ids = _insert_new_events(connections[using], events)
        new_events = [event for event in events if event.event_id in new_ids]
        if new_events:
            _update_rollups(connections[using], project, new_events, now)
            _drop_holds(project, [unique[event_id] for event_id in sorted(new_ids)])
        user_ids = sorted({event.user_id or ANONYMOUS_KEY for event in new_events})
        account_ids = sorted({event.account_id for event in new_events if event.account_id})
        if new_events:
            transaction.on_commit(
                lambda: _after_commit(project, user_ids, account_ids), using=using, robust=True
            )

    created_ids = [event.event_id for event in new_events]
    return IngestResult(
        created=len(created_ids),
        duplicates=len(records) - len(created_ids),
        created_event_ids=created_ids,
        costs={event.event_id: event.cost_usd for event in new_events},
    )


@dataclass
class BatchResult:
    """What became of a batch of wire events: how many were stored now, how many
    were known already (``event_ids`` holds the ids of both, in batch order), the
    events rejected, by index, with the reason, and the cost of each event stored
    now (``costs``, by event id)."""

    created: int = 0
    duplicates: int = 0
    event_ids: list[str] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)
    costs: dict[str, Decimal] = field(default_factory=dict)


def ingest_payloads(project: Project, payloads: Sequence[Any]) -> BatchResult:
    """Validate wire events (``wire.parse_batch``) and store the valid ones with
    ``ingest_records``. One bad event never sinks its neighbours: an invalid one is
    rejected with the rule it breaks, and an event the database refuses (a
    ``DataError``) is isolated by halving the batch and rejected alone."""
    records, rejected = parse_batch(payloads)
    result = BatchResult(rejected=rejected)
    _ingest_isolating(project, records, result)
    result.rejected.sort(key=lambda rejection: rejection.index)
    valid = {index for index, _ in records} - {item.index for item in result.rejected}
    result.event_ids = [record.event_id for index, record in records if index in valid]
    return result


def _ingest_isolating(
    project: Project, records: list[tuple[int, UsageRecord]], result: BatchResult
) -> None:
    if not records:
        return
    try:
        stored = ingest_records(project, [record for _, record in records])
    except DataError as error:
        if len(records) > 1:
            middle = len(records) // 2
            _ingest_isolating(project, records[:middle], result)
            _ingest_isolating(project, records[middle:], result)
            return
        index, record = records[0]
        reason = str(error).strip().splitlines()[0][:200] if str(error).strip() else "DataError"
        logger.warning("Weckr: the database refused usage event %s: %s", record.event_id, reason)
        result.rejected.append(
            Rejection(index, record.event_id, f"The database refused this event: {reason}")
        )
        return
    result.created += stored.created
    result.duplicates += stored.duplicates
    result.costs.update(stored.costs)


def _after_commit(project: Project, user_keys: list[str], account_keys: list[str]) -> None:
    """Announce the committed usage (``signals.usage_ingested``); a receiver that
    raises is logged, and the ingest stands."""
    outcomes = usage_ingested.send_robust(
        sender=Project, project_id=str(project.pk), user_keys=user_keys, account_keys=account_keys
    )
    for receiver, outcome in outcomes:
        if isinstance(outcome, Exception):
            logger.error(
                "Weckr: follow-up work after ingest for project %s failed in %s: %s",
                project.pk,
                getattr(receiver, "__qualname__", receiver),
                outcome,
                exc_info=outcome,
            )


def _plan_names(project: Project, records: Iterable[UsageRecord]) -> dict[str | None, str | None]:
    """The stored plan name of each plan name the records give: the configured
    spelling ("Free" is stored as "free"), ``DEFAULT_PLAN`` for users with none."""
    names: dict[str | None, str | None] = {}
    for record in records:
        if record.user_id is not None and record.plan not in names:
            names[record.plan] = match_plan(project, record.plan).name
    return names


def _drop_holds(project: Project, records: Iterable[UsageRecord]) -> None:
    """Tell the cap store which budgets these stored calls added to (their costs are
    in the rollups now), and drop the holds of the reserved ones."""
    stored = [
        (key, record.reservation_id) for record in records for key in _budget_keys(project, record)
    ]
    if stored:
        cap_store().ingested(project, stored)


def _budget_keys(project: Project, record: UsageRecord) -> tuple[SpendKey, ...]:
    """The budgets a stored call counts against: its reservation's, or those of its
    user and account in the month of its timestamp."""
    if record.reservation_id is not None:
        return SpendKey.of_reservation(
            project, record.reservation_id, record.user_id, record.account_id
        )
    month = local_day(project, record.timestamp).replace(day=1)
    return SpendKey.of_call(project, record.user_id, record.account_id, month)


def price_record(record: UsageRecord) -> tuple[Decimal, bool]:
    cost = pricing.price_record(record)
    return cost.usd.quantize(_COST_PLACES), cost.priced


def _event(
    project: Project,
    record: UsageRecord,
    now: datetime,
    plan_names: dict[str | None, str | None],
) -> UsageEvent:
    cost, priced = price_record(record)
    timestamp = record.timestamp
    if timezone.is_naive(timestamp):
        timestamp = timezone.make_aware(timestamp, timezone.get_fixed_timezone(0))
    return UsageEvent(
        project=project,
        event_id=record.event_id,
        timestamp=timestamp,
        received_at=now,
        user_id=record.user_id,
        account_id=record.account_id,
        feature=record.feature,
        plan_name=plan_names.get(record.plan, record.plan),
        plan_revenue_usd=record.plan_revenue_usd,
        provider=record.provider or "unknown",
        model=record.model,
        requested_model=record.requested_model,
        input_tokens=record.input_tokens,
        output_tokens=record.output_tokens,
        cached_input_tokens=record.cached_input_tokens,
        cache_creation_tokens=record.cache_creation_tokens,
        reasoning_tokens=record.reasoning_tokens,
        cost_usd=cost,
        priced=priced,
        usage_reported=record.usage_reported,
        latency_ms=record.latency_ms,
        status=record.status,
        error_type=record.error_type,
        source=record.source,
        run_id=record.run_id,
        parent_run_id=record.parent_run_id,
        agent=record.agent,
        task=record.task,
        step=record.step,
        tags=list(record.tags),
    )


def _concrete_fields(model: type[Model]) -> list[Field[Any, Any]]:
    return [
        f
        for f in model._meta.concrete_fields
        if not (f.primary_key and getattr(f, "auto_created", False))
        and not (f.primary_key and f.get_internal_type() in ("AutoField", "BigAutoField"))
    ]


def _supports_returning_upsert(connection: BaseDatabaseWrapper) -> bool:
    if connection.vendor == "postgresql":
        return True
    if connection.vendor == "sqlite":
        import sqlite3

        return sqlite3.sqlite_version_info >= (3, 35, 0)
    return False


def _insert_new_events(connection: BaseDatabaseWrapper, events: list[UsageEvent]) -> set[str]:
    """Insert the events whose (project, event_id) is not taken; return their ids."""
    if not _supports_returning_upsert(connection):
        return _insert_one_by_one(events)
    fields = _concrete_fields(UsageEvent)
    quote = connection.ops.quote_name
    event_col = quote(_column(UsageEvent, "event_id"))
    project_col = quote(_column(UsageEvent, "project"))
    preparers = [(f.attname, _preparer(f, connection)) for f in fields]
    rows = [[prepare(getattr(event, name)) for name, prepare in preparers] for event in events]
    found = _insert_rows(
        connection,
        UsageEvent,
        [str(f.column) for f in fields],
        rows,
        order_by=event_col,
        on_conflict=f"ON CONFLICT ({project_col}, {event_col}) DO NOTHING RETURNING {event_col}",
    )
    return {str(event_id) for (event_id,) in found}


#: From this many rows on, PostgreSQL writes go through COPY and a staging table; below,
#: its three extra round trips cost more than the statement text they save.
_STAGING_MIN_ROWS = 50


def _insert_rows(
    connection: BaseDatabaseWrapper,
    model: type[Model],
    columns: list[str],
    rows: list[list[Any]],
    *,
    order_by: str,
    on_conflict: str,
) -> list[tuple[Any, ...]]:
    """``INSERT INTO model's table (columns) <rows> <on_conflict>``, in ``order_by``
    order (one lock order for every writer), and what it returns.

    Many rows on PostgreSQL are COPYed into a temporary staging table of this session
    and inserted from there in one statement of a fixed text: no statement of
    thousands of placeholders to build, parse and plan for every batch. A few rows
    (a single event), and every row elsewhere, go in multi-row ``VALUES`` statements.
    """
    quote = connection.ops.quote_name
    table = quote(model._meta.db_table)
    names = ", ".join(quote(column) for column in columns)
    if connection.vendor == "postgresql" and len(rows) >= _STAGING_MIN_ROWS:
        # Named after its columns too: a connection that outlives a migration adding
        # a column makes a new staging table rather than COPYing into a stale one.
        shape = hashlib.sha256(names.encode()).hexdigest()[:8]
        staging = quote(f"weckr_staging_{model._meta.db_table}_{shape}")
        return _insert_through_staging(
            connection, table, staging, names, rows, order_by, on_conflict
        )
    row = "(" + ", ".join(["%s"] * len(columns)) + ")"
    # Keep statements under SQLite's bound-parameter limit (32,766 since 3.32).
    per_statement = max(1, 30_000 // len(columns))
    found: list[tuple[Any, ...]] = []
    with connection.cursor() as cursor:
        for start in range(0, len(rows), per_statement):
            chunk = rows[start : start + per_statement]
            cursor.execute(
                f"INSERT INTO {table} ({names}) VALUES {', '.join([row] * len(chunk))} "
                f"{on_conflict}",
                [value for values in chunk for value in values],
            )
            if cursor.description:  # a RETURNING clause
                found.extend(cursor.fetchall())
    return found


def _insert_through_staging(
    connection: BaseDatabaseWrapper,
    table: str,
    staging: str,
    names: str,
    rows: list[list[Any]],
    order_by: str,
    on_conflict: str,
) -> list[tuple[Any, ...]]:
    import psycopg

    # The staging table is this session's, emptied at every commit and by the
    # statement that reads it: a second batch in one transaction starts empty too.
    raw = connection.connection
    with connection.wrap_database_errors, psycopg.Cursor(raw) as cursor:
        cursor.execute(
            f"CREATE TEMPORARY TABLE IF NOT EXISTS {staging} ON COMMIT DELETE ROWS "
            f"AS SELECT {names} FROM {table} WITH NO DATA"
        )
        with cursor.copy(f"COPY {staging} ({names}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
        cursor.execute(
            f"WITH staged AS (DELETE FROM {staging} RETURNING {names}) "
            f"INSERT INTO {table} ({names}) SELECT {names} FROM staged ORDER BY {order_by} "
            f"{on_conflict}"
        )
        return cursor.fetchall() if cursor.description else []


def _insert_one_by_one(events: list[UsageEvent]) -> set[str]:
    """Portable fallback for databases without ``ON CONFLICT ... RETURNING``."""
    new_ids: set[str] = set()
    for event in events:
        try:
            with transaction.atomic():
                event.save(force_insert=True)
        except IntegrityError:
            continue
        new_ids.add(event.event_id)
    return new_ids


def _column(model: type[Model], name: str) -> str:
    field = model._meta.get_field(name)
    assert isinstance(field, Field) and field.column is not None
    return field.column


@dataclass
class _Totals:
    counters: dict[str, Any]
    earliest: datetime
    latest: datetime
    plan_name: str | None = None
    plan_revenue_usd: Decimal | None = None
    provider: str = ""

    @classmethod
    def empty(cls, when: datetime) -> _Totals:
        counters: dict[str, Any] = dict.fromkeys(_COUNTERS, 0)
        counters["cost_usd"] = Decimal(0)
        return cls(counters=counters, earliest=when, latest=when)

    def add(self, event: UsageEvent) -> None:
        counters = self.counters
        counters["cost_usd"] += event.cost_usd
        counters["calls"] += 1
        counters["error_calls"] += event.status == UsageEvent.Status.ERROR
        counters["unpriced_calls"] += not event.priced
        for name in _TOKEN_COUNTERS:
            counters[name] += getattr(event, name)
        self.earliest = min(self.earliest, event.timestamp)
        if event.timestamp >= self.latest or self.plan_name is None:
            self.latest = max(self.latest, event.timestamp)
            if event.plan_name is not None:
                self.plan_name = event.plan_name
                self.plan_revenue_usd = event.plan_revenue_usd
            self.provider = event.provider


def _update_rollups(
    connection: BaseDatabaseWrapper, project: Project, events: Iterable[UsageEvent], now: datetime
) -> None:
    monthly: dict[tuple[str, date], _Totals] = {}
    accounts: dict[tuple[str, date], _Totals] = {}
    account_users: dict[tuple[date, str, str], _Totals] = {}
    account_days: dict[tuple[str, date, str], _Totals] = {}
    daily: dict[tuple[date, str, str, str], _Totals] = {}
    runs: dict[tuple[date, str], tuple[_Totals, str, str]] = {}
    for event in events:
        user_key = event.user_id or ANONYMOUS_KEY
        day = local_day(project, event.timestamp)
        month_key = (user_key, day.replace(day=1))
        monthly.setdefault(month_key, _Totals.empty(event.timestamp)).add(event)
        if event.account_id:
            account_key = (event.account_id, month_key[1])
            accounts.setdefault(account_key, _Totals.empty(event.timestamp)).add(event)
            member = (month_key[1], event.account_id, user_key)
            account_users.setdefault(member, _Totals.empty(event.timestamp)).add(event)
            account_day = (event.account_id, day, event.feature or "")
            account_days.setdefault(account_day, _Totals.empty(event.timestamp)).add(event)
        day_key = (day, user_key, event.feature or "", event.model)
        daily.setdefault(day_key, _Totals.empty(event.timestamp)).add(event)
        if event.run_id:
            run_key = (day.replace(day=1), event.run_id)
            totals, run_user, run_source = runs.get(run_key) or (
                _Totals.empty(event.timestamp),
                user_key,
                event.source,
            )
            totals.add(event)
            # The largest user and source of the run's calls, as GREATEST merges them.
            runs[run_key] = (totals, max(run_user, user_key), max(run_source, event.source))

    _upsert_add(
        connection,
        MonthlyUserSpend,
        key_fields=("project", "user_key", "month"),
        rows=[
            (
                {"project": project.pk, "user_key": user_key, "month": month},
                totals,
                {
                    "plan_name": totals.plan_name,
                    "plan_revenue_usd": totals.plan_revenue_usd,
                    "updated_at": now,
                },
            )
            for (user_key, month), totals in sorted(monthly.items())
        ],
        coalesce_fields=("plan_name", "plan_revenue_usd"),
        replace_fields=("updated_at",),
    )
    _upsert_add(
        connection,
        MonthlyAccountSpend,
        key_fields=("project", "account_key", "month"),
        rows=[
            (
                {"project": project.pk, "account_key": account, "month": month},
                totals,
                {"plan_name": totals.plan_name, "updated_at": now},
            )
            for (account, month), totals in sorted(accounts.items())
        ],
        coalesce_fields=("plan_name",),
        replace_fields=("updated_at",),
    )
    _upsert_add(
        connection,
        MonthlyAccountUserSpend,
        key_fields=("project", "month", "account_key", "user_key"),
        rows=[
            (
                {"project": project.pk, "month": month, "account_key": account, "user_key": user},
                totals,
                {},
            )
            for (month, account, user), totals in sorted(account_users.items())
        ],
    )
    _upsert_add(
        connection,
        DailyAccountUsage,
        key_fields=("project", "account_key", "day", "feature"),
        rows=[
            (
                {"project": project.pk, "account_key": account, "day": day, "feature": feature},
                totals,
                {},
            )
            for (account, day, feature), totals in sorted(account_days.items())
        ],
    )
    _upsert_add(
        connection,
        DailyUsage,
        key_fields=("project", "day", "user_key", "feature", "model"),
        rows=[
            (
                {
                    "project": project.pk,
                    "day": day,
                    "user_key": user_key,
                    "feature": feature,
                    "model": model,
                },
                totals,
                {"provider": totals.provider, "plan_name": totals.plan_name},
            )
            for (day, user_key, feature, model), totals in sorted(daily.items())
        ],
        coalesce_fields=("plan_name",),
        replace_fields=("provider",),
    )
    _upsert_add(
        connection,
        AgentRunUsage,
        key_fields=("project", "month", "run_id"),
        rows=[
            (
                {"project": project.pk, "month": month, "run_id": run_id},
                totals,
                {
                    "user_key": user_key,
                    "source": source,
                    "started_at": totals.earliest,
                    "ended_at": totals.latest,
                },
            )
            for (month, run_id), (totals, user_key, source) in sorted(runs.items())
        ],
        least_fields=("started_at",),
        greatest_fields=("user_key", "source", "ended_at"),
    )


def _upsert_add(
    connection: BaseDatabaseWrapper,
    model: type[Model],
    *,
    key_fields: tuple[str, ...],
    rows: list[tuple[dict[str, Any], _Totals, dict[str, Any]]],
    coalesce_fields: tuple[str, ...] = (),
    replace_fields: tuple[str, ...] = (),
    least_fields: tuple[str, ...] = (),
    greatest_fields: tuple[str, ...] = (),
) -> None:
    """``INSERT ... ON CONFLICT (key) DO UPDATE SET counter = counter + excluded.counter``,
    in key order, so concurrent writers take row locks in the same order. The other
    fields of a row that exists already take the new value where it is not null
    (``coalesce_fields``), always (``replace_fields``), or the smaller or larger of
    the two (``least_fields``, ``greatest_fields``)."""
    if not rows:
        return
    if not _supports_returning_upsert(connection):
        _update_one_by_one(model, key_fields, rows, least_fields, greatest_fields)
        return
    meta = model._meta
    quote = connection.ops.quote_name
    table = quote(meta.db_table)
    extra_names = list(rows[0][2])
    names = [*key_fields, *_COUNTERS, *extra_names]
    model_fields: list[Field[Any, Any]] = [meta.get_field(name) for name in names]  # type: ignore[misc]
    columns = [_column(model, name) for name in names]
    key_columns = [quote(column) for column in columns[: len(key_fields)]]
    assignments = []
    for name in _COUNTERS:
        column = quote(_column(model, name))
        assignments.append(f"{column} = {table}.{column} + excluded.{column}")
    for name in coalesce_fields:
        column = quote(_column(model, name))
        assignments.append(f"{column} = COALESCE(excluded.{column}, {table}.{column})")
    for name in replace_fields:
        column = quote(_column(model, name))
        assignments.append(f"{column} = excluded.{column}")
    # SQLite's two-argument MIN and MAX are PostgreSQL's LEAST and GREATEST.
    least, greatest = ("MIN", "MAX") if connection.vendor == "sqlite" else ("LEAST", "GREATEST")
    for function, merged in ((least, least_fields), (greatest, greatest_fields)):
        for name in merged:
            column = quote(_column(model, name))
            assignments.append(f"{column} = {function}({table}.{column}, excluded.{column})")
    preparers = [
        (name, _preparer(f, connection)) for name, f in zip(names, model_fields, strict=True)
    ]
    values = [{**keys, **totals.counters, **extra} for keys, totals, extra in rows]
    conflict_key = ", ".join(key_columns)
    _insert_rows(
        connection,
        model,
        columns,
        [[prepare(row[name]) for name, prepare in preparers] for row in values],
        order_by=conflict_key,
        on_conflict=f"ON CONFLICT ({conflict_key}) DO UPDATE SET {', '.join(assignments)}",
    )


#: Fields whose Python values psycopg writes to PostgreSQL as they are.
_NATIVE_ON_POSTGRESQL = frozenset(
    {
        "BigIntegerField",
        "BooleanField",
        "CharField",
        "DateField",
        "DateTimeField",
        "DecimalField",
        "ForeignKey",
        "IntegerField",
        "PositiveBigIntegerField",
        "PositiveIntegerField",
        "PositiveSmallIntegerField",
        "SmallIntegerField",
        "TextField",
        "UUIDField",
    }
)


def _preparer(f: Field[Any, Any], connection: BaseDatabaseWrapper) -> Callable[[Any], Any]:
    """How a value of ``f`` becomes a database parameter on ``connection``: Django's
    own preparation, except for the types psycopg writes to PostgreSQL unchanged
    (Django's per-value conversions were a third of a batch's time there)."""
    if connection.vendor == "postgresql" and f.get_internal_type() in _NATIVE_ON_POSTGRESQL:
        return _unchanged
    target = f.target_field if f.is_relation else f  # type: ignore[attr-defined]
    return functools.partial(target.get_db_prep_save, connection=connection)


def _unchanged(value: Any) -> Any:
    return value


def _update_one_by_one(
    model: type[Model],
    key_fields: tuple[str, ...],
    rows: list[tuple[dict[str, Any], _Totals, dict[str, Any]]],
    least_fields: tuple[str, ...],
    greatest_fields: tuple[str, ...],
) -> None:
    from django.db.models import F, Value
    from django.db.models.functions import Greatest, Least

    manager = model._default_manager
    for keys, totals, extra in rows:
        lookup = {(f"{name}_id" if name == "project" else name): v for name, v in keys.items()}
        try:
            with transaction.atomic():
                manager.create(**lookup, **totals.counters, **extra)
            continue
        except IntegrityError:
            pass
        updates: dict[str, Any] = {name: F(name) + totals.counters[name] for name in _COUNTERS}
        updates.update({name: value for name, value in extra.items() if value is not None})
        updates.update({name: Least(F(name), Value(extra[name])) for name in least_fields})
        updates.update({name: Greatest(F(name), Value(extra[name])) for name in greatest_fields})
        if manager.filter(**lookup).update(**updates) != 1:
            raise DatabaseError(f"Weckr: rollup row {lookup} vanished during ingest.")
