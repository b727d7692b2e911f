"""A connection of the test's own to the integration suite's test database."""

from __future__ import annotations

import psycopg
from django.conf import settings


def open_test_database() -> psycopg.Connection[tuple[object, ...]]:
    """Autocommit, beside Django's: sees what is committed, and can end sessions."""
    db = settings.DATABASES["default"]
    return psycopg.connect(
        host=str(db["HOST"]),
        port=str(db["PORT"]),
        user=str(db["USER"]),
        password=str(db["PASSWORD"]) if db.get("PASSWORD") else None,
        dbname=str(db["NAME"]),
        autocommit=True,
    )
