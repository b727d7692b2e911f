"""Display names for user ids: the auth user's username by default, or
``WECKR["USER_LABEL_RESOLVER"]``; shown on the pages, never stored."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import User
from django.core.checks import run_checks
from django.test import Client, override_settings

from tests.django.helpers import make_record
from weckr_django.ingest import ingest_records
from weckr_django.labels import user_labels
from weckr_django.models import Project, UsageEvent

pytestmark = pytest.mark.django_db


def label_from_directory(user_id: str) -> str | None:
    """The app's own rule, as a resolver: a made-up directory of names."""
    if user_id == "boom":
        raise LookupError("directory down")
    return {"u1": "Ada Lovelace <ada@example.com>"}.get(user_id)


@pytest.fixture
def customers(db: None) -> tuple[Project, User]:
    project = Project.objects.create(name="Labels")
    ada = User.objects.create_user("ada@example.com")
    ingest_records(
        project,
        [
            make_record("e1", user_id=str(ada.pk)),
            make_record("e2", user_id="not-a-pk"),
            make_record("e3", user_id=None),
        ],
    )
    return project, ada


def test_a_users_primary_key_shows_as_their_username_with_an_admin_link(
    customers: tuple[Project, User], staff_client: Client
) -> None:
    project, ada = customers
    staff_client.get(f"/weckr/?project={project.pk}")

    users = staff_client.get("/weckr/users/").content.decode()
    assert "ada@example.com" in users
    assert f'href="/admin/auth/user/{ada.pk}/change/"' in users
    assert "not-a-pk" in users  # no user of that id: the id alone
    page = staff_client.get(f"/weckr/users/detail/?user={ada.pk}").content.decode()
    assert "ada@example.com" in page
    # Display only: the stored id is still the primary key.
    assert set(UsageEvent.objects.values_list("user_id", flat=True)) == {
        str(ada.pk),
        "not-a-pk",
        None,
    }


def test_a_label_resolver_names_users_and_a_failing_one_shows_the_id(
    customers: tuple[Project, User], caplog: pytest.LogCaptureFixture
) -> None:
    resolver = f"{__name__}.label_from_directory"
    with override_settings(WECKR={"DELIVERY": "sync", "USER_LABEL_RESOLVER": resolver}):
        labels = user_labels(["u1", "u2", "boom", ""])
    assert labels["u1"].name == "Ada Lovelace <ada@example.com>"
    assert labels["u1"].admin_url is None
    assert (labels["u2"].name, labels["boom"].name) == (None, None)
    assert labels[""].id_text == "(anonymous)"
    assert "USER_LABEL_RESOLVER failed for user boom" in caplog.text


def test_a_label_resolver_that_does_not_import_fails_the_check() -> None:
    with override_settings(WECKR={"USER_LABEL_RESOLVER": "myapp.nowhere.label"}):
        errors = [error for error in run_checks() if error.id == "weckr.E002"]
    assert errors and "USER_LABEL_RESOLVER" in errors[0].msg
