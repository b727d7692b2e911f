from __future__ import annotations

from django.apps import AppConfig


class SaasConfig(AppConfig):
    name = "example_project.saas"
    label = "saas"
    verbose_name = "Example SaaS"
    default_auto_field = "django.db.models.BigAutoField"
