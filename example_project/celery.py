"""The project's Celery app. With ``CELERY_BROKER_URL`` set, Weckr's tasks go to that
broker (run ``celery -A example_project worker``); without it they run in-process.

Configured from the ``CELERY_*`` Django settings, where ``manage.py check`` reads them
too: the broker's visibility timeout, a prefetch of one, so a task whose worker dies
is delivered again within minutes (weckr.W005, weckr.W006 warn otherwise).
"""

from __future__ import annotations

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "example_project.settings")

app = Celery("example_project")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
