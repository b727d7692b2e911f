"""The project's Celery app. With ``CELERY_BROKER_URL`` set, Weckr's tasks go to that
broker (run ``celery -A example_project worker``); without it they run in-process."""

from __future__ import annotations

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "example_project.settings")

app = Celery("example_project")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
