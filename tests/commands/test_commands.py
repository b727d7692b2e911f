from __future__ import annotations

from decimal import Decimal
from io import StringIO

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from weckr_django.models import ApiKey, Plan, Project

pytestmark = pytest.mark.django_db


def run(*args: str) -> str:
    out = StringIO()
    call_command(*args, stdout=out, stderr=StringIO())
    return out.getvalue()


def test_project_create_prints_the_id_and_a_working_key() -> None:
    lines = run("weckr_project", "create", "Acme", "--timezone", "Europe/Berlin").splitlines()

    assert len(lines) == 2
    project = Project.objects.get(pk=lines[0])
    assert (project.name, project.timezone) == ("Acme", "Europe/Berlin")
    assert lines[1].startswith("wk_")
    key = ApiKey.objects.authenticate(lines[1])
    assert key is not None and key.project == project


def test_project_create_refuses_an_unknown_timezone() -> None:
    with pytest.raises(CommandError, match="Unknown timezone 'Mars/Olympus'"):
        run("weckr_project", "create", "Acme", "--timezone", "Mars/Olympus")
    assert not Project.objects.exists()


def test_project_list_shows_each_project() -> None:
    project_id = run("weckr_project", "create", "Acme").splitlines()[0]
    run("weckr_project", "create", "Beta")
    run("weckr_plan", "set", "Acme", "pro", "--price", "29")

    lines = run("weckr_project", "list").splitlines()

    assert lines[0].split("\t") == [project_id, "Acme", "UTC", "plans=1", "keys=1"]
    assert lines[1].split("\t")[1] == "Beta"


def test_plan_set_creates_then_updates_by_name_or_id() -> None:
    project_id = run("weckr_project", "create", "Acme").splitlines()[0]

    created = run(
        "weckr_plan", "set", "Acme", "pro", "--price", "29", "--cap", "5", "--action", "downgrade"
    )
    updated = run("weckr_plan", "set", project_id, "pro", "--price", "39")

    plan = Plan.objects.get(project_id=project_id, name="pro")
    assert (plan.monthly_price_usd, plan.monthly_cap_usd) == (Decimal("39"), Decimal("5"))
    assert plan.cap_action == "downgrade"
    assert created.startswith("Created plan 'pro'")
    assert updated.startswith("Updated plan 'pro'")

    run("weckr_plan", "set", "Acme", "pro", "--price", "39", "--no-cap")
    plan.refresh_from_db()
    assert plan.monthly_cap_usd is None

    seats = run("weckr_plan", "set", "Acme", "team", "--price", "12", "--billing", "per_seat")
    assert "$12.00/month per seat" in seats
    assert Plan.objects.get(project_id=project_id, name="team").billing == "per_seat"
    run("weckr_plan", "set", "Acme", "team", "--price", "15")  # billing kept
    assert Plan.objects.get(project_id=project_id, name="team").billing == "per_seat"

    both = run(
        "weckr_plan", "set", "Acme", "team", "--price", "15", "--cap", "2", "--account-cap", "40"
    )
    assert "cap $40.00 per account per month and $2.00 per user per month, then block" in both
    team = Plan.objects.get(project_id=project_id, name="team")
    assert (team.account_monthly_cap_usd, team.monthly_cap_usd) == (Decimal(40), Decimal(2))
    run("weckr_plan", "set", "Acme", "team", "--price", "15", "--no-account-cap")
    team.refresh_from_db()
    assert (team.account_monthly_cap_usd, team.monthly_cap_usd) == (None, Decimal(2))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("weckr_plan", "set", "Nope", "pro", "--price", "1"), "No project with id or name"),
        (("weckr_plan", "set", "Acme", "pro", "--price", "ten"), "--price must be an amount"),
        (("weckr_plan", "set", "Acme", "pro", "--price", "-1"), "--price must be zero or more"),
        (("weckr_plan", "set", "Acme", "pro", "--price", "1", "--cap", "x"), "--cap must be"),
        (("weckr_key", "create", "Nope"), "No project with id or name"),
        (("weckr_key", "revoke", "wk_"), "at least the first 6"),
        (("weckr_key", "revoke", "wk_zzzzzzzz"), "No active key"),
    ],
)
def test_clear_errors(args: tuple[str, ...], message: str) -> None:
    run("weckr_project", "create", "Acme")

    with pytest.raises(CommandError, match=message):
        run(*args)


def test_plan_set_refuses_an_unknown_action() -> None:
    run("weckr_project", "create", "Acme")

    with pytest.raises(CommandError, match="invalid choice"):
        run("weckr_plan", "set", "Acme", "pro", "--price", "1", "--action", "explode")


def test_key_create_and_revoke() -> None:
    run("weckr_project", "create", "Acme")

    plaintext = run("weckr_key", "create", "Acme", "--name", "ci").strip()
    key = ApiKey.objects.authenticate(plaintext)
    assert key is not None and not key.is_revoked

    output = run("weckr_key", "revoke", key.prefix)

    key.refresh_from_db()
    assert key.is_revoked
    assert output.startswith(f"Revoked {key.prefix}")
    listing = run("weckr_key", "list", "Acme")
    assert f"{key.prefix}\trevoked" in listing
    with pytest.raises(CommandError, match="No active key"):
        run("weckr_key", "revoke", key.prefix)


def test_project_names_that_repeat_need_the_id() -> None:
    run("weckr_project", "create", "Twin")
    run("weckr_project", "create", "Twin")

    with pytest.raises(CommandError, match="Several projects are named 'Twin'"):
        run("weckr_key", "create", "Twin")
