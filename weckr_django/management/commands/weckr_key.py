"""``manage.py weckr_key create PROJECT`` / ``weckr_key revoke PREFIX`` / ``weckr_key list``."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone

from weckr_django.management.commands._projects import find_project
from weckr_django.models import ApiKey


class Command(BaseCommand):
    help = "Create, revoke and list a project's API keys."

    def add_arguments(self, parser: CommandParser) -> None:
        actions = parser.add_subparsers(
            dest="action", required=True, metavar="{create,revoke,list}"
        )
        create = actions.add_parser(
            "create", help="Create a key. Prints it alone on one line (shown once)."
        )
        create.add_argument("project", help="Project id or name.")
        create.add_argument("--name", default="", help="A label to tell keys apart.")
        revoke = actions.add_parser("revoke", help="Revoke the key whose display prefix this is.")
        revoke.add_argument("prefix", help="The key's first characters, e.g. wk_AbCd1234.")
        listing = actions.add_parser("list", help="One line per key: prefix, state, last use.")
        listing.add_argument("project", help="Project id or name.")

    def handle(self, *args: Any, **options: Any) -> None:
        action = options["action"]
        if action == "create":
            project = find_project(options["project"])
            _, plaintext = ApiKey.objects.create_key(project, name=options["name"])
            self.stdout.write(plaintext)
            self.stderr.write(f"Key for {project.name!r} created. It is not shown again.")
        elif action == "revoke":
            self._revoke(options["prefix"].strip())
        else:
            project = find_project(options["project"])
            for key in ApiKey.objects.filter(project=project).order_by("created_at"):
                state = "revoked" if key.is_revoked else "active"
                used = f"{key.last_used_at:%Y-%m-%d %H:%M}" if key.last_used_at else "never"
                self.stdout.write(f"{key.prefix}\t{state}\tlast used {used}\t{key.name}")

    def _revoke(self, prefix: str) -> None:
        if len(prefix) < 6:
            raise CommandError("Give at least the first 6 characters of the key.")
        # A full plaintext key also works: its display prefix is a prefix of it.
        candidates = [
            key
            for key in ApiKey.objects.filter(revoked_at=None, prefix__startswith=prefix[:6])
            if key.prefix.startswith(prefix) or prefix.startswith(key.prefix)
        ]
        if not candidates:
            raise CommandError(f"No active key starts with {prefix!r}.")
        if len(candidates) > 1:
            raise CommandError(
                f"{len(candidates)} active keys start with {prefix!r}; give more characters."
            )
        key = candidates[0]
        key.revoked_at = timezone.now()
        key.save(update_fields=["revoked_at"])
        self.stdout.write(f"Revoked {key.prefix} of {key.project.name!r}.")
