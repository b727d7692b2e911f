"""A month's users, accounts, features, models and agent runs: CSV from the
dashboard, the same rows as JSON from the API."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime, timedelta

import pytest
from django.test import Client

from tests.django.helpers import make_record
from weckr_django.ingest import ingest_records
from weckr_django.models import ApiKey, Plan, Project

pytestmark = pytest.mark.django_db

NOW = datetime.now(UTC)
LAST_MONTH = NOW.replace(day=1) - timedelta(days=3)


@pytest.fixture
def busy(db: None) -> Project:
    project = Project.objects.create(name="Export Co")
    Plan.objects.create(project=project, name="pro", monthly_price_usd=29)
    ingest_records(
        project,
        [
            make_record("n1", user_id="ann", plan="pro", feature="=cmd|' /C calc'!A0", when=NOW),
            make_record("n2", user_id="bob", plan="pro", account_id="acme", when=NOW),
            make_record("r1", user_id="ann", plan="pro", run_id="run-1", agent="writer", when=NOW),
            make_record("old", user_id="old-timer", plan="pro", when=LAST_MONTH),
        ],
    )
    return project


def download(client: Client, project: Project, kind: str, month: str = "") -> list[dict[str, str]]:
    client.get(f"/weckr/?project={project.pk}")
    response = client.get(f"/weckr/export/{kind}.csv" + (f"?month={month}" if month else ""))
    assert response.status_code == 200, response.content
    assert response["Content-Type"] == "text/csv; charset=utf-8"
    assert f"weckr-export-co-{kind}-" in response["Content-Disposition"]
    return list(csv.DictReader(io.StringIO(response.content.decode())))


def test_each_table_downloads_as_csv(busy: Project, staff_client: Client) -> None:
    users = {row["user_id"]: row for row in download(staff_client, busy, "users")}
    assert set(users) == {"ann", "bob"}
    assert (users["ann"]["plan"], users["ann"]["status"], users["ann"]["calls"]) == (
        "pro",
        "profitable",
        "2",
    )
    assert (users["bob"]["accounts"], users["bob"]["status"]) == ("acme", "paid_by_account")
    [account] = download(staff_client, busy, "accounts")
    assert (account["account_id"], account["billing"], account["seats"]) == ("acme", "flat", "1")
    features = {row["feature"] for row in download(staff_client, busy, "features")}
    # A cell a spreadsheet would run as a formula is quoted.
    assert "'=cmd|' /C calc'!A0" in features
    assert [row["model"] for row in download(staff_client, busy, "models")] == ["gpt-4o"]
    [run] = download(staff_client, busy, "runs")
    assert (run["run_id"], run["agents"], run["outcome"]) == ("run-1", "writer", "ok")


def test_any_month_and_clear_errors(busy: Project, staff_client: Client) -> None:
    month = f"{LAST_MONTH:%Y-%m}"
    [old] = download(staff_client, busy, "users", month)
    assert old["user_id"] == "old-timer"
    assert download(staff_client, busy, "users", "2001-01") == []  # header only, no rows
    bad = staff_client.get("/weckr/export/users.csv?month=last")
    assert bad.status_code == 400
    assert "month must be YYYY-MM" in bad.content.decode()
    assert staff_client.get("/weckr/export/secrets.csv").status_code == 404


def test_the_api_exports_the_same_rows_as_json(
    busy: Project, staff_client: Client, client: Client
) -> None:
    _, key = ApiKey.objects.create_key(busy, "export")
    headers = {"x-api-key": key}
    body = client.get(f"/api/v1/export/{busy.pk}/users", headers=headers).json()
    assert body["kind"] == "users" and body["month"] == f"{NOW:%Y-%m}"
    as_csv = download(staff_client, busy, "users")
    assert [row["user_id"] for row in body["rows"]] == [row["user_id"] for row in as_csv]
    assert body["columns"] == list(as_csv[0])
    assert isinstance(body["rows"][0]["ai_cost_usd"], float)

    bad = client.get(f"/api/v1/export/{busy.pk}/users?month=2026-13", headers=headers)
    assert (bad.status_code, bad.json()["field"]) == (400, "month")
    missing = client.get(f"/api/v1/export/{busy.pk}/invoices", headers=headers)
    assert missing.status_code == 404
    assert "use one of users, accounts" in missing.json()["error"]
