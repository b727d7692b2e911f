from __future__ import annotations

from collections.abc import Iterator

import pytest
from django.contrib.auth.models import User
from django.test import Client

from tests.dashboard.traffic import generate_month, make_project
from weckr_django import overrides
from weckr_django.models import Project


@pytest.fixture(autouse=True)
def price_overrides() -> Iterator[None]:
    """The app installs weckr_core's override hooks at start-up; the shared hermetic
    fixture clears them after each test, so put them back for every test here."""
    overrides.install()
    yield
    overrides.clear()


@pytest.fixture
def project(db: None) -> Project:
    project = make_project()
    generate_month(project)
    return project


@pytest.fixture
def staff_client(db: None) -> Client:
    user = User.objects.create_user("staff", password="pw", is_staff=True, is_superuser=True)
    client = Client()
    client.force_login(user)
    return client
