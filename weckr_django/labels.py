"""Display names for user ids, looked up when a page is drawn and never stored or sent.

Weckr keeps the opaque id your app passes (by default the ``AUTH_USER_MODEL``'s
primary key). ``WECKR["USER_LABEL_RESOLVER"]`` names a function taking one user id
and returning what the dashboard shows for it (a name, an e-mail) or None. Unset,
an id that is the primary key of one of your users shows as that user's
``get_username()``, with a link to the user's admin page.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.urls import NoReverseMatch, reverse

from weckr_django.conf import weckr_settings
from weckr_django.models import ANONYMOUS_KEY, user_key_label

logger = logging.getLogger("weckr_django")


@dataclass(frozen=True, slots=True)
class UserLabel:
    """How to show one user id: ``name`` beside the id when one is known, and the
    user's admin page when there is one."""

    user_key: str
    name: str | None = None
    admin_url: str | None = None

    @property
    def id_text(self) -> str:
        return user_key_label(self.user_key)


def user_labels(user_keys: Iterable[str]) -> dict[str, UserLabel]:
    """The label of each user id (rollup keys: "" is the calls with no user)."""
    keys = [key for key in dict.fromkeys(user_keys) if key != ANONYMOUS_KEY]
    labels = {ANONYMOUS_KEY: UserLabel(ANONYMOUS_KEY)}
    resolver = weckr_settings.user_label_resolver()
    if resolver is None:
        labels.update(_auth_user_labels(keys))
    else:
        for key in keys:
            labels[key] = UserLabel(key, _resolved(resolver, key))
    return labels


def _resolved(resolver: Any, user_key: str) -> str | None:
    """The resolver's label; a resolver that fails shows the bare id, loudly."""
    try:
        name = resolver(user_key)
    except Exception:
        logger.exception("Weckr: USER_LABEL_RESOLVER failed for user %s.", user_key)
        return None
    return None if name in (None, "") else str(name)


def _auth_user_labels(user_keys: list[str]) -> dict[str, UserLabel]:
    """Ids that are primary keys of ``AUTH_USER_MODEL`` rows, in one query."""
    model = get_user_model()
    pk_field = model._meta.pk
    assert pk_field is not None
    wanted: dict[Any, str] = {}
    for key in user_keys:
        try:
            wanted[pk_field.to_python(key)] = key
        except (ValidationError, ValueError, TypeError):
            continue
    labels = {key: UserLabel(key) for key in user_keys}
    if not wanted:
        return labels
    change = f"admin:{model._meta.app_label}_{model._meta.model_name}_change"
    for user in model._default_manager.filter(pk__in=list(wanted)):
        user_key = wanted.get(user.pk)
        if user_key is None:
            continue
        try:
            admin_url: str | None = reverse(change, args=[user.pk])
        except NoReverseMatch:  # the user model is not in the admin
            admin_url = None
        labels[user_key] = UserLabel(user_key, user.get_username(), admin_url)
    return labels
