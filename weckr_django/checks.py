"""System checks for what users get wrong when adding Weckr to a project."""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.checks import CheckMessage, Error, Tags, Warning, register
from django.core.exceptions import ImproperlyConfigured
from django.db import connections, router
from django.utils.module_loading import import_string

from weckr_django.conf import (
    DELIVERY_MODES,
    celery_broker_configured,
    effective_delivery,
    weckr_settings,
)

MIDDLEWARE_PATH = "weckr_django.middleware.WeckrMiddleware"
AUTH_MIDDLEWARE = "django.contrib.auth.middleware.AuthenticationMiddleware"


def check_middleware(app_configs: Sequence[Any] | None = None, **kwargs: Any) -> list[CheckMessage]:
    middleware = list(getattr(settings, "MIDDLEWARE", None) or [])
    if MIDDLEWARE_PATH not in middleware:
        return [
            Error(
                f"{MIDDLEWARE_PATH} is not in MIDDLEWARE, so LLM calls made in requests are "
                "not attributed to the user and plan.",
                hint=f"Add {MIDDLEWARE_PATH!r} to MIDDLEWARE, after {AUTH_MIDDLEWARE!r}.",
                id="weckr.E001",
            )
        ]
    if AUTH_MIDDLEWARE in middleware and middleware.index(MIDDLEWARE_PATH) < middleware.index(
        AUTH_MIDDLEWARE
    ):
        return [
            Error(
                f"{MIDDLEWARE_PATH} comes before {AUTH_MIDDLEWARE}, so request.user is not set "
                "yet and every call is attributed to no user.",
                hint=f"Move {MIDDLEWARE_PATH!r} after {AUTH_MIDDLEWARE!r} in MIDDLEWARE.",
                id="weckr.E001",
            )
        ]
    return []


def check_settings(app_configs: Sequence[Any] | None = None, **kwargs: Any) -> list[CheckMessage]:
    errors: list[CheckMessage] = []
    raw = getattr(settings, "WECKR", None)
    if raw is not None and not isinstance(raw, dict):
        return [
            Error(
                f"settings.WECKR must be a dict, not {type(raw).__name__}.",
                hint='For example WECKR = {"DEFAULT_PROJECT": "My SaaS"}.',
                id="weckr.E004",
            )
        ]
    for name in (
        "USER_ID_RESOLVER",
        "PLAN_RESOLVER",
        "ACCOUNT_RESOLVER",
        "SEATS_RESOLVER",
        "USER_LABEL_RESOLVER",
    ):
        path = weckr_settings.get(name)
        if callable(path) or path in (None, ""):  # the last two are optional
            continue
        try:
            resolver = import_string(path)
        except ImportError as error:
            errors.append(
                Error(
                    f"WECKR[{name!r}] = {path!r} does not import: {error}",
                    hint="Give the dotted path of a function that takes the request, "
                    "such as 'myapp.weckr.user_id'.",
                    id="weckr.E002",
                )
            )
            continue
        if not callable(resolver):
            errors.append(
                Error(
                    f"WECKR[{name!r}] = {path!r} is not callable.",
                    hint="Point it at a function that takes the request.",
                    id="weckr.E002",
                )
            )
    delivery = weckr_settings.get("DELIVERY")
    if delivery not in DELIVERY_MODES:
        errors.append(
            Error(
                f"WECKR['DELIVERY'] = {delivery!r} is not a delivery mode.",
                hint=f"Use one of {', '.join(DELIVERY_MODES)}.",
                id="weckr.E005",
            )
        )
    elif delivery == "celery" and not celery_broker_configured():
        errors.append(
            Error(
                "WECKR['DELIVERY'] is 'celery' but no Celery broker is configured (or tasks "
                "run eagerly), so usage would never leave the process.",
                hint="Set CELERY_BROKER_URL and load it into your Celery app "
                "(app.config_from_object('django.conf:settings', namespace='CELERY')), "
                "or use DELIVERY 'auto'.",
                id="weckr.E003",
            )
        )
    try:
        weckr_settings.EVENT_RETENTION_MONTHS  # noqa: B018 - validates the value
    except ValueError as error:
        errors.append(
            Error(
                str(error),
                hint="For example 13 (this month and the twelve before it), or None.",
                id="weckr.E010",
            )
        )
    return errors


def check_cap_settings(
    app_configs: Sequence[Any] | None = None, **kwargs: Any
) -> list[CheckMessage]:
    errors: list[CheckMessage] = []
    store = weckr_settings.get("CAP_STORE") or "database"
    if not isinstance(store, str) or not (
        store == "database" or store.startswith(("redis://", "rediss://", "unix://"))
    ):
        errors.append(
            Error(
                f"WECKR['CAP_STORE'] = {store!r} is not a cap store.",
                hint="Use 'database' (the default) or a Redis URL such as "
                "'redis://localhost:6379/0'.",
                id="weckr.E007",
            )
        )
    elif store != "database" and importlib.util.find_spec("redis") is None:
        errors.append(
            Error(
                "WECKR['CAP_STORE'] is a Redis URL but the redis package is not installed.",
                hint='pip install "weckr-django[redis]"',
                id="weckr.E007",
            )
        )
    for name in ("UNKNOWN_PLAN", "DEFAULT_PLAN"):
        value = weckr_settings.get(name)
        if value is not None and not isinstance(value, str):
            errors.append(
                Error(
                    f"WECKR[{name!r}] = {value!r} must be a string.",
                    hint="UNKNOWN_PLAN: 'block', 'allow' or a plan name; DEFAULT_PLAN: a "
                    "plan name or None.",
                    id="weckr.E008",
                )
            )
    return errors


#: Brokers that redeliver an unacknowledged message only after ``visibility_timeout``.
REDIS_BROKERS = ("redis", "rediss", "redis+socket", "sentinel")
VISIBILITY_TIMEOUT_BROKERS = (*REDIS_BROKERS, "sqs")
#: The longest countdown a Weckr task is retried with (dispatch_alert, 30 s * 2**4).
LONGEST_RETRY_COUNTDOWN = 480
#: A visibility timeout in this range (seconds) redelivers the tasks of a killed
#: worker within minutes, yet outlasts Weckr's retry countdowns: a countdown longer
#: than the timeout makes the broker hand the waiting task to a second worker.
VISIBILITY_TIMEOUT_RANGE = (600, 900)


def _celery_setting(name: str, default: Any = None) -> Any:
    """A Celery setting as the worker sees it: ``CELERY_<NAME>`` in Django settings
    (the ``namespace="CELERY"`` set-up), else the current Celery app's."""
    value = getattr(settings, f"CELERY_{name.upper()}", None)
    if value is not None:
        return value
    try:
        from celery import current_app
    except ImportError:  # pragma: no cover - celery is an optional dependency
        return default
    value = current_app.conf.get(name)
    return default if value is None else value


def _broker_transport() -> str:
    """The scheme of the (first) broker URL: "redis", "amqp", "sqs"..."""
    url = _celery_setting("broker_url", "")
    if isinstance(url, list | tuple):
        url = url[0] if url else ""
    return str(url).split(";")[0].partition("://")[0].lower()


def check_celery_delivery(
    app_configs: Sequence[Any] | None = None, **kwargs: Any
) -> list[CheckMessage]:
    """Broker settings that Weckr's tasks (``acks_late``, ``reject_on_worker_lost``)
    rely on for at-least-once delivery and that only the project's Celery app sets."""
    if not celery_broker_configured():
        return []
    messages: list[CheckMessage] = []
    transport = _broker_transport()
    if transport in VISIBILITY_TIMEOUT_BROKERS:
        problem = _visibility_timeout_problem(transport)
        if problem:
            low = VISIBILITY_TIMEOUT_RANGE[0]
            messages.append(
                Warning(
                    problem,
                    hint=f'Set CELERY_BROKER_TRANSPORT_OPTIONS = {{"visibility_timeout": {low}}} '
                    "(seconds). If your own tasks run or wait (countdown, ETA) longer, "
                    "set that instead and silence weckr.W005.",
                    id="weckr.W005",
                )
            )
    prefetch = _celery_setting("worker_prefetch_multiplier", 4)
    no_prefetch = transport in REDIS_BROKERS and _celery_setting("worker_disable_prefetch")
    if isinstance(prefetch, int) and prefetch > 1 and not no_prefetch:
        messages.append(
            Warning(
                f"worker_prefetch_multiplier is {prefetch}: each worker process reserves "
                "that many of Weckr's tasks, which are acknowledged only after they run; "
                "they wait behind the task it runs while other workers idle, and all wait "
                "for redelivery when the worker dies.",
                hint="Set CELERY_WORKER_PREFETCH_MULTIPLIER = 1.",
                id="weckr.W006",
            )
        )
    return messages


def _visibility_timeout_problem(transport: str) -> str | None:
    options = _celery_setting("broker_transport_options", {}) or {}
    timeout = options.get("visibility_timeout") if isinstance(options, dict) else None
    if timeout is None:
        default = "30 minutes" if transport == "sqs" else "an hour"
        return (
            f"The {transport} broker has no visibility_timeout in broker_transport_options: "
            f"the tasks of a worker that dies are redelivered only after the default, "
            f"{default}."
        )
    try:
        seconds = float(timeout)
    except (TypeError, ValueError):
        return f"broker_transport_options visibility_timeout = {timeout!r} is not a number."
    low, high = VISIBILITY_TIMEOUT_RANGE
    if seconds < low:
        return (
            f"broker_transport_options visibility_timeout = {timeout!r} s is shorter than "
            f"{low} s: Weckr retries tasks with countdowns up to {LONGEST_RETRY_COUNTDOWN} s, "
            "which the broker would hand to a second worker, so they would run twice."
        )
    if seconds > high:
        return (
            f"broker_transport_options visibility_timeout = {timeout!r} s: the tasks of a "
            "worker that dies wait that long to be redelivered."
        )
    return None


def check_spool(app_configs: Sequence[Any] | None = None, **kwargs: Any) -> list[CheckMessage]:
    """The spool ``DjangoBackend`` keeps usage in while the database or broker is
    away: one it can write, or, under "auto", one at all (not with "sync" delivery,
    which has none)."""
    from weckr_django.backend import spool_path

    setting = weckr_settings.SPOOL
    if setting is None or weckr_settings.get("DELIVERY") not in DELIVERY_MODES:
        return []
    if effective_delivery() == "sync":
        return []
    path = spool_path()
    if path is None:
        return [
            Warning(
                "WECKR['SPOOL'] is 'auto' but the database is not a SQLite file and "
                "BASE_DIR is not set or not writable, so there is no spool: usage the "
                "database or broker cannot take during an outage is lost.",
                hint="Set WECKR['SPOOL'] to a file on a writable, persistent volume, such as "
                "'/var/lib/myapp/weckr-spool.sqlite3', or to None to run without one.",
                id="weckr.W008",
            )
        ]
    problem = _spool_problem(path)
    if problem is None:
        return []
    return [
        Warning(
            f"The Weckr spool {str(path)!r} (WECKR['SPOOL'] = {setting!r}) cannot be "
            f"used: {problem}. Usage the database or broker cannot take during an "
            "outage would be lost.",
            hint="Create the directory and let the app's user write there, or point "
            "WECKR['SPOOL'] at a file on a writable volume.",
            id="weckr.W007",
        )
    ]


def _spool_problem(path: Path) -> str | None:
    """Why a spool file cannot be opened at ``path`` by this process, if it cannot.
    (The spool creates missing directories, and SQLite its -wal and -shm files
    beside the file.)"""
    if path.is_dir():
        return "it is a directory; give the path of a file in it"
    directory = path.parent
    existing = directory
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return f"{str(existing)!r} is not a directory"
    if not os.access(existing, os.W_OK | os.X_OK):
        if existing == directory:
            return f"the directory {str(directory)!r} is not writable by this process"
        return (
            f"the directory {str(directory)!r} does not exist and cannot be created "
            f"({str(existing)!r} is not writable by this process)"
        )
    if path.exists() and not os.access(path, os.R_OK | os.W_OK):
        return "the file is not writable by this process"
    return None


def check_projects_and_plans(
    app_configs: Sequence[Any] | None = None, **kwargs: Any
) -> list[CheckMessage]:
    """What the database says about the set-up: run by every ``manage.py check``
    (and ``runserver``), skipped while the database cannot be read yet."""
    from weckr_django.models import Project

    try:
        connection = connections[router.db_for_read(Project)]
        if Project._meta.db_table not in connection.introspection.table_names():
            return []
        return _project_messages() + _plan_messages()
    except Exception:
        # Not created, not migrated, not reachable, or closed to this code (tests):
        # checked on a later run rather than failing this one.
        return []


def _project_messages() -> list[CheckMessage]:
    from weckr_django.backend import resolve_default_project
    from weckr_django.models import Project

    if weckr_settings.DEFAULT_PROJECT is not None:
        try:
            resolve_default_project(create=False)
        except ImproperlyConfigured as error:
            return [
                Error(
                    f"{error} In-process caps are not enforced and usage is not recorded.",
                    hint="Create the project, or fix WECKR['DEFAULT_PROJECT'].",
                    id="weckr.E006",
                )
            ]
        return []
    count = Project.objects.count()
    if count <= 1:
        # None yet: the first in-process call creates "Default". One: it is used.
        return []
    return [
        Warning(
            f"There are {count} Weckr projects and WECKR['DEFAULT_PROJECT'] is not set, so "
            "usage recorded inside this Django process goes to the project named "
            "'Default', or fails when there is none.",
            hint="Set WECKR = {'DEFAULT_PROJECT': '<project id or name>'}.",
            id="weckr.W001",
        )
    ]


def _plan_messages() -> list[CheckMessage]:
    from weckr_django.models import Project
    from weckr_django.plans import configured_plans, normalized

    messages: list[CheckMessage] = []
    unknown_rule = weckr_settings.UNKNOWN_PLAN
    default_plan = weckr_settings.DEFAULT_PLAN
    for project in Project.objects.order_by("name"):
        plans = configured_plans(project)
        if not plans:
            messages.append(
                Warning(
                    f"Weckr project {project.name!r} has no plans, so no call is capped.",
                    hint="Add your plans and their monthly AI caps in the admin, on the "
                    "dashboard's Settings page or with `manage.py weckr_plan set`.",
                    id="weckr.W003",
                )
            )
            continue
        if unknown_rule not in ("block", "allow") and normalized(unknown_rule) not in plans:
            messages.append(
                Error(
                    f"WECKR['UNKNOWN_PLAN'] = {unknown_rule!r} names no plan of project "
                    f"{project.name!r}, so calls on unknown plans are refused.",
                    hint=f"Use 'block', 'allow' or one of: {', '.join(sorted(plans))}.",
                    id="weckr.E009",
                )
            )
        if default_plan is not None and normalized(default_plan) not in plans:
            messages.append(
                Warning(
                    f"WECKR['DEFAULT_PLAN'] = {default_plan!r} names no plan of project "
                    f"{project.name!r}: users with no plan fall under WECKR['UNKNOWN_PLAN'].",
                    hint=f"Use one of: {', '.join(sorted(plans))}.",
                    id="weckr.W004",
                )
            )
    return messages


def register_checks() -> None:
    register(Tags.compatibility)(check_middleware)
    register(Tags.compatibility)(check_settings)
    register(Tags.compatibility)(check_cap_settings)
    register(Tags.compatibility)(check_celery_delivery)
    register(Tags.compatibility)(check_spool)
    register(Tags.compatibility)(check_projects_and_plans)
