"""Alert delivery: Slack incoming webhooks and e-mail, one ``AlertLog`` row per alert.

A Slack URL must be https and on an allowed host (``WECKR["SLACK_ALLOWED_HOSTS"]``):
the URL is typed into the admin, and the server must not be made to POST to
arbitrary internal addresses. A rejected URL is recorded as a failed channel with
the reason, never retried.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Final
from urllib.parse import urlsplit

import httpx
from django.conf import settings
from django.core.mail import send_mail
from django.utils import timezone

from weckr_django.conf import weckr_settings
from weckr_django.models import ANONYMOUS_LABEL, AlertLog, Project

logger = logging.getLogger("weckr_django")

SLACK: Final = "slack"
EMAIL: Final = "email"
SLACK_TIMEOUT_SECONDS: Final = 5.0
SENT: Final = "sent"


class AlertChannelError(Exception):
    """A channel failed. ``retryable`` is False for configuration errors (a URL the
    allow-list rejects), which another attempt cannot fix."""

    def __init__(self, message: str, *, retryable: bool = True) -> None:
        super().__init__(message)
        self.retryable = retryable


def configured_channels(project: Project) -> list[str]:
    channels = []
    if project.slack_webhook_url:
        channels.append(SLACK)
    if project.alert_email:
        channels.append(EMAIL)
    return channels


def validate_slack_url(url: str) -> None:
    """Raise ``AlertChannelError`` unless ``url`` is https on an allowed host."""
    parts = urlsplit(url)
    if parts.scheme != "https":
        raise AlertChannelError(
            f"Slack webhook URL must use https, not {parts.scheme or 'no scheme'}.",
            retryable=False,
        )
    host = (parts.hostname or "").lower()
    allowed = weckr_settings.SLACK_ALLOWED_HOSTS
    if host not in allowed:
        raise AlertChannelError(
            f"Slack webhook host {host or '(none)'!r} is not in WECKR['SLACK_ALLOWED_HOSTS'] "
            f"({', '.join(allowed) or 'empty'}).",
            retryable=False,
        )
    if parts.port not in (None, 443):
        raise AlertChannelError(
            "Slack webhook URL must use the default https port.", retryable=False
        )


@dataclass(frozen=True)
class AlertMessage:
    subject: str
    body: str


def compose(alert: AlertLog) -> AlertMessage:
    project = alert.project
    who = alert.user_id or ANONYMOUS_LABEL
    details = alert.details or {}
    if alert.kind == AlertLog.Kind.LOOP:
        subject = f"[Weckr] Runaway AI usage for user {who} in {project.name}"
        body = (
            f"User {who} used {alert.window_tokens or 0:,} tokens "
            f"(${alert.window_cost_usd or 0:.4f}) in the last {alert.window_seconds or 0} "
            f"seconds; the threshold is {details.get('threshold', '?'):,} tokens. "
            "An agent may be stuck in a loop."
        )
    elif alert.kind in (AlertLog.Kind.SOFT_CAP, AlertLog.Kind.CAP_REACHED):
        reached = alert.kind == AlertLog.Kind.CAP_REACHED
        subject = (
            f"[Weckr] User {who} {'reached' if reached else 'is close to'} the "
            f"{details.get('plan', '')} cap in {project.name}"
        )
        body = (
            f"User {who} on plan {details.get('plan', '?')} spent ${details.get('spend', '?')} "
            f"of a ${details.get('cap', '?')} monthly cap this month."
        )
    elif alert.kind == AlertLog.Kind.MARGIN:
        subject = f"[Weckr] Margin of user {who} below threshold in {project.name}"
        body = (
            f"User {who} on plan {details.get('plan', '?')}: revenue "
            f"${details.get('revenue', '?')}, AI cost ${details.get('spend', '?')}, margin "
            f"${details.get('margin', '?')} (threshold ${details.get('threshold', '?')})."
        )
    elif alert.kind == AlertLog.Kind.RUN_STOPPED:
        subject = f"[Weckr] Agent run of user {who} stopped by a loop guard in {project.name}"
        body = (
            f"A {details.get('source', '?')} run ({details.get('run_id', '?')}) of user {who} "
            f"was stopped before its next LLM call: {details.get('reason', '?')}. It had made "
            f"{details.get('llm_calls', '?')} LLM calls, {alert.window_tokens or 0:,} tokens, "
            f"${alert.window_cost_usd or 0:.4f}."
        )
    elif alert.kind == AlertLog.Kind.UNKNOWN_PLAN and details.get("refused"):
        plan = details.get("plan", "?")
        subject = f"[Weckr] Calls on plan {plan} are refused in {project.name}"
        body = (
            f"A user's call on plan {plan} was refused: the plan matches none of the "
            f"project's plans. {details.get('rule', '')} Add the plan with its cap, fix "
            "the plan name your app passes, or change WECKR['UNKNOWN_PLAN'] / "
            "WECKR['DEFAULT_PLAN']. Later refusals this month are not alerted again."
        )
    elif alert.kind == AlertLog.Kind.UNKNOWN_PLAN:
        plan = details.get("plan", "?")
        subject = f"[Weckr] Calls on plan {plan}, which Weckr does not know, in {project.name}"
        body = (
            f"This month {details.get('users', '?')} user(s) made {details.get('calls', '?')} "
            f"call(s) costing ${details.get('cost', '?')} on plan {plan}, which matches none "
            f"of the project's plans: {details.get('rule', '')} Add the plan with its cap, "
            "or fix the plan name your app passes."
        )
    else:
        subject = f"[Weckr] Test alert for {project.name}"
        body = "This is a test alert from Weckr. If you can read it, alerts reach you here."
    return AlertMessage(subject=subject, body=body)


def send_slack(url: str, message: AlertMessage) -> None:
    validate_slack_url(url)
    try:
        response = httpx.post(
            url,
            json={"text": f"*{message.subject}*\n{message.body}"},
            timeout=SLACK_TIMEOUT_SECONDS,
            follow_redirects=False,
        )
    except httpx.HTTPError as error:
        raise AlertChannelError(f"Slack: {type(error).__name__}: {error}") from error
    if not response.is_success:
        raise AlertChannelError(
            f"Slack answered HTTP {response.status_code}: {response.text.strip()[:200]}",
            retryable=response.status_code == 429 or response.status_code >= 500,
        )


def send_email(address: str, message: AlertMessage) -> None:
    sender = weckr_settings.ALERT_FROM_EMAIL or settings.DEFAULT_FROM_EMAIL
    try:
        send_mail(message.subject, message.body, sender, [address], fail_silently=False)
    except Exception as error:  # SMTP errors come in many types
        raise AlertChannelError(f"E-mail: {type(error).__name__}: {error}") from error


def deliver(alert: AlertLog) -> bool:
    """Send ``alert`` on every configured channel not yet sent; save the outcome.

    Returns True when another attempt could help (a channel failed retryably).
    """
    project = alert.project
    channels = configured_channels(project)
    alert.channels = channels
    alert.attempts += 1
    if not channels:
        alert.status = AlertLog.Status.NO_CHANNEL
        alert.error = "No channel configured: set a Slack webhook URL or an alert e-mail."
        alert.save(update_fields=("channels", "attempts", "status", "error"))
        return False

    message = compose(alert)
    details = dict(alert.details or {})
    outcome: dict[str, str] = dict(details.get("delivery") or {})
    retryable = False
    for channel in channels:
        if outcome.get(channel) == SENT:
            continue
        try:
            if channel == SLACK:
                send_slack(project.slack_webhook_url, message)
            else:
                send_email(project.alert_email, message)
        except AlertChannelError as error:
            logger.warning("Weckr alert %s: %s failed: %s", alert.pk, channel, error)
            outcome[channel] = str(error)
            retryable = retryable or error.retryable
        else:
            outcome[channel] = SENT

    sent = [channel for channel in channels if outcome.get(channel) == SENT]
    errors = [f"{channel}: {outcome[channel]}" for channel in channels if channel not in sent]
    if not errors:
        alert.status = AlertLog.Status.SENT
    elif sent:
        alert.status = AlertLog.Status.PARTIAL
    else:
        alert.status = AlertLog.Status.FAILED
    if sent and alert.sent_at is None:
        alert.sent_at = timezone.now()
    details["delivery"] = outcome
    alert.details = details
    alert.error = "\n".join(errors)
    alert.save(update_fields=("channels", "attempts", "status", "error", "sent_at", "details"))
    return retryable


def send_test_alert(project: Project) -> AlertLog:
    """Send a test alert through every configured channel, now, and return its log row."""
    alert = AlertLog.objects.create(project=project, kind=AlertLog.Kind.TEST)
    deliver(alert)
    return alert
