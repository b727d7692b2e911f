"""``settings.WECKR``, read at access time so ``override_settings`` just works.

WECKR = {"DEFAULT_PROJECT": "Acme", "CAP_CACHE_SECONDS": 2, "DELIVERY": "auto"}
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from datetime import date
from typing import Any, Literal, cast

from django.conf import settings
from django.core.signals import setting_changed
from django.dispatch import receiver
from django.http import HttpRequest
from django.utils.module_loading import import_string

Delivery = Literal["auto", "celery", "thread", "sync"]
DELIVERY_MODES: tuple[Delivery, ...] = ("auto", "celery", "thread", "sync")

UserIdResolver = Callable[[HttpRequest], "str | None"]
PlanResolver = Callable[[HttpRequest], "str | None"]
AccountResolver = Callable[[HttpRequest], "str | int | None"]
SeatsResolver = Callable[[Any, str, date], "int | None"]
UserLabelResolver = Callable[[str], "str | None"]

DEFAULTS: Mapping[str, Any] = {
    "DEFAULT_PROJECT": None,
    "USER_ID_RESOLVER": "weckr_django.middleware.default_user_id",
    "PLAN_RESOLVER": "weckr_django.middleware.default_plan",
    "ACCOUNT_RESOLVER": "weckr_django.middleware.default_account_id",
    "SEATS_RESOLVER": None,
    "USER_LABEL_RESOLVER": None,
    # Admin keys for the providers' cost reports (manage.py weckr_reconcile); None:
    # the OPENAI_ADMIN_KEY / ANTHROPIC_ADMIN_KEY environment variables.
    "OPENAI_ADMIN_KEY": None,
    "ANTHROPIC_ADMIN_KEY": None,
    "CAP_CACHE_SECONDS": 2.0,
    "CAP_STORE": "database",
    "CAP_FAIL_CLOSED": False,
    "CAP_RESERVATION_TTL_SECONDS": 900,
    "DEFAULT_PLAN": None,
    "UNKNOWN_PLAN": "block",
    "DELIVERY": "auto",
    "SPOOL": "auto",
    "INSTRUMENT": False,
    "LOOP_WINDOW_SECONDS": 300,
    "LOOP_TOKEN_THRESHOLD": 50_000,
    "LOOP_COOLDOWN_SECONDS": 1800,
    "SLACK_ALLOWED_HOSTS": ["hooks.slack.com"],
    "API_RATE_LIMIT": "6000/min",
    "API_UNAUTHENTICATED_RATE_LIMIT": "60/min",
    "MAX_BATCH_EVENTS": 500,
    "EVENT_RETENTION_MONTHS": None,
    "ALERT_FROM_EMAIL": None,
    "SITE_URL": "http://localhost:8000",
}


class WeckrSettings:
    """Typed view of ``settings.WECKR``; unknown keys are ignored, missing ones defaulted."""

    def __init__(self) -> None:
        self._cache: dict[str, Any] = {}

    def _user_settings(self) -> Mapping[str, Any]:
        value = getattr(settings, "WECKR", None) or {}
        return value if isinstance(value, Mapping) else {}

    def get(self, name: str) -> Any:
        if name not in DEFAULTS:
            raise AttributeError(f"Unknown WECKR setting: {name!r}")
        if name not in self._cache:
            self._cache[name] = self._user_settings().get(name, DEFAULTS[name])
        return self._cache[name]

    def reload(self) -> None:
        self._cache.clear()

    @property
    def DEFAULT_PROJECT(self) -> str | None:
        value = self.get("DEFAULT_PROJECT")
        return None if value in (None, "") else str(value)

    @property
    def USER_ID_RESOLVER(self) -> str:
        return str(self.get("USER_ID_RESOLVER"))

    @property
    def PLAN_RESOLVER(self) -> str:
        return str(self.get("PLAN_RESOLVER"))

    def user_id_resolver(self) -> UserIdResolver:
        """The imported USER_ID_RESOLVER; raises ImportError when the path is wrong."""
        return cast(UserIdResolver, self._imported("USER_ID_RESOLVER"))

    def plan_resolver(self) -> PlanResolver:
        return cast(PlanResolver, self._imported("PLAN_RESOLVER"))

    def seats_resolver(self) -> SeatsResolver | None:
        """The imported SEATS_RESOLVER: (project, account id, month) -> the seats the
        account pays for, or None to count its active users; None when unset."""
        if self.get("SEATS_RESOLVER") in (None, ""):
            return None
        return cast(SeatsResolver, self._imported("SEATS_RESOLVER"))

    def user_label_resolver(self) -> UserLabelResolver | None:
        """The imported USER_LABEL_RESOLVER: user id -> what the dashboard shows for
        it, or None; None when unset (the auth user's username)."""
        if self.get("USER_LABEL_RESOLVER") in (None, ""):
            return None
        return cast(UserLabelResolver, self._imported("USER_LABEL_RESOLVER"))

    def admin_key(self, provider: str) -> str | None:
        """The admin key of ``provider`` ("openai" or "anthropic") for its cost
        report: the setting, else its environment variable. Never logged."""
        name = f"{provider.upper()}_ADMIN_KEY"
        value = self.get(name) or os.environ.get(name)
        return str(value) if value else None

    def account_resolver(self) -> AccountResolver:
        """The imported ACCOUNT_RESOLVER: request -> the paying account's id, or None."""
        return cast(AccountResolver, self._imported("ACCOUNT_RESOLVER"))

    def _imported(self, name: str) -> Any:
        key = f"{name}:imported"
        if key not in self._cache:
            value = self.get(name)
            self._cache[key] = import_string(value) if isinstance(value, str) else value
        return self._cache[key]

    @property
    def CAP_CACHE_SECONDS(self) -> float:
        return max(0.0, float(self.get("CAP_CACHE_SECONDS")))

    @property
    def CAP_STORE(self) -> str:
        """ "database" (the default), or a ``redis://`` URL shared by every server."""
        value = self.get("CAP_STORE")
        return "database" if value in (None, "") else str(value)

    @property
    def CAP_FAIL_CLOSED(self) -> bool:
        return bool(self.get("CAP_FAIL_CLOSED"))

    @property
    def CAP_RESERVATION_TTL_SECONDS(self) -> float:
        return max(1.0, float(self.get("CAP_RESERVATION_TTL_SECONDS")))

    @property
    def DEFAULT_PLAN(self) -> str | None:
        value = self.get("DEFAULT_PLAN")
        return None if value in (None, "") else str(value)

    @property
    def UNKNOWN_PLAN(self) -> str:
        """ "block", "allow", or the name of the plan whose cap applies instead."""
        value = self.get("UNKNOWN_PLAN")
        return "block" if value in (None, "") else str(value)

    @property
    def DELIVERY(self) -> Delivery:
        value = self.get("DELIVERY")
        if value not in DELIVERY_MODES:
            raise ValueError(f"WECKR['DELIVERY'] must be one of {DELIVERY_MODES}, not {value!r}.")
        return cast(Delivery, value)

    @property
    def INSTRUMENT(self) -> bool:
        """Patch the OpenAI, Anthropic and google-genai SDKs at start-up, so every
        call in the process is recorded (``weckr_core.instrument()``)."""
        return bool(self.get("INSTRUMENT"))

    @property
    def SPOOL(self) -> str | None:
        """Where ``DjangoBackend`` keeps events it cannot deliver yet (a SQLite file):
        a path; "auto" (the default) for ``weckr-spool.sqlite3`` beside a SQLite
        database file, else in a writable ``BASE_DIR``, else none (weckr.W008);
        None or False for none."""
        value = self.get("SPOOL")
        return None if value in (None, False, "") else str(value)

    @property
    def LOOP_WINDOW_SECONDS(self) -> int:
        return int(self.get("LOOP_WINDOW_SECONDS"))

    @property
    def LOOP_TOKEN_THRESHOLD(self) -> int:
        return int(self.get("LOOP_TOKEN_THRESHOLD"))

    @property
    def LOOP_COOLDOWN_SECONDS(self) -> int:
        return int(self.get("LOOP_COOLDOWN_SECONDS"))

    @property
    def SLACK_ALLOWED_HOSTS(self) -> list[str]:
        return [str(host).lower() for host in self.get("SLACK_ALLOWED_HOSTS")]

    @property
    def API_RATE_LIMIT(self) -> str | None:
        value = self.get("API_RATE_LIMIT")
        return None if value in (None, "") else str(value)

    @property
    def API_UNAUTHENTICATED_RATE_LIMIT(self) -> str | None:
        """Requests per client address with no API key or one that does not resolve
        (e.g. "60/min"), refused with 429 before the key is looked up; None: no limit.

        The address is DRF's: set ``REST_FRAMEWORK["NUM_PROXIES"]`` to the number of
        proxies in front of the server (0 when clients connect directly), or
        X-Forwarded-For, which any client can write, is trusted as DRF does.
        """
        value = self.get("API_UNAUTHENTICATED_RATE_LIMIT")
        return None if value in (None, "") else str(value)

    @property
    def MAX_BATCH_EVENTS(self) -> int:
        return int(self.get("MAX_BATCH_EVENTS"))

    @property
    def EVENT_RETENTION_MONTHS(self) -> int | None:
        """Calendar months of usage events kept (the current one included), or None
        to keep them all; the rollups keep every month either way."""
        value = self.get("EVENT_RETENTION_MONTHS")
        if value in (None, "", 0):
            return None
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(
                f"WECKR['EVENT_RETENTION_MONTHS'] must be a whole number of months (1 or "
                f"more) or None, not {value!r}."
            )
        return value

    @property
    def ALERT_FROM_EMAIL(self) -> str | None:
        value = self.get("ALERT_FROM_EMAIL")
        return None if not value else str(value)

    @property
    def SITE_URL(self) -> str:
        """Public base URL of this Weckr server, for links in alerts and tools."""
        return str(self.get("SITE_URL")).rstrip("/")


weckr_settings = WeckrSettings()


def celery_broker_configured() -> bool:
    """True when tasks go to a real broker: a broker URL is configured (Django settings
    or the current Celery app) and tasks are not run eagerly."""
    broker = getattr(settings, "CELERY_BROKER_URL", None)
    eager = getattr(settings, "CELERY_TASK_ALWAYS_EAGER", None)
    if broker is None or eager is None:
        # Not in Django's settings (the CELERY_ namespace): the Celery app's own.
        try:
            from celery import current_app
        except ImportError:  # pragma: no cover - celery is an optional dependency
            return bool(broker) and not eager
        conf = current_app.conf
        broker = conf.get("broker_url") if broker is None else broker
        eager = conf.get("task_always_eager") if eager is None else eager
    return bool(broker) and not eager


def effective_delivery() -> Literal["celery", "thread", "sync"]:
    mode = weckr_settings.DELIVERY
    if mode == "auto":
        return "celery" if celery_broker_configured() else "thread"
    return mode


@receiver(setting_changed)
def _reload_weckr_settings(*, setting: str, **kwargs: Any) -> None:
    if setting in ("WECKR", "CELERY_BROKER_URL", "CELERY_TASK_ALWAYS_EAGER"):
        weckr_settings.reload()
