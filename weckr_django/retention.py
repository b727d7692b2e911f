"""How long usage events are kept: ``WECKR["EVENT_RETENTION_MONTHS"]``.

Events older than the retention are deleted by ``manage.py weckr_prune_events`` (run
it daily from cron or a Celery beat task); the monthly and daily rollups, which the
dashboard, margins and caps read, keep every month. The API refuses events older
than the same cutoff, so an event pruned once can never be stored, and counted in
the rollups, a second time.
"""

from __future__ import annotations

from datetime import datetime

from django.db import transaction

from weckr_django.models import Project, UsageEvent
from weckr_django.periods import event_cutoff

#: Events deleted per statement: short transactions, no long lock on the table.
PRUNE_CHUNK = 10_000


def prune_events(*, now: datetime | None = None, dry_run: bool = False) -> int:
    """Delete the events older than ``event_cutoff``, project by project (along the
    (project, timestamp) index) in chunks of ``PRUNE_CHUNK``; how many were (or, with
    ``dry_run``, would be) deleted."""
    cutoff = event_cutoff(now)
    if cutoff is None:
        return 0
    deleted = 0
    for project_id in Project.objects.values_list("pk", flat=True):
        old = UsageEvent.objects.filter(project_id=project_id, timestamp__lt=cutoff)
        if dry_run:
            deleted += old.count()
            continue
        while True:
            with transaction.atomic():
                ids = list(old.order_by().values_list("pk", flat=True)[:PRUNE_CHUNK])
                if not ids:
                    break
                deleted += UsageEvent.objects.filter(pk__in=ids).delete()[0]
    return deleted
