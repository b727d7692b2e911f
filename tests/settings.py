"""Settings for the test suite: SQLite and in-process Celery tasks by default."""

from __future__ import annotations

import os
from typing import Any

SECRET_KEY = "weckr-tests-only"
DEBUG = False
USE_TZ = True
TIME_ZONE = "UTC"
ALLOWED_HOSTS = ["*"]
ROOT_URLCONF = "tests.urls"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "weckr_django",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "weckr_django.middleware.WeckrMiddleware",
]

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]

DATABASES: dict[str, dict[str, Any]] = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("WECKR_TEST_SQLITE", ":memory:"),
        # As the example project runs SQLite: a file shared by several processes
        # wants WAL, immediate write transactions and a patient lock timeout.
        "OPTIONS": {
            "timeout": 20,
            "transaction_mode": "IMMEDIATE",
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        },
    }
}

if os.environ.get("WECKR_TEST_DATABASE_URL"):
    # The race harness and bench_caps on another database (postgres://...).
    from example_project.database_url import parse_database_url

    DATABASES = {"default": parse_database_url(os.environ["WECKR_TEST_DATABASE_URL"])}

STATIC_URL = "/static/"
EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"

CELERY_TASK_ALWAYS_EAGER = True
CELERY_TASK_EAGER_PROPAGATES = True
CELERY_TASK_STORE_EAGER_RESULT = False

# Configures the default Celery app from the CELERY_* settings above (lazily).
import tests.celery_app  # noqa: E402, F401

# In-process usage is ingested on the caller's thread in tests: deterministic, and no
# second SQLite connection writing while a test transaction is open.
WECKR: dict[str, object] = {"DELIVERY": "sync"}
# The race tests and bench_caps choose the cap store of their subprocesses.
if os.environ.get("WECKR_CAP_STORE"):
    WECKR["CAP_STORE"] = os.environ["WECKR_CAP_STORE"]
if os.environ.get("WECKR_INSTRUMENT"):
    WECKR["INSTRUMENT"] = True
if os.environ.get("WECKR_CAP_RESERVATION_TTL_SECONDS"):
    WECKR["CAP_RESERVATION_TTL_SECONDS"] = float(os.environ["WECKR_CAP_RESERVATION_TTL_SECONDS"])
