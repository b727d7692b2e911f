"""``DATABASE_URL`` to a Django ``DATABASES`` entry, without an extra dependency.

sqlite:///relative/path.sqlite3    sqlite:////absolute/path.sqlite3    sqlite://:memory:
postgres://user:password@host:5432/name    mysql://user:password@host/name
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

ENGINES = {
    "sqlite": "django.db.backends.sqlite3",
    "postgres": "django.db.backends.postgresql",
    "postgresql": "django.db.backends.postgresql",
    "pgsql": "django.db.backends.postgresql",
    "mysql": "django.db.backends.mysql",
    "oracle": "django.db.backends.oracle",
}


def parse_database_url(url: str) -> dict[str, Any]:
    parts = urlsplit(url)
    scheme = parts.scheme.split("+", 1)[0].lower()
    if scheme not in ENGINES:
        raise ValueError(
            f"DATABASE_URL scheme {parts.scheme!r} is not supported; use one of "
            f"{', '.join(sorted(ENGINES))}."
        )
    if scheme == "sqlite":
        # sqlite:///db.sqlite3 is relative, sqlite:////tmp/db.sqlite3 absolute.
        name = unquote(parts.path[1:] if parts.path.startswith("/") else parts.path)
        if parts.netloc == ":memory:" or name in ("", ":memory:"):
            name = ":memory:"
        return {"ENGINE": ENGINES[scheme], "NAME": name}
    config: dict[str, Any] = {
        "ENGINE": ENGINES[scheme],
        "NAME": unquote(parts.path.lstrip("/")),
        "USER": unquote(parts.username or ""),
        "PASSWORD": unquote(parts.password or ""),
        "HOST": parts.hostname or "",
        "PORT": str(parts.port or ""),
    }
    options = dict(parse_qsl(parts.query))
    if options:
        config["OPTIONS"] = options
    return config
