"""``manage.py weckr_project create NAME [--timezone TZ]`` and ``weckr_project list``."""

from __future__ import annotations

from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import transaction
from django.db.models import Count, Q

from weckr_django.models import ApiKey, Project


def _check_timezone(name: str) -> str:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise CommandError(
            f"Unknown timezone {name!r}. Use an IANA name such as 'UTC' or 'Europe/Berlin'."
        ) from None
    return name


class Command(BaseCommand):
    help = "Create Weckr projects (each with a first API key) and list them."
    # Creating the project is the remedy the checks name (weckr.E006 for a
    # DEFAULT_PROJECT that does not exist yet): they must not stand in its way.
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: CommandParser) -> None:
        actions = parser.add_subparsers(dest="action", required=True, metavar="{create,list}")
        create = actions.add_parser(
            "create",
            help="Create a project and its first API key. Prints the project id, then the "
            "key alone on a line (shown once, never stored).",
        )
        create.add_argument("name")
        create.add_argument(
            "--timezone",
            default="UTC",
            help="IANA timezone whose calendar months bound budgets (default UTC).",
        )
        actions.add_parser("list", help="One line per project: id, name, timezone, plans, keys.")

    def handle(self, *args: Any, **options: Any) -> None:
        if options["action"] == "create":
            self._create(options["name"], options["timezone"])
        else:
            self._list()

    def _create(self, name: str, timezone: str) -> None:
        name = name.strip()
        if not name:
            raise CommandError("The project name must not be empty.")
        with transaction.atomic():
            project = Project.objects.create(name=name, timezone=_check_timezone(timezone))
            _, plaintext = ApiKey.objects.create_key(project, name="created by weckr_project")
        self.stdout.write(str(project.pk))
        self.stdout.write(plaintext)
        self.stderr.write(
            f"Project {name!r} created. Store the API key now: it is not shown again."
        )

    def _list(self) -> None:
        projects = Project.objects.annotate(
            plan_count=Count("plans", distinct=True),
            key_count=Count("api_keys", filter=Q(api_keys__revoked_at=None), distinct=True),
        ).order_by("name", "created_at")
        for project in projects:
            self.stdout.write(
                f"{project.pk}\t{project.name}\t{project.timezone}\t"
                f"plans={project.plan_count}\tkeys={project.key_count}"
            )
