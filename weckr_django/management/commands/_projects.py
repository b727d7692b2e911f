"""Shared by the weckr_* commands: find a project by id or by name."""

from __future__ import annotations

import uuid

from django.core.management.base import CommandError

from weckr_django.models import Project


def find_project(reference: str) -> Project:
    """The project whose id or (exact) name is ``reference``."""
    try:
        project_id = uuid.UUID(reference)
    except ValueError:
        pass
    else:
        project = Project.objects.filter(pk=project_id).first()
        if project is not None:
            return project
    matches = list(Project.objects.filter(name=reference)[:2])
    if not matches:
        raise CommandError(
            f"No project with id or name {reference!r}. `manage.py weckr_project list` shows them."
        )
    if len(matches) > 1:
        raise CommandError(f"Several projects are named {reference!r}; give the project id.")
    return matches[0]
