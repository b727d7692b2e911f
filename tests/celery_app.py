"""The Celery app of the test suite, configured from Django settings (``CELERY_*``),
as a Django project's ``celery.py`` does: tasks run eagerly unless settings say otherwise."""

from __future__ import annotations

from celery import Celery

app = Celery("tests")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.set_default()
# A worker started with ``-A tests.celery_app`` (the integration tests) finds the
# weckr_django tasks through INSTALLED_APPS.
app.autodiscover_tasks()
