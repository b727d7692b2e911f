"""Settings of the example SaaS.

SQLite next to this file by default; ``DATABASE_URL`` selects any database
(``postgres://...``, ``sqlite:///...``). ``CELERY_BROKER_URL`` sends Weckr's tasks to
a real broker; without it they run in-process.
"""

from __future__ import annotations

import os
from pathlib import Path

from example_project.database_url import parse_database_url

BASE_DIR = Path(__file__).resolve().parent

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "weckr-example-project-not-for-production")
# Off unless asked: ``make demo`` asks (DJANGO_DEBUG=1); ``make serve`` does not.
DEBUG = os.environ.get("DJANGO_DEBUG", "0") == "1"
ALLOWED_HOSTS = [
    host.strip()
    for host in os.environ.get("DJANGO_ALLOWED_HOSTS", "localhost,127.0.0.1,[::1]").split(",")
    if host.strip()
]
ROOT_URLCONF = "example_project.urls"
WSGI_APPLICATION = "example_project.wsgi.application"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
USE_TZ = True
TIME_ZONE = "UTC"

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "weckr_django",
    "example_project.saas",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    # Serves collectstatic's files (the admin's, the dashboard's) without DEBUG.
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    # After AuthenticationMiddleware: attributes every LLM call to request.user and
    # the plan on request.user.profile.plan.
    "weckr_django.middleware.WeckrMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
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

DATABASES = {
    "default": parse_database_url(
        os.environ.get("DATABASE_URL") or f"sqlite:///{BASE_DIR / 'db.sqlite3'}"
    )
}
# Persistent connections: a new PostgreSQL connection per request costs more than
# the request (/check, /log). Checked before reuse, so a restarted database costs
# one failed request per thread, not a broken worker.
DATABASES["default"]["CONN_MAX_AGE"] = int(os.environ.get("DJANGO_CONN_MAX_AGE", "600"))
DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
if (
    DATABASES["default"]["ENGINE"].endswith("sqlite3")
    and DATABASES["default"]["NAME"] != ":memory:"
):
    # Several threads and processes write to the file (request threads reserve
    # against caps, the recorder ingests): WAL lets readers go on meanwhile, a commit
    # costs no fsync, and write transactions queue for the lock instead of failing.
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        {
            "timeout": 20,
            "transaction_mode": "IMMEDIATE",
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        }
    )

STATIC_URL = "/static/"
STATIC_ROOT = os.environ.get("DJANGO_STATIC_ROOT") or str(BASE_DIR / "staticfiles")
LOGIN_URL = "/admin/login/"
EMAIL_BACKEND = "django.core.mail.backends.console.EmailBackend"

CELERY_BROKER_URL = os.environ.get("CELERY_BROKER_URL") or None
# One queue per deployment when several share a broker.
CELERY_TASK_DEFAULT_QUEUE = os.environ.get("CELERY_TASK_DEFAULT_QUEUE", "celery")
CELERY_TASK_ALWAYS_EAGER = CELERY_BROKER_URL is None
CELERY_TASK_EAGER_PROPAGATES = True
# At-least-once delivery (Weckr's tasks are acknowledged after they run): on Redis or
# SQS the tasks of a killed worker come back after 10 minutes, not the default hour;
# a worker process holds only the task it runs; a task cut off from the broker stops
# and is redelivered rather than running on unacknowledged.
CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": 600}
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_WORKER_CANCEL_LONG_RUNNING_TASKS_ON_CONNECTION_LOSS = True

WECKR = {
    "DEFAULT_PROJECT": os.environ.get("WECKR_PROJECT", "Demo SaaS"),
    # Signed-in users without a profile (the admin, say) are on the free plan.
    "DEFAULT_PLAN": "free",
    # Requests per minute per API key ("6000/min" by default); empty: no limit.
    "API_RATE_LIMIT": os.environ.get("WECKR_API_RATE_LIMIT", "6000/min") or None,
}

# The app's own LLM endpoint. By default the fake OpenAI-compatible one this project
# serves at /fake-llm/v1, called in-process so the demo needs no network.
LLM_BASE_URL = os.environ.get("LLM_BASE_URL", "")
LLM_API_KEY = os.environ.get("OPENAI_API_KEY", "demo")

#: Monthly price per plan, the same figures the demo puts in the Weckr admin.
PLAN_PRICES = {"free": 0, "pro": 29, "team": 99}
