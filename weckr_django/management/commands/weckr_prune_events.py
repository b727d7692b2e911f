"""``manage.py weckr_prune_events [--dry-run]``: delete the usage events older than
``WECKR["EVENT_RETENTION_MONTHS"]`` (the rollups keep every month)."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from weckr_django.conf import weckr_settings
from weckr_django.periods import event_cutoff
from weckr_django.retention import prune_events


class Command(BaseCommand):
    help = (
        "Delete usage events older than WECKR['EVENT_RETENTION_MONTHS'] calendar months; "
        "the rollups (dashboard, margins, caps) keep every month."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--dry-run", action="store_true", help="Count the events that would go; delete none."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            months = weckr_settings.EVENT_RETENTION_MONTHS
        except ValueError as error:
            raise CommandError(str(error)) from None
        cutoff = event_cutoff()
        if cutoff is None:
            self.stdout.write("WECKR['EVENT_RETENTION_MONTHS'] is not set: every event is kept.")
            return
        count = prune_events(dry_run=options["dry_run"])
        verb = "would be deleted" if options["dry_run"] else "deleted"
        self.stdout.write(
            f"{count} usage event(s) from before {cutoff:%Y-%m-%d %H:%M} UTC {verb} "
            f"(keeping {months} month(s))."
        )
