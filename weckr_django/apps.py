from __future__ import annotations

from django.apps import AppConfig


class WeckrConfig(AppConfig):
    name = "weckr_django"
    label = "weckr_django"
    verbose_name = "Weckr AI costs"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # No queries here: the database may not exist yet (migrate, check, collectstatic).
        from weckr_django import checks, managers, overrides, plans, signals, tasks
        from weckr_django.backend import install_default_backend
        from weckr_django.conf import weckr_settings

        checks.register_checks()
        overrides.connect_signals()
        plans.connect_signals()
        managers.key_projects.clear_on_change(self.get_model("Project"))
        overrides.install()
        install_default_backend()
        if weckr_settings.INSTRUMENT:
            from weckr_core.instrument import instrument

            instrument()
        signals.usage_ingested.connect(
            tasks.on_usage_ingested, dispatch_uid="weckr_follow_up_after_ingest"
        )
