"""Alert rules: which alerts a project's usage calls for.

Plain functions over a project, free of Celery: ``weckr_django.tasks`` wraps each in
a task. A rule creates ``AlertLog`` rows, each at most once per cooldown, run or
month as the rule says (checked under a row lock on the project, so two workers
cannot both pass), and hands each new alert's id to ``send`` once its transaction
commits. Delivery itself is ``alerts.deliver``.

Margins are ``reports.UserMargin``'s: the margin alert and the dashboard read the
same figure.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from django.db import transaction
from django.db.models import F, Q, Sum
from django.utils import timezone

from weckr_django import reconcile, reports
from weckr_django.conf import weckr_settings
from weckr_django.models import ANONYMOUS_KEY, AlertLog, MonthlyUserSpend, Project, UsageEvent
from weckr_django.periods import month_bounds, month_start
from weckr_django.plans import PlanTerms, configured_plans, match_plan, unknown_plan_rule

#: Sends the alert with this id; called after the alert is committed.
Send = Callable[[int], None]

#: The details a run stop alert keeps from ``tasks.run_stop_payload``.
RUN_STOP_DETAILS = ("run_id", "reason", "source", "llm_calls", "plan", "feature", "agent")


@dataclass(frozen=True, slots=True)
class LoopWindow:
    """A project's loop detection settings (its own, else ``WECKR``'s)."""

    seconds: int
    token_threshold: int
    cooldown_seconds: int

    @classmethod
    def of(cls, project: Project) -> LoopWindow:
        return cls(
            seconds=project.loop_window_seconds or weckr_settings.LOOP_WINDOW_SECONDS,
            token_threshold=project.loop_token_threshold or weckr_settings.LOOP_TOKEN_THRESHOLD,
            cooldown_seconds=project.loop_cooldown_seconds or weckr_settings.LOOP_COOLDOWN_SECONDS,
        )


def loop_alerts(project: Project, user_keys: Iterable[str], *, send: Send) -> list[AlertLog]:
    """Alert on users whose tokens in the sliding window reach the threshold.

    ``user_keys`` are rollup user keys ("" for calls made with no user). A user
    alerted within the cooldown is not alerted again.
    """
    window = LoopWindow.of(project)
    now = timezone.now()
    since = now - timedelta(seconds=window.seconds)
    cooldown_start = now - timedelta(seconds=window.cooldown_seconds)
    over = {
        user_key: totals
        for user_key, totals in _window_totals(project, user_keys, since).items()
        if int(totals["tokens"] or 0) >= window.token_threshold
    }
    alerted = _alerted_since(project, [AlertLog.Kind.LOOP], cooldown_start, over)
    created: list[AlertLog] = []
    for user_key, totals in over.items():
        if (AlertLog.Kind.LOOP, user_key) in alerted:
            continue
        tokens = int(totals["tokens"])
        with transaction.atomic():
            _lock(project)
            recent = AlertLog.objects.filter(
                project=project,
                kind=AlertLog.Kind.LOOP,
                created_at__gte=cooldown_start,
                **_user_filter(user_key),
            ).exists()
            if recent:
                continue
            alert = AlertLog.objects.create(
                project=project,
                kind=AlertLog.Kind.LOOP,
                user_id=user_key or None,
                window_seconds=window.seconds,
                window_tokens=tokens,
                window_cost_usd=Decimal(totals["cost"] or 0),
                details={
                    "threshold": window.token_threshold,
                    "cooldown_seconds": window.cooldown_seconds,
                },
            )
            _send_on_commit(alert, send)
        created.append(alert)
    return created


def _window_totals(
    project: Project, user_keys: Iterable[str], since: datetime
) -> dict[str, dict[str, Any]]:
    """Tokens and cost of each user's calls since ``since``, in one grouped query per
    thousand users (an index range scan per user), whatever the batch touched."""
    keys = list(dict.fromkeys(user_keys))
    totals: dict[str, dict[str, Any]] = {}
    for start in range(0, len(keys), 1000):
        rows = (
            UsageEvent.objects.filter(
                _users(keys[start : start + 1000]), project=project, timestamp__gte=since
            )
            .order_by()
            .values("user_id")
            .annotate(
                tokens=Sum(F("input_tokens") + F("cache_creation_tokens") + F("output_tokens")),
                cost=Sum("cost_usd"),
            )
        )
        for row in rows:
            totals[row["user_id"] or ANONYMOUS_KEY] = row
    return {key: totals[key] for key in keys if key in totals}


def _alerted_since(
    project: Project, kinds: Iterable[str], since: datetime, user_keys: Iterable[str]
) -> set[tuple[str, str]]:
    """(kind, user key) of the alerts of ``kinds`` since ``since`` for ``user_keys``:
    read in one query up front, so a user alerted already costs no lock. (The check
    under the lock stays the one that counts.)"""
    keys = list(user_keys)
    if not keys:
        return set()
    found = AlertLog.objects.filter(
        _users(keys), project=project, kind__in=list(kinds), created_at__gte=since
    ).values_list("kind", "user_id")
    return {(kind, user_id or ANONYMOUS_KEY) for kind, user_id in found}


def run_stop_alert(project: Project, stop: Mapping[str, Any], *, send: Send) -> AlertLog | None:
    """Keep a loop-guard stop (``tasks.run_stop_payload``) as an alert; once per run,
    so None when the run was already alerted."""
    run_id = stop.get("run_id")
    with transaction.atomic():
        if run_id is not None:
            _lock(project)
            if AlertLog.objects.filter(
                project=project, kind=AlertLog.Kind.RUN_STOPPED, details__run_id=run_id
            ).exists():
                return None
        alert = AlertLog.objects.create(
            project=project,
            kind=AlertLog.Kind.RUN_STOPPED,
            user_id=stop.get("user_id"),
            window_tokens=int(stop.get("tokens") or 0),
            window_cost_usd=Decimal(str(stop.get("cost_usd") or 0)),
            details={key: stop.get(key) for key in RUN_STOP_DETAILS},
        )
        _send_on_commit(alert, send)
    return alert


def budget_alerts(project: Project, user_keys: Iterable[str], *, send: Send) -> list[AlertLog]:
    """Soft-cap, cap-reached and margin alerts, each at most once per user per month,
    and one alert per plan name per month for calls on a plan Weckr does not know.

    Calls made with no user have no plan and no budget: "" is skipped.
    """
    month = month_start(project)
    month_begins, _ = month_bounds(project, month)
    keys = [key for key in dict.fromkeys(user_keys) if key != ANONYMOUS_KEY]
    rows = list(MonthlyUserSpend.objects.filter(project=project, month=month, user_key__in=keys))
    members = reports.account_members(project, month, keys)
    kinds = (AlertLog.Kind.SOFT_CAP, AlertLog.Kind.CAP_REACHED, AlertLog.Kind.MARGIN)
    alerted = _alerted_since(project, kinds, month_begins, [row.user_key for row in rows])
    prices = reports.plan_prices(project)
    created: list[AlertLog] = []
    unknown: set[str | None] = set()
    for row in rows:
        match = match_plan(project, row.plan_name)
        if not match.known:
            unknown.add(row.plan_name)
        terms = match.terms
        if terms is None:
            continue
        wanted = _cap_alerts(terms, row.cost_usd, terms.monthly_cap_usd)
        margin = reports.UserMargin.of_spend(row, prices, members.get(row.user_key))
        if match.known and margin.status not in ("paid_by_account", "free"):
            # A user of an account has no margin of their own (the account's is
            # alerted); a free user is a cost of the free tier, not a loss.
            wanted += _margin_alerts(project, terms, margin)
        for kind, details in wanted:
            if (kind, row.user_key) in alerted:
                continue
            about = {"user_id": row.user_key}
            alert = _alert_once(
                project,
                kind,
                details,
                send,
                unless={"created_at__gte": month_begins, **about},
                about=about,
            )
            if alert is not None:
                created.append(alert)
    if unknown and configured_plans(project):
        created += _unknown_plan_alerts(project, month_begins, unknown, send)
    return created


def account_budget_alerts(
    project: Project, account_keys: Iterable[str], *, send: Send
) -> list[AlertLog]:
    """Soft-cap and cap-reached alerts against the plan's account cap, and margin
    alerts on the account's margin (revenue of its plan, flat or per seat, less the
    AI cost of all its users), each at most once per account per month."""
    keys = list(dict.fromkeys(account_keys))
    if not keys:
        return []
    month_begins, _ = month_bounds(project, month_start(project))
    kinds = (AlertLog.Kind.SOFT_CAP, AlertLog.Kind.CAP_REACHED, AlertLog.Kind.MARGIN)
    alerted = set(
        AlertLog.objects.filter(
            project=project, kind__in=kinds, account_id__in=keys, created_at__gte=month_begins
        ).values_list("kind", "account_id")
    )
    created: list[AlertLog] = []
    for margin in reports.account_margins(project, accounts=keys):
        match = match_plan(project, margin.plan_name)
        terms = match.terms
        if terms is None:
            continue
        wanted = _cap_alerts(terms, margin.cost_usd, terms.account_cap_usd)
        if match.known and margin.revenue_usd is not None:
            wanted += _margin_alerts(project, terms, margin)
        for kind, details in wanted:
            if (kind, margin.account_key) in alerted:
                continue
            details = {**details, "seats": margin.seats}
            about = {"account_id": margin.account_key}
            alert = _alert_once(
                project,
                kind,
                details,
                send,
                unless={"created_at__gte": month_begins, **about},
                about=about,
            )
            if alert is not None:
                created.append(alert)
    return created


def billing_gap_alerts(
    project: Project, days: Iterable[reconcile.DayComparison], *, send: Send
) -> list[AlertLog]:
    """A day a provider billed more than the project's ``billing_gap_alert_percent``
    above what Weckr recorded: one alert per day and provider, ever."""
    threshold = project.billing_gap_alert_percent
    if threshold is None:
        return []
    created: list[AlertLog] = []
    for day in days:
        percent = day.gap_percent
        if percent is None or day.gap_usd <= 0 or percent <= threshold:
            continue
        details = {
            "day": day.day.isoformat(),
            "provider": day.provider,
            "billed": f"{day.billed_usd:.2f}",
            "recorded": f"{day.recorded_usd:.2f}",
            "gap": f"{day.gap_usd:.2f}",
            "percent": f"{percent:.1f}",
            "threshold": threshold,
            "models": [
                f"{gap.model} ${gap.gap_usd:.2f}" for gap in day.models[:3] if gap.gap_usd > 0
            ],
        }
        alert = _alert_once(
            project,
            AlertLog.Kind.BILLING_GAP,
            details,
            send,
            unless={"details__day": details["day"], "details__provider": day.provider},
        )
        if alert is not None:
            created.append(alert)
    return created


def _cap_alerts(
    terms: PlanTerms, spend: Decimal, cap: Decimal | None
) -> list[tuple[str, dict[str, Any]]]:
    """``cap`` (the plan's per-user or per-account cap) reached, or the plan's
    soft-alert share of it reached."""
    if cap is None or cap <= 0:
        return []
    info = {"plan": terms.name, "spend": f"{spend:.4f}", "cap": f"{cap:.2f}"}
    if spend >= cap:
        return [(AlertLog.Kind.CAP_REACHED, info)]
    if terms.soft_alert_percent and spend * 100 >= cap * terms.soft_alert_percent:
        return [(AlertLog.Kind.SOFT_CAP, info)]
    return []


def _margin_alerts(
    project: Project, terms: PlanTerms, margin: reports.UserMargin | reports.AccountMargin
) -> list[tuple[str, dict[str, Any]]]:
    """The user's (or account's) margin this month is below the project's threshold."""
    threshold = project.margin_alert_threshold_usd
    if threshold is None or margin.margin_usd >= threshold:
        return []
    details = {
        "plan": terms.name,
        "revenue": f"{margin.revenue_usd or reports.ZERO:.2f}",
        "spend": f"{margin.cost_usd:.4f}",
        "margin": f"{margin.margin_usd:.2f}",
        "threshold": f"{threshold:.2f}",
    }
    return [(AlertLog.Kind.MARGIN, details)]


def _unknown_plan_alerts(
    project: Project, month_begins: datetime, plan_names: set[str | None], send: Send
) -> list[AlertLog]:
    created = []
    known = [terms.name for terms in configured_plans(project).values()]
    usage = {item.plan_name: item for item in reports.unknown_plan_usage(project, known)}
    for name in sorted(plan_names, key=lambda name: name or ""):
        item = usage.get(name)
        if item is None:
            continue
        details = {
            "plan": item.label,
            "users": item.users,
            "calls": item.calls,
            "cost": f"{item.cost_usd:.4f}",
            "rule": unknown_plan_rule(),
        }
        alert = _alert_once(
            project,
            AlertLog.Kind.UNKNOWN_PLAN,
            details,
            send,
            unless=_this_month(month_begins, details),
        )
        if alert is not None:
            created.append(alert)
    return created


def unknown_plan_refused_alert(
    project: Project, plan_name: str | None, *, send: Send
) -> AlertLog | None:
    """Calls on ``plan_name``, which the project does not have, are being refused:
    one alert per plan name and month (the banner reads it too)."""
    month_begins, _ = month_bounds(project, month_start(project))
    label = reports.NO_PLAN_LABEL if plan_name is None else plan_name
    details = {"plan": label, "refused": True, "rule": unknown_plan_rule()}
    return _alert_once(
        project,
        AlertLog.Kind.UNKNOWN_PLAN,
        details,
        send,
        unless=_this_month(month_begins, details),
    )


def _alert_once(
    project: Project,
    kind: str,
    details: dict[str, Any],
    send: Send,
    *,
    unless: dict[str, Any],
    about: dict[str, str] | None = None,
) -> AlertLog | None:
    """Create and send an alert of ``kind`` (about a user or account: ``{"user_id":
    ...}`` or ``{"account_id": ...}``) unless the project has one of that kind
    matching ``unless`` already; checked under the project's lock."""
    with transaction.atomic():
        _lock(project)
        if AlertLog.objects.filter(project=project, kind=kind, **unless).exists():
            return None
        alert = AlertLog.objects.create(
            project=project, kind=kind, details=details, **(about or {})
        )
        _send_on_commit(alert, send)
    return alert


def _this_month(month_begins: datetime, details: dict[str, Any]) -> dict[str, Any]:
    """Earlier alerts of this month on the same plan name."""
    return {"created_at__gte": month_begins, "details__plan": details["plan"]}


def _lock(project: Project) -> None:
    """Serialise alerting per project until the transaction ends."""
    Project.objects.select_for_update().filter(pk=project.pk).first()


def _send_on_commit(alert: AlertLog, send: Send) -> None:
    transaction.on_commit(functools.partial(send, alert.pk), robust=True)


def _users(user_keys: list[str]) -> Q:
    """Rows of any of these rollup user keys ("" is the calls made with no user)."""
    named = [key for key in user_keys if key != ANONYMOUS_KEY]
    users = Q(user_id__in=named)
    if len(named) < len(user_keys):
        users |= Q(user_id__isnull=True)
    return users


def _user_filter(user_key: str) -> dict[str, Any]:
    return {"user_id__isnull": True} if user_key == ANONYMOUS_KEY else {"user_id": user_key}
