"""API key authentication, ``x-api-key: wk_...`` or ``Authorization: Bearer wk_...``
(what Tokenr's and AICostManager's SDKs send): a key is looked up by its hash, never
by plaintext."""

from __future__ import annotations

from django.contrib.auth.models import AnonymousUser
from rest_framework import exceptions
from rest_framework.authentication import BaseAuthentication
from rest_framework.permissions import BasePermission
from rest_framework.request import Request
from rest_framework.views import APIView

from weckr_django.api.throttling import ClientAddressThrottle
from weckr_django.managers import hash_key
from weckr_django.models import ApiKey

HEADER = "x-api-key"
_MAX_KEY_LENGTH = 200


class ApiKeyAuthentication(BaseAuthentication):
    """The request's principal is its API key (``request.auth``); there is no Django user.

    No header: not authenticated (401 through ``HasApiKey``). Unknown key: 401.
    Revoked key: 403, so a client can tell a typo from a key that was withdrawn.
    Too many requests without a valid key from one address: 429, decided from the
    cache before the key is looked up (``ClientAddressThrottle``).
    """

    def authenticate(self, request: Request) -> tuple[AnonymousUser, ApiKey] | None:
        plaintext = request.headers.get(HEADER, "").strip()
        if not plaintext:
            scheme, _, credentials = request.headers.get("Authorization", "").partition(" ")
            if scheme.lower() == "bearer":
                plaintext = credentials.strip()
        usable = bool(plaintext) and len(plaintext) <= _MAX_KEY_LENGTH
        throttle = ClientAddressThrottle(request, hash_key(plaintext) if usable else None)
        throttle.check()
        if not plaintext:
            throttle.failed()
            return None
        key = ApiKey.objects.authenticate(plaintext) if usable else None
        if key is None:
            throttle.failed()
            raise exceptions.AuthenticationFailed("Unknown API key.")
        if key.is_revoked:
            throttle.forget_key()
            raise exceptions.PermissionDenied("This API key has been revoked.")
        throttle.resolved()
        ApiKey.objects.touch(key)
        return AnonymousUser(), key

    def authenticate_header(self, request: Request) -> str:
        # Any value makes DRF answer 401 rather than 403 to a missing key.
        return HEADER


class HasApiKey(BasePermission):
    message = (
        f"Send your project's API key in the {HEADER} header (or as Authorization: Bearer <key>)."
    )

    def has_permission(self, request: Request, view: APIView) -> bool:
        return isinstance(request.auth, ApiKey)
