"""The alert rules as plain functions, and the task wrappers' wire contract."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from weckr_django import alert_rules, reports, tasks
from weckr_django import alerts as alerts_module
from weckr_django.ingest import ingest_records
from weckr_django.models import ANONYMOUS_KEY, AlertLog, MonthlyAccountSpend, Plan

from .helpers import PUBLISHED_TASK_NAMES, make_plan, make_project, make_record

pytestmark = pytest.mark.django_db


def test_the_tasks_keep_their_published_names():
    names = {
        task.name
        for task in (
            tasks.record_usage,
            tasks.detect_loops,
            tasks.record_run_stop,
            tasks.check_budgets,
            tasks.unknown_plan_refused,
            tasks.dispatch_alert,
        )
    }
    assert names == PUBLISHED_TASK_NAMES


def test_a_rule_returns_its_alerts_and_sends_them_after_the_commit(
    django_capture_on_commit_callbacks,
):
    project = make_project(loop_token_threshold=1_000)
    ingest_records(project, [make_record("e1", input_tokens=2_000, output_tokens=0)])
    sent: list[int] = []
    with django_capture_on_commit_callbacks(execute=True):
        created = alert_rules.loop_alerts(project, ["u1", "u1", "u2"], send=sent.append)
        assert sent == []  # not before the commit
    assert [(alert.kind, alert.user_id) for alert in created] == [(AlertLog.Kind.LOOP, "u1")]
    assert sent == [created[0].pk]
    assert alert_rules.loop_alerts(project, ["u1"], send=sent.append) == []  # cooldown


def test_the_margin_alert_reads_the_dashboards_margin():
    project = make_project(margin_alert_threshold_usd=Decimal("5"))
    make_plan(project, "starter", price="1")
    ingest_records(project, [make_record("e1", plan="starter", input_tokens=400_000)])
    sent: list[int] = []
    [alert] = alert_rules.budget_alerts(project, ["u1", ANONYMOUS_KEY], send=sent.append)
    margin = reports.user_margin(project, "u1")
    assert margin is not None
    assert alert.kind == AlertLog.Kind.MARGIN
    assert alert.details["margin"] == f"{margin.margin_usd:.2f}"
    assert alert.details["revenue"] == f"{margin.revenue_usd:.2f}" == "1.00"
    assert alert.details["spend"] == f"{margin.cost_usd:.4f}"
    assert alert_rules.budget_alerts(project, ["u1"], send=sent.append) == []  # once a month


def test_margin_of_is_revenue_minus_cost():
    assert reports.margin_of(Decimal("3"), Decimal("10")) == Decimal("7")
    assert reports.margin_of(Decimal("3"), None) == Decimal("-3")
    assert reports.margin_status(Decimal("3"), Decimal("2")) == "unprofitable"


def test_a_run_stop_is_alerted_once_per_run():
    project = make_project()
    stop = {"run_id": "r1", "reason": "too many calls", "tokens": 50, "cost_usd": "0.25"}
    sent: list[int] = []
    alert = alert_rules.run_stop_alert(project, stop, send=sent.append)
    assert alert is not None
    assert (alert.window_tokens, alert.window_cost_usd) == (50, Decimal("0.25"))
    assert alert.details["reason"] == "too many calls"
    assert alert_rules.run_stop_alert(project, stop, send=sent.append) is None
    assert tasks.record_run_stop(str(project.pk), stop) is None


def test_refused_calls_on_an_unknown_plan_are_alerted_once_a_month():
    project = make_project()
    sent: list[int] = []
    alert = alert_rules.unknown_plan_refused_alert(project, None, send=sent.append)
    assert alert is not None
    assert alert.details["plan"] == reports.NO_PLAN_LABEL
    assert alert.details["refused"] is True
    assert alert_rules.unknown_plan_refused_alert(project, None, send=sent.append) is None
    assert tasks.unknown_plan_refused(str(project.pk), "gold") is not None


def test_tasks_for_a_deleted_project_do_nothing():
    gone = "00000000-0000-0000-0000-000000000000"
    assert tasks.detect_loops(gone, ["u1"]) == []
    assert tasks.check_budgets(gone, ["u1"]) == []
    assert tasks.record_run_stop(gone, {"run_id": "r1"}) is None
    assert tasks.unknown_plan_refused(gone, "gold") is None


def test_check_budgets_returns_the_ids_of_the_alerts_it_created():
    project = make_project()
    make_plan(project, "pro", cap="0.001")
    now = datetime.now(UTC)
    ingest_records(project, [make_record("e1", plan="pro", input_tokens=10_000, when=now)])
    [alert_id] = tasks.check_budgets(str(project.pk), ["u1"])
    assert AlertLog.objects.get(pk=alert_id).kind == AlertLog.Kind.CAP_REACHED


def test_loop_detection_reads_every_user_of_a_batch_in_one_query(
    django_assert_num_queries,
):
    project = make_project(loop_token_threshold=1_000)
    records = [make_record(f"e{i}", user_id=f"u{i}", input_tokens=10) for i in range(40)]
    records.append(make_record("anon", user_id=None, input_tokens=5_000, output_tokens=0))
    ingest_records(project, records)
    users = [f"u{i}" for i in range(40)] + [ANONYMOUS_KEY]

    # 40 users under the threshold and one over it (the calls with no user): one
    # grouped read for all of them, then the alert for the one.
    with CaptureQueriesContext(connection) as captured:
        created = alert_rules.loop_alerts(project, users, send=lambda alert_id: None)
    reads = [
        query["sql"]
        for query in captured.captured_queries
        if "weckr_django_usageevent" in query["sql"]
    ]
    assert len(reads) == 1 and "GROUP BY" in reads[0]
    assert [(alert.kind, alert.user_id) for alert in created] == [(AlertLog.Kind.LOOP, None)]

    # Alerted already: no lock taken, no alert made.
    with django_assert_num_queries(2):
        assert alert_rules.loop_alerts(project, users, send=lambda alert_id: None) == []


def test_an_account_is_alerted_on_its_cap_and_margin_once_a_month(
    django_capture_on_commit_callbacks,
):
    """The account's own soft cap, cap reached and margin alerts: from the account
    rollup (all its users), not from any one user, and each once per month."""
    project = make_project(
        margin_alert_threshold_usd=Decimal("100"), loop_token_threshold=10_000_000
    )
    Plan.objects.create(
        project=project,
        name="team",
        monthly_price_usd=Decimal("30"),
        billing=Plan.Billing.PER_SEAT,
        monthly_cap_usd=Decimal("100"),
        account_monthly_cap_usd=Decimal("1"),
        soft_alert_percent=50,
    )
    # Two users of acme, each spending $0.30: $0.60 is past half the account's $1 cap
    # while each user is far from their own $100.
    records = [
        make_record(f"e{user}", user_id=user, plan="team", account_id="acme", input_tokens=120_000)
        for user in ("ann", "bob")
    ]
    with django_capture_on_commit_callbacks(execute=True):
        ingest_records(project, records)
    spend = MonthlyAccountSpend.objects.get(account_key="acme").cost_usd
    assert Decimal("0.5") <= spend < Decimal("1")
    alerts = AlertLog.objects.filter(account_id="acme")
    assert sorted(alert.kind for alert in alerts) == [AlertLog.Kind.MARGIN, AlertLog.Kind.SOFT_CAP]
    assert not AlertLog.objects.filter(user_id__in=["ann", "bob"]).exists()
    margin = alerts.get(kind=AlertLog.Kind.MARGIN)
    # Per seat: two active users pay $30 each.
    assert (margin.details["revenue"], margin.details["seats"]) == ("60.00", 2)
    message = alerts_module.compose(alerts.get(kind=AlertLog.Kind.SOFT_CAP))
    assert message.subject == "[Weckr] Account acme is close to the team account cap in Acme"
    assert (
        "(2 seat(s)) spent $" in message.body and "of a $1.00 monthly account cap" in message.body
    )

    # Past the cap: one cap-reached alert; the soft cap and margin are not repeated.
    more = make_record("e3", user_id="cid", plan="team", account_id="acme", input_tokens=200_000)
    with django_capture_on_commit_callbacks(execute=True):
        ingest_records(project, [more])
        ingest_records(project, [make_record("e4", user_id="cid", plan="team", account_id="acme")])
    assert sorted(alert.kind for alert in AlertLog.objects.filter(account_id="acme")) == [
        AlertLog.Kind.CAP_REACHED,
        AlertLog.Kind.MARGIN,
        AlertLog.Kind.SOFT_CAP,
    ]
    reached = alerts_module.compose(AlertLog.objects.get(kind=AlertLog.Kind.CAP_REACHED))
    assert "Their calls are stopped until next month." in reached.body


def test_a_budget_follow_up_queued_before_accounts_still_runs():
    """``check_budgets`` messages already in a broker's queue carry two arguments."""
    project = make_project()
    make_plan(project, "pro", cap="0.001")
    ingest_records(project, [make_record("e1", plan="pro")])
    AlertLog.objects.all().delete()
    [alert_id] = tasks.check_budgets(str(project.pk), ["u1"])
    assert AlertLog.objects.get(pk=alert_id).kind == AlertLog.Kind.CAP_REACHED
