"""Template filters of the dashboard: ``{% load weckr_dashboard %}``."""

from __future__ import annotations

from collections.abc import Mapping

from django import template

from weckr_django.labels import UserLabel

register = template.Library()


@register.filter
def label_of(labels: Mapping[str, UserLabel] | None, user_key: str | None) -> UserLabel:
    """The display label of ``user_key`` among the page's ``labels`` (the bare id
    when it has none; "" or None is the calls with no user)."""
    key = user_key or ""
    found = (labels or {}).get(key)
    return found if found is not None else UserLabel(key)
