from __future__ import annotations

import os
from pathlib import Path

import pytest
from django.conf import settings
from django.core.checks import run_checks
from django.core.management import call_command
from django.core.management.base import SystemCheckError
from django.test.utils import override_settings

from weckr_django.checks import AUTH_MIDDLEWARE, MIDDLEWARE_PATH

from .helpers import make_plan, make_project


def check_ids(**kwargs) -> set[str]:
    return {message.id for message in run_checks(**kwargs) if message.id}


def test_the_test_settings_pass_every_check():
    call_command("check")
    assert not {i for i in check_ids() if i.startswith("weckr.")}


def test_missing_middleware_is_reported():
    without = [m for m in settings.MIDDLEWARE if m != MIDDLEWARE_PATH]
    with override_settings(MIDDLEWARE=without):
        assert "weckr.E001" in check_ids()


def test_middleware_before_authentication_is_reported():
    misplaced = [m for m in settings.MIDDLEWARE if m != MIDDLEWARE_PATH]
    misplaced.insert(misplaced.index(AUTH_MIDDLEWARE), MIDDLEWARE_PATH)
    with override_settings(MIDDLEWARE=misplaced):
        messages = [m for m in run_checks() if m.id == "weckr.E001"]
    assert messages
    assert "after" in (messages[0].hint or "")


def test_resolver_that_does_not_import_is_reported():
    with override_settings(WECKR={"USER_ID_RESOLVER": "myapp.nowhere.user_id"}):
        assert "weckr.E002" in check_ids()
    with override_settings(WECKR={"PLAN_RESOLVER": "weckr_django.conf.DEFAULTS"}):
        assert "weckr.E002" in check_ids()  # imports, but is not callable


def test_celery_delivery_without_a_broker_is_reported():
    with override_settings(WECKR={"DELIVERY": "celery"}):
        assert "weckr.E003" in check_ids()
    with override_settings(
        WECKR={"DELIVERY": "celery"},
        CELERY_BROKER_URL="redis://127.0.0.1:6379/0",
        CELERY_TASK_ALWAYS_EAGER=False,
    ):
        assert "weckr.E003" not in check_ids()


def test_unknown_delivery_mode_is_reported():
    with override_settings(WECKR={"DELIVERY": "carrier-pigeon"}):
        assert "weckr.E005" in check_ids()


@pytest.mark.django_db
def test_several_projects_without_default_warn_in_plain_check():
    make_project("one")
    assert "weckr.W001" not in check_ids()
    make_project("two")
    assert "weckr.W001" in check_ids()  # no --database needed
    with override_settings(WECKR={"DEFAULT_PROJECT": "two"}):
        assert "weckr.W001" not in check_ids()


@pytest.mark.django_db
def test_a_default_project_typo_is_an_error_of_manage_py_check():
    make_project("one")
    with override_settings(WECKR={"DEFAULT_PROJECT": "typo"}):
        messages = [m for m in run_checks() if m.id == "weckr.E006"]
        assert messages
        assert "'typo' names no project" in messages[0].msg
        with pytest.raises(SystemCheckError, match=r"weckr\.E006"):
            call_command("check")
    with override_settings(WECKR={"DEFAULT_PROJECT": "one"}):
        assert "weckr.E006" not in check_ids()


@pytest.mark.django_db
def test_plan_settings_are_checked_against_the_projects_plans():
    project = make_project("one")
    assert "weckr.W003" in check_ids()  # no plans: nothing is capped
    make_plan(project, "free", cap="1")
    assert not {"weckr.W003", "weckr.E009", "weckr.W004"} & check_ids()
    with override_settings(WECKR={"UNKNOWN_PLAN": "Free", "DEFAULT_PLAN": "FREE"}):
        assert not {"weckr.E009", "weckr.W004"} & check_ids()
    with override_settings(WECKR={"UNKNOWN_PLAN": "enterprise", "DEFAULT_PLAN": "basic"}):
        assert {"weckr.E009", "weckr.W004"} <= check_ids()


def test_cap_store_setting_is_checked():
    with override_settings(WECKR={"CAP_STORE": "memcached://x"}):
        assert "weckr.E007" in check_ids()
    with override_settings(WECKR={"CAP_STORE": "redis://127.0.0.1:6379/0"}):
        assert "weckr.E007" not in check_ids()
    with override_settings(WECKR={"UNKNOWN_PLAN": 3}):
        assert "weckr.E008" in check_ids()


def spool_messages(**weckr: object) -> dict[str, str]:
    """The spool checks' messages under WECKR = ``weckr``, "thread" delivery unless said."""
    with override_settings(WECKR={"DELIVERY": "thread", **weckr}):
        return {
            message.id: message.msg
            for message in run_checks()
            if message.id in ("weckr.W007", "weckr.W008")
        }


def test_a_spool_path_that_cannot_be_opened_is_reported(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("")
    under_a_file = spool_messages(SPOOL=str(tmp_path / "a-file" / "spool.sqlite3"))
    assert "a-file' is not a directory" in under_a_file["weckr.W007"]
    assert "is a directory" in spool_messages(SPOOL=str(tmp_path))["weckr.W007"]

    missing = tmp_path / "not-yet" / "spool.sqlite3"
    assert spool_messages(SPOOL=str(missing)) == {}  # the spool creates it at first use
    assert not missing.parent.exists()  # and the check did not
    assert spool_messages(SPOOL=str(tmp_path / "spool.sqlite3")) == {}
    # "sync" delivery records on the caller's thread and keeps no spool.
    assert spool_messages(DELIVERY="sync", SPOOL=str(tmp_path)) == {}


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write in any directory")
def test_a_spool_directory_the_app_cannot_write_is_reported(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        here = spool_messages(SPOOL=str(locked / "spool.sqlite3"))
        below = spool_messages(SPOOL=str(locked / "weckr" / "spool.sqlite3"))
    finally:
        locked.chmod(0o700)
    assert "is not writable" in here["weckr.W007"]
    assert "does not exist and cannot be created" in below["weckr.W007"]


def test_an_auto_spool_with_nowhere_to_go_is_reported(tmp_path: Path) -> None:
    # The test database is SQLite in memory, and the test settings have no BASE_DIR.
    assert "there is no spool" in spool_messages()["weckr.W008"]
    with override_settings(BASE_DIR=tmp_path):
        assert spool_messages() == {}
    assert spool_messages(SPOOL=None) == {}  # none, on purpose
    assert spool_messages(DELIVERY="sync") == {}


@pytest.mark.django_db
def test_migrations_are_up_to_date():
    call_command("makemigrations", "weckr_django", "--check", "--dry-run", verbosity=0)
