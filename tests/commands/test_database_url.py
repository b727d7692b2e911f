from __future__ import annotations

import pytest

from example_project.database_url import parse_database_url


def test_sqlite_urls() -> None:
    assert parse_database_url("sqlite:////tmp/demo.sqlite3") == {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": "/tmp/demo.sqlite3",
    }
    assert parse_database_url("sqlite:///db.sqlite3")["NAME"] == "db.sqlite3"
    assert parse_database_url("sqlite://:memory:")["NAME"] == ":memory:"


def test_server_urls() -> None:
    config = parse_database_url("postgres://weckr:s%40cret@db.internal:5433/app?sslmode=require")

    assert config == {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": "app",
        "USER": "weckr",
        "PASSWORD": "s@cret",
        "HOST": "db.internal",
        "PORT": "5433",
        "OPTIONS": {"sslmode": "require"},
    }
    assert parse_database_url("postgresql+psycopg://u@h/n")["ENGINE"].endswith("postgresql")
    assert parse_database_url("mysql://u:p@h/n")["ENGINE"] == "django.db.backends.mysql"


def test_an_unknown_scheme_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="scheme 'redis' is not supported"):
        parse_database_url("redis://localhost/0")
