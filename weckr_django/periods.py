"""Calendar periods in a project's timezone: budgets and margins are per month there."""

from __future__ import annotations

import functools
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from weckr_django.conf import weckr_settings

if TYPE_CHECKING:
    from weckr_django.models import Project


@functools.lru_cache(maxsize=256)
def _zone(name: str) -> tzinfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        # A bad name in the admin must not stop ingestion; months fall back to UTC.
        return UTC


def project_zone(project: Project) -> tzinfo:
    return _zone(project.timezone or "UTC")


def local_day(project: Project, when: datetime) -> date:
    """The calendar day of ``when`` in the project's timezone."""
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.astimezone(project_zone(project)).date()


def month_start(project: Project, when: datetime | None = None) -> date:
    """First day of the calendar month (project timezone) that holds ``when`` (now)."""
    return local_day(project, when or datetime.now(UTC)).replace(day=1)


def next_month(month: date) -> date:
    return date(month.year + 1, 1, 1) if month.month == 12 else date(month.year, month.month + 1, 1)


def previous_month(month: date) -> date:
    return date(month.year - 1, 12, 1) if month.month == 1 else date(month.year, month.month - 1, 1)


class BadMonth(ValueError):
    """A month that is not ``YYYY-MM``."""


def parse_month(project: Project, value: str | None) -> date:
    """``YYYY-MM`` as the first day of that month; the project's current month when
    not given. Raises ``BadMonth`` with a message for anything else, and for a month
    that has not begun."""
    current = month_start(project)
    if not value:
        return current
    year, dash, month = value.strip().partition("-")
    well_formed = dash and len(year) == 4 and len(month) == 2
    # isascii: "²" is a digit to isdigit() and not to int().
    if not (well_formed and (year + month).isascii() and (year + month).isdigit()):
        raise BadMonth(f"month must be YYYY-MM, such as 2026-11, not {value!r}.")
    if not 1 <= int(month) <= 12 or int(year) < 2000:
        raise BadMonth(f"month must be YYYY-MM, such as 2026-11, not {value!r}.")
    chosen = date(int(year), int(month), 1)
    if chosen > current:
        raise BadMonth(f"month {value.strip()} has not begun (this month is {current:%Y-%m}).")
    return chosen


def last_shown_day(project: Project, month: date) -> date:
    """The last day of ``month`` that has begun: today in the current month, else the
    month's last day (charts of a month end there)."""
    today = local_day(project, datetime.now(UTC))
    return min(today, next_month(month) - timedelta(days=1))


def month_bounds(project: Project, month: date) -> tuple[datetime, datetime]:
    """Aware datetimes ``[start, end)`` of the month holding ``month``, project timezone."""
    zone = project_zone(project)
    first = month.replace(day=1)
    return (
        datetime.combine(first, time.min, tzinfo=zone),
        datetime.combine(next_month(first), time.min, tzinfo=zone),
    )


def day_bounds(project: Project, day: date) -> tuple[datetime, datetime]:
    """Aware datetimes ``[start, end)`` of one calendar day, project timezone."""
    zone = project_zone(project)
    return (
        datetime.combine(day, time.min, tzinfo=zone),
        datetime.combine(day + timedelta(days=1), time.min, tzinfo=zone),
    )


def event_cutoff(now: datetime | None = None) -> datetime | None:
    """The oldest moment whose events are kept, or None when all are.

    The first day of the earliest kept month, in UTC, less one day: whatever a
    project's timezone, its kept months are whole (time zones are at most 14 hours
    from UTC).
    """
    months = weckr_settings.EVENT_RETENTION_MONTHS
    if months is None:
        return None
    now = now or datetime.now(UTC)
    year, month = now.year, now.month - (months - 1)
    while month < 1:
        year, month = year - 1, month + 12
    return datetime(year, month, 1, tzinfo=UTC) - timedelta(days=1)
