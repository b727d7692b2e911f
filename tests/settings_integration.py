"""Settings for the integration suite: this machine's PostgreSQL and Redis, a real
Celery worker. Run with ``pytest tests/integration --ds=tests.settings_integration``.

One token per test run names the test database, the Celery queue and the Redis key
prefix, so runs on a shared machine do not see each other. Worker subprocesses
inherit the token through the environment.
"""

from __future__ import annotations

import os
import uuid

from tests.settings import *  # noqa: F403

RUN_TOKEN = os.environ.setdefault("WECKR_IT_TOKEN", uuid.uuid4().hex[:12])
_REDIS = os.environ.get("WECKR_IT_REDIS_URL", "redis://127.0.0.1:6379/14")

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.postgresql",
        "HOST": os.environ.get("WECKR_IT_PGHOST", "127.0.0.1"),
        "PORT": os.environ.get("WECKR_IT_PGPORT", "5432"),
        "USER": os.environ.get("WECKR_IT_PGUSER", "postgres"),
        "PASSWORD": os.environ.get("WECKR_IT_PGPASSWORD", ""),
        # Created, migrated and dropped by tests/integration/conftest.py; worker
        # subprocesses find it through the inherited run token.
        "NAME": f"weckr_it_{RUN_TOKEN}",
    }
}

if os.environ.get("WECKR_IT_DATABASE_URL"):
    # A fault test's private PostgreSQL, for its worker and producer subprocesses.
    from example_project.database_url import parse_database_url

    DATABASES = {"default": parse_database_url(os.environ["WECKR_IT_DATABASE_URL"])}

CELERY_BROKER_URL = _REDIS
CELERY_RESULT_BACKEND = _REDIS
CELERY_TASK_ALWAYS_EAGER = False
CELERY_TASK_EAGER_PROPAGATES = False
CELERY_TASK_DEFAULT_QUEUE = f"weckr-it-{RUN_TOKEN}"
CELERY_BROKER_TRANSPORT_OPTIONS = {
    "global_keyprefix": f"weckr-it-{RUN_TOKEN}:",
    # As recommended (weckr.W005); the broker fault tests shorten it.
    "visibility_timeout": int(os.environ.get("WECKR_IT_VISIBILITY_TIMEOUT", "600")),
}
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_RESULT_EXPIRES = 600
CELERY_WORKER_HIJACK_ROOT_LOGGER = False

WECKR = {**WECKR, "DELIVERY": "auto"}  # noqa: F405
