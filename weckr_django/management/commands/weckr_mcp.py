"""``manage.py weckr_mcp [--project ID_OR_NAME]``: the MCP server over stdio.

Stdout carries the protocol, so this command never prints to it.
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from weckr_django.conf import weckr_settings
from weckr_django.management.commands._projects import find_project
from weckr_django.mcp_server import build_server
from weckr_django.models import Project


def choose_project(reference: str | None) -> Project:
    """``--project``, else ``WECKR["DEFAULT_PROJECT"]``, else the only project."""
    reference = reference or weckr_settings.DEFAULT_PROJECT
    if reference:
        return find_project(reference)
    projects = list(Project.objects.all()[:2])
    if len(projects) == 1:
        return projects[0]
    if not projects:
        raise CommandError("There is no project yet. `manage.py weckr_project` creates one.")
    raise CommandError("There are several projects: pass --project with an id or a name.")


class Command(BaseCommand):
    help = "Serve this project's AI costs, margins and recommendations over MCP (stdio)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--project",
            help="Project id or name. Default: WECKR['DEFAULT_PROJECT'], else the only project.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        project = choose_project(options["project"])
        self.stderr.write(f"Weckr MCP server for {project.name} ({project.pk}) on stdio.")
        build_server(project).run(transport="stdio")
