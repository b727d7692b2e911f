"""Every page's figures against the raw events of a generated month."""

from __future__ import annotations

import re
from decimal import Decimal

import pytest
from django.core import mail
from django.db.models import Count, Sum
from django.test import Client

from tests.dashboard.figures import amount, card_value, dollars, row_cells
from tests.dashboard.traffic import RUNS, expected_figures, month_events, plan_price
from weckr_core.backends import RunStop, get_backend, report_run_stop
from weckr_core.records import UsageRecord
from weckr_django.dashboard import views
from weckr_django.ingest import ingest_records
from weckr_django.models import AlertLog, Project
from weckr_django.periods import local_day

pytestmark = pytest.mark.django_db


def test_overview_cards_banner_and_chart(staff_client: Client, project: Project) -> None:
    expected = expected_figures(project)
    assert expected.unprofitable == ["dave"]

    html = staff_client.get("/weckr/").content.decode()

    assert card_value(html, "card-cost") == dollars(expected.cost)
    assert card_value(html, "card-revenue") == dollars(expected.revenue)
    assert card_value(html, "card-margin") == dollars(expected.revenue - expected.cost)
    assert card_value(html, "card-unprofitable") == "1"
    assert f"{expected.calls} calls" in html
    loss = plan_price(expected.users["dave"][2]) - expected.users["dave"][0]
    assert 'id="loss-banner"' in html and dollars(-loss) in html
    assert 'id="unpriced-banner"' in html and "acme-llm-1" in html
    # The chart's points carry each day's cost: compare today's with the events.
    today = local_day(project, month_events(project).latest("timestamp").timestamp)
    today_cost = sum(
        (
            event.cost_usd
            for event in month_events(project)
            if local_day(project, event.timestamp) == today
        ),
        Decimal(0),
    )
    assert f"<title>Cost {today:%b %d}: ${amount(today_cost, 4)}</title>" in html
    assert html.count('<circle class="dot cost"') == 30
    assert "Top recommendations" in html and "gpt-4o → gpt-4o-mini" in html


def test_users_rows_worst_margin_first(staff_client: Client, project: Project) -> None:
    expected = expected_figures(project)

    html = staff_client.get("/weckr/users/").content.decode()

    order = re.findall(r'<tr data-user="([^"]+)">', html)
    labels = {key or "(anonymous)": key for key in expected.users}
    assert sorted(order) == sorted(labels)
    margins = [expected.margin(labels[label]) for label in order]
    assert margins == sorted(margins)
    for label, key in labels.items():
        cost, calls, plan = expected.users[key]
        revenue = "—" if not key else amount(plan_price(plan))
        cells = row_cells(html, "user", label)
        assert cells[:6] == [
            label,
            plan or "—",
            revenue,
            amount(cost, 4),
            amount(expected.margin(key)),
            str(calls),
        ]
    assert row_cells(html, "user", "dave")[6] == "unprofitable"
    assert html.count('<svg class="spark"') == len(labels)


@pytest.mark.parametrize(
    ("query", "users"),
    [
        ("status=unprofitable", ["dave"]),
        ("plan=team", ["carol", "frank"]),
        ("q=CAR", ["carol"]),
        ("q=anon", ["(anonymous)"]),
        ("status=profitable&plan=pro", ["alice", "bob"]),
    ],
)
def test_users_filters(
    staff_client: Client, project: Project, query: str, users: list[str]
) -> None:
    html = staff_client.get(f"/weckr/users/?{query}").content.decode()
    assert sorted(re.findall(r'<tr data-user="([^"]+)">', html)) == users


def test_users_pagination(
    staff_client: Client, project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(views, "USERS_PER_PAGE", 3)
    seen = []
    for number in (1, 2, 3):
        html = staff_client.get(f"/weckr/users/?page={number}").content.decode()
        seen += re.findall(r'<tr data-user="([^"]+)">', html)
    assert len(seen) == len(expected_figures(project).users) == len(set(seen))
    assert "Page 1 of 3" in staff_client.get("/weckr/users/").content.decode()


def test_user_page_features_models_and_cap(staff_client: Client, project: Project) -> None:
    events = month_events(project).filter(user_id="dave")
    cost = events.aggregate(total=Sum("cost_usd"))["total"]

    html = staff_client.get("/weckr/users/detail/?user=dave").content.decode()

    assert amount(cost, 4) in card_value(html, "user-cost")
    for feature, total, calls in events.values_list("feature").annotate(
        Sum("cost_usd"), Count("id")
    ):
        assert (
            f'<td>{feature}</td><td class="num">{amount(total, 4)}</td><td class="num">{calls}</td>'
            in html
        )
    for model, total, calls in events.values_list("model").annotate(Sum("cost_usd"), Count("id")):
        assert (
            f'<td>{model}</td><td class="num">{amount(total, 4)}</td><td class="num">{calls}</td>'
            in html
        )
    # starter caps at $2 with the block action, and dave is far past it.
    assert "Cap reached: further calls are blocked." in html
    assert f"${amount(cost, 4)}</strong> of a <strong>$2.00</strong>" in html


def test_anonymous_user_page(staff_client: Client, project: Project) -> None:
    events = month_events(project).filter(user_id__isnull=True)

    response = staff_client.get("/weckr/users/detail/?user=")

    html = response.content.decode()
    assert "(anonymous)" in html and "never capped" in html
    assert amount(events.aggregate(total=Sum("cost_usd"))["total"], 4) in html
    # A user with no calls in the month: an empty state, not a 404; no user: 404.
    nobody = staff_client.get("/weckr/users/detail/?user=nobody")
    assert nobody.status_code == 200
    assert "No calls from nobody in" in nobody.content.decode()
    assert staff_client.get("/weckr/users/detail/").status_code == 404


def test_features_page(staff_client: Client, project: Project) -> None:
    expected = expected_figures(project)

    html = staff_client.get("/weckr/features/").content.decode()

    for feature, (cost, calls) in expected.features.items():
        assert row_cells(html, "feature", feature)[:5] == [
            feature,
            amount(cost, 4),
            str(calls),
            amount(cost / calls, 6),
            f"{amount(cost * 100 / expected.cost, 1)}%",
        ]
    assert 'id="unpriced-banner"' in html


def test_models_page_lists_unpriced_models(staff_client: Client, project: Project) -> None:
    expected = expected_figures(project)

    html = staff_client.get("/weckr/models/").content.decode()

    for model, (cost, calls, unpriced) in expected.models.items():
        cells = row_cells(html, "model", model)
        assert cells[2:6] == [
            amount(cost, 4),
            str(calls),
            amount(cost / calls, 6),
            f"{amount(cost * 100 / expected.cost, 1)}%",
        ]
        assert ("unpriced" in cells[0]) == (unpriced > 0)
    assert expected.models["acme-llm-1"][2] > 0
    banner = html[
        html.index('id="unpriced-banner"') : html.index(
            "</div>", html.index('id="unpriced-banner"')
        )
    ]
    assert "acme-llm-1" in banner and f"{expected.models['acme-llm-1'][2]} calls" in banner


def test_agents_page_marks_stopped_and_failed_runs(staff_client: Client, project: Project) -> None:
    html = staff_client.get("/weckr/agents/").content.decode()

    outcomes = {
        "run-ok-1": "ok",
        "run-loop-1": "stopped by loop guard",
        "run-fail-1": "ended in error",
    }
    for run_id, source, agents, calls, _ in RUNS:
        events = month_events(project).filter(run_id=run_id)
        totals = events.aggregate(cost=Sum("cost_usd"), n=Count("id"))
        cells = row_cells(html, "run", run_id)
        assert cells[2] == source
        assert cells[3] == ", ".join(sorted(agents))
        assert cells[5] == str(totals["n"]) == str(calls)
        assert cells[7] == amount(totals["cost"], 4)
        assert cells[8] == outcomes[run_id]


def test_agents_page_marks_a_run_whose_stop_an_integration_reported(
    staff_client: Client, project: Project
) -> None:
    # The refused call has no row: only the reported stop says the run was stopped.
    assert not month_events(project).filter(run_id="run-ok-1", status="error").exists()
    stop = RunStop(
        run_id="run-ok-1",
        reason="max_cost_usd=0.01 reached",
        source="langchain",
        llm_calls=4,
        tokens=1_000,
        cost_usd=Decimal("0.01"),
    )
    report_run_stop(get_backend(), stop)

    html = staff_client.get("/weckr/agents/").content.decode()
    assert row_cells(html, "run", "run-ok-1")[8] == "stopped by loop guard"
    assert row_cells(html, "run", "run-fail-1")[8] == "ended in error"


def test_recommendations_page(staff_client: Client, project: Project) -> None:
    html = staff_client.get("/weckr/recommendations/").content.decode()

    assert "projected cost = ((input " in html and "cache-write rate" in html
    assert "recommended price = ceil(p90 cost / 30% target AI cost share)" in html
    chat_gpt4o = month_events(project).filter(feature="chat", model="gpt-4o")
    swap = re.search(
        r"<tr><td>chat</td><td>gpt-4o</td><td><strong>gpt-4o-mini</strong></td>(.*?)</tr>",
        html,
        re.S,
    )
    assert swap
    cells = [re.sub(r"<[^>]+>", "", c) for c in re.findall(r"<td[^>]*>(.*?)</td>", swap.group(1))]
    assert cells[0] == str(chat_gpt4o.count())
    assert cells[2] == amount(chat_gpt4o.aggregate(total=Sum("cost_usd"))["total"], 4)
    events = month_events(project).exclude(user_id__isnull=True)
    for plan in ("starter", "pro", "team"):
        per_user = events.filter(plan_name=plan).values("user_id").annotate(cost=Sum("cost_usd"))
        costs = [row["cost"] for row in per_user]
        cells = row_cells(html, "plan", plan)
        assert cells[1] == amount(plan_price(plan))
        assert cells[2] == str(len(costs))
        assert cells[4] == amount(sum(costs, Decimal(0)) / len(costs), 4)


def test_alerts_page_newest_first_and_paginated(
    staff_client: Client, project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(views, "ALERTS_PER_PAGE", 2)
    alerts = [
        AlertLog.objects.create(project=project, kind=kind, user_id="dave")
        for kind in (AlertLog.Kind.SOFT_CAP, AlertLog.Kind.CAP_REACHED, AlertLog.Kind.MARGIN)
    ]

    first = staff_client.get("/weckr/alerts/").content.decode()
    second = staff_client.get("/weckr/alerts/?page=2").content.decode()

    ids = re.findall(r'<tr data-alert="(\d+)">', first) + re.findall(
        r'<tr data-alert="(\d+)">', second
    )
    assert ids == [str(alert.pk) for alert in reversed(alerts)]
    assert "3 in all" in first and "Margin below threshold" in first


def test_send_test_alert_from_settings(staff_client: Client, project: Project) -> None:
    response = staff_client.post("/weckr/settings/test-alert/", follow=True)

    assert response.redirect_chain[-1][0] == "/weckr/alerts/"
    alert = AlertLog.objects.get(project=project, kind=AlertLog.Kind.TEST)
    assert alert.status == AlertLog.Status.SENT
    assert [message.to for message in mail.outbox] == [["ops@example.com"]]
    assert "Test alert: Sent (email)." in response.content.decode()
    assert staff_client.get("/weckr/settings/test-alert/").status_code == 405


def test_users_show_and_filter_their_accounts_once_accounts_exist(
    staff_client: Client, project: Project
) -> None:
    before = staff_client.get("/weckr/users/").content.decode()
    assert "f-account" not in before and "<th>Account</th>" not in before

    ingest_records(
        project,
        [
            UsageRecord(user_id="alice", account_id="acme", model="gpt-4o-mini", input_tokens=5),
            UsageRecord(user_id="bob", account_id="acme", model="gpt-4o-mini", input_tokens=5),
            UsageRecord(user_id="bob", account_id="globex", model="gpt-4o-mini", input_tokens=5),
        ],
    )

    html = staff_client.get("/weckr/users/").content.decode()
    assert "<th>Account</th>" in html
    assert row_cells(html, "user", "alice")[-1] == "acme"
    assert row_cells(html, "user", "bob")[-1] == "acme, globex"
    assert row_cells(html, "user", "carol")[-1] == "—"
    acme = staff_client.get("/weckr/users/?account=acme").content.decode()
    assert sorted(re.findall(r'<tr data-user="([^"]+)">', acme)) == ["alice", "bob"]
