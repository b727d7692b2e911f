from __future__ import annotations

from django.apps import AppConfig


class WeckrConfig(AppConfig):
    name = "weckr_django"
    label = "weckr_django"
    verbose_name = "Weckr AI costs"
    default_auto_field = "django.db.models.BigAutoField"
