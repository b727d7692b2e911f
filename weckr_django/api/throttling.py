"""Rate limiting through DRF's cache-based throttles and Django's cache.

``ApiKeyRateThrottle`` limits each valid key. ``ClientAddressThrottle`` limits, per
client address and before any database work, the requests that come without a key
or with a key that does not resolve (``ApiKeyAuthentication`` consults it).
"""

from __future__ import annotations

import hashlib
import logging
import math
from typing import Any

from rest_framework import exceptions, status
from rest_framework.request import Request
from rest_framework.throttling import SimpleRateThrottle
from rest_framework.views import APIView

from weckr_django.conf import weckr_settings
from weckr_django.models import ApiKey

logger = logging.getLogger("weckr_django")

#: How long a key that resolved stays exempt from its address's limit.
KNOWN_KEY_SECONDS = 24 * 3600


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


class ClientThrottled(exceptions.APIException):
    """429 with ``Retry-After`` (DRF adds the header for ``wait``)."""

    status_code = status.HTTP_429_TOO_MANY_REQUESTS
    default_code = "throttled"

    def __init__(self, wait: float) -> None:
        self.wait = max(1, math.ceil(wait))
        super().__init__(
            f"Too many requests without a valid API key from this address. Retry in {self.wait} s."
        )


class ClientAddressThrottle(SimpleRateThrottle):
    """``WECKR["API_UNAUTHENTICATED_RATE_LIMIT"]`` requests without a valid key per
    client address (e.g. "60/min"); None: no limit.

    Counted like DRF's ``AnonRateThrottle``: the address is DRF's ``get_ident``, so
    ``REST_FRAMEWORK["NUM_PROXIES"]`` decides how much of X-Forwarded-For is trusted.
    Only failures count (no key, unknown key); a blocked address is refused before its
    key is looked up, except for a key hash that was valid in the last
    ``KNOWN_KEY_SECONDS``, so valid keys behind a shared address keep working. A cache
    that cannot be reached lets requests through.
    """

    scope = "weckr_client"
    num_requests: int | None
    duration: int | None

    def __init__(self, request: Request, key_hash: str | None) -> None:
        super().__init__()
        self.key_hash = key_hash
        self.key_known = False
        self.history = []
        self.now = self.timer()
        if self.rate is None:
            return
        ident = self.get_ident(request) or ""
        self.key = self.cache_format % {
            "scope": self.scope,
            "ident": hashlib.sha256(ident.encode()).hexdigest(),  # X-Forwarded-For: any length
        }
        wanted = [self.key] if key_hash is None else [self.key, self._known_key(key_hash)]
        found = self._cache_call("get_many", wanted) or {}
        self.key_known = key_hash is not None and self._known_key(key_hash) in found
        window_start = self.now - self.window
        self.history = [at for at in found.get(self.key, []) if at > window_start]

    @property
    def limit(self) -> int:
        return self.num_requests or 0

    @property
    def window(self) -> int:
        return self.duration or 0

    def get_rate(self) -> str | None:
        return weckr_settings.API_UNAUTHENTICATED_RATE_LIMIT

    def check(self) -> None:
        """Raise ``ClientThrottled`` when the address is over its limit, unless the
        request carries a key that was valid lately."""
        if self.rate is None or self.key_known or len(self.history) < self.limit:
            return
        # Under the limit again when the limit-th newest failure leaves the window.
        counted_from = self.history[self.limit - 1] if self.limit else self.now
        raise ClientThrottled(self.window - (self.now - counted_from))

    def failed(self) -> None:
        """Count a request that had no key, or a key that did not resolve."""
        if self.rate is None:
            return
        self.history.insert(0, self.now)
        self._cache_call("set", self.key, self.history, self.window)
        self.forget_key()  # deleted since it was known

    def forget_key(self) -> None:
        """The request's key no longer grants an exemption (deleted or revoked)."""
        if self.key_known and self.key_hash is not None:
            self._cache_call("delete", self._known_key(self.key_hash))

    def resolved(self) -> None:
        """The request's key is valid: exempt it from its address's limit."""
        if self.rate is None or self.key_known or self.key_hash is None:
            return
        self._cache_call("set", self._known_key(self.key_hash), True, KNOWN_KEY_SECONDS)

    def _known_key(self, key_hash: str) -> str:
        return self.cache_format % {"scope": "weckr_known_key", "ident": key_hash}

    def _cache_call(self, method: str, *args: Any) -> Any:
        try:
            return getattr(self.cache, method)(*args)
        except Exception:  # the cache is down: no limit rather than no API
            logger.warning("Weckr: the cache failed; client address not rate limited.")
            return None
