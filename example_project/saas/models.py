from __future__ import annotations

from typing import ClassVar

from django.conf import settings
from django.db import models


class Profile(models.Model):
    """The plan a customer pays for. WeckrMiddleware's default plan resolver reads
    ``request.user.profile.plan``."""

    class Plan(models.TextChoices):
        FREE = "free", "Free"
        PRO = "pro", "Pro"
        TEAM = "team", "Team"

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL,
        on_delete=models.CASCADE,
        related_name="profile",
        verbose_name="user",
    )
    plan = models.CharField("plan", max_length=20, choices=Plan.choices, default=Plan.FREE)

    objects: ClassVar[models.Manager[Profile]] = models.Manager()

    class Meta:
        verbose_name = "customer profile"
        verbose_name_plural = "customer profiles"

    def __str__(self) -> str:
        return f"{self.user} on {self.plan}"
