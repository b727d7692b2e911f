"""System checks for what users get wrong when adding Weckr to a project."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from django.conf import settings
from django.core.checks import CheckMessage, Error, Tags, Warning, register
from django.core.exceptions import ImproperlyConfigured
from django.db import DatabaseError, connections, router
from django.utils.module_loading import import_string

from weckr_django.conf import DELIVERY_MODES, celery_broker_configured, weckr_settings

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
    for name in ("USER_ID_RESOLVER", "PLAN_RESOLVER"):
        path = weckr_settings.get(name)
        if callable(path):
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
    return errors


def check_default_project(
    app_configs: Sequence[Any] | None = None, databases: Sequence[str] | None = None, **kwargs: Any
) -> list[CheckMessage]:
    from weckr_django.backend import resolve_default_project
    from weckr_django.models import Project

    alias = router.db_for_read(Project)
    # Like Django's own database checks: only when asked (migrate, check --database),
    # and never failing on a database that does not exist yet.
    if databases is None or alias not in databases:
        return []
    try:
        connection = connections[alias]
        if Project._meta.db_table not in connection.introspection.table_names():
            return []
        if weckr_settings.DEFAULT_PROJECT is not None:
            try:
                resolve_default_project(create=False)
            except ImproperlyConfigured as error:
                return [
                    Warning(
                        str(error),
                        hint="Create the project, or fix WECKR['DEFAULT_PROJECT'].",
                        id="weckr.W002",
                    )
                ]
            return []
        count = Project.objects.using(alias).count()
    except DatabaseError:
        return []
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


def register_checks() -> None:
    register(Tags.compatibility)(check_middleware)
    register(Tags.compatibility)(check_settings)
    register(Tags.database)(check_default_project)
