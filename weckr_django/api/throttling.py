"""Per-key rate limiting through DRF's cache-based throttle and Django's cache."""

from __future__ import annotations

from rest_framework.request import Request
from rest_framework.throttling import SimpleRateThrottle
from rest_framework.views import APIView

from weckr_django.conf import weckr_settings
from weckr_django.models import ApiKey


class ApiKeyRateThrottle(SimpleRateThrottle):
    """``WECKR["API_RATE_LIMIT"]`` requests per key (e.g. "6000/min"); None: no limit.

    The count lives in Django's default cache. With the per-process locmem cache each
    worker process counts on its own; configure a shared cache (Redis, Memcached) for
    one limit across processes.
    """

    scope = "weckr_api_key"

    def get_rate(self) -> str | None:
        return weckr_settings.API_RATE_LIMIT

    def get_cache_key(self, request: Request, view: APIView) -> str | None:
        if not isinstance(request.auth, ApiKey):
            return None
        return self.cache_format % {"scope": self.scope, "ident": request.auth.pk}
