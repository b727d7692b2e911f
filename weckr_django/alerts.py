"""Alert delivery: Slack incoming webhooks and e-mail, one ``AlertLog`` row per alert.

A Slack URL must be https and on an allowed host (``WECKR["SLACK_ALLOWED_HOSTS"]``):
the URL is typed into the admin, and the server must not be made to POST to
arbitrary internal addresses. A rejected URL is recorded as a failed channel with
the reason, never retried.

Text that users, SDK clients or the admin control (user ids, plans, run ids, the
project name...) is escaped for each channel (``slack_text``, ``plain_text``), so it
can neither mention, link nor format in Slack, nor add lines or headers to an e-mail.
"""

from __future__ import annotations

import logging
import unicodedata
from collections.abc import Callable
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


#: Turns a piece of user-controlled text into safe text for one channel.
Escape = Callable[[str], str]

#: Characters shown as ``\uXXXX``: controls (newlines included), format characters
#: (bidi overrides, zero-width) and line/paragraph separators.
_HIDDEN_CATEGORIES: Final = frozenset({"Cc", "Cf", "Zl", "Zp"})


def plain_text(text: str) -> str:
    """``text`` on one line with its invisible characters shown as escapes: user text
    cannot start a line of its own, forge an e-mail header or reorder what is shown."""
    return "".join(
        f"\\u{ord(char):04x}" if unicodedata.category(char) in _HIDDEN_CATEGORIES else char
        for char in text
    )


def slack_text(text: str) -> str:
    """``plain_text`` escaped for Slack mrkdwn (``&``, ``<``, ``>``), so user text
    cannot mention ``<!channel>``, a user, or post a ``<url|label>`` link."""
    return plain_text(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def compose(alert: AlertLog, escape: Escape = plain_text) -> AlertMessage:
    """The alert's subject and body. Every value that users, SDK clients or the admin
    control (user id, plan, run, reason, project name...) goes through ``escape``:
    ``plain_text`` for e-mail, ``slack_text`` for Slack."""
    details = alert.details or {}

    def text(value: object) -> str:
        return escape(str(value))

    def detail(name: str, missing: str = "?") -> str:
        value = details.get(name)
        return text(missing if value is None else value)

    def count(name: str) -> str:
        value = details.get(name)
        return f"{value:,}" if isinstance(value, int) else detail(name)

    project = text(alert.project.name)
    who = text(alert.user_id or ANONYMOUS_LABEL)
    plan = detail("plan")
    if alert.kind == AlertLog.Kind.LOOP:
        subject = f"[Weckr] Runaway AI usage for user {who} in {project}"
        body = (
            f"User {who} used {alert.window_tokens or 0:,} tokens "
            f"(${alert.window_cost_usd or 0:.4f}) in the last {alert.window_seconds or 0} "
            f"seconds; the threshold is {count('threshold')} tokens. "
            "An agent may be stuck in a loop."
        )
    elif alert.account_id and alert.kind in (AlertLog.Kind.SOFT_CAP, AlertLog.Kind.CAP_REACHED):
        account = text(alert.account_id)
        reached = alert.kind == AlertLog.Kind.CAP_REACHED
        subject = (
            f"[Weckr] Account {account} {'reached' if reached else 'is close to'} the "
            f"{detail('plan', '')} account cap in {project}"
        )
        body = (
            f"Account {account} on plan {plan} ({count('seats')} seat(s)) spent "
            f"${detail('spend')} of a ${detail('cap')} monthly account cap this month, all "
            f"its users together.{' Their calls are stopped until next month.' if reached else ''}"
        )
    elif alert.account_id and alert.kind == AlertLog.Kind.MARGIN:
        account = text(alert.account_id)
        subject = f"[Weckr] Margin of account {account} below threshold in {project}"
        body = (
            f"Account {account} on plan {plan} ({count('seats')} seat(s)): revenue "
            f"${detail('revenue')}, AI cost of all its users ${detail('spend')}, margin "
            f"${detail('margin')} (threshold ${detail('threshold')})."
        )
    elif alert.kind in (AlertLog.Kind.SOFT_CAP, AlertLog.Kind.CAP_REACHED):
        reached = alert.kind == AlertLog.Kind.CAP_REACHED
        subject = (
            f"[Weckr] User {who} {'reached' if reached else 'is close to'} the "
            f"{detail('plan', '')} cap in {project}"
        )
        body = (
            f"User {who} on plan {plan} spent ${detail('spend')} "
            f"of a ${detail('cap')} monthly cap this month."
        )
    elif alert.kind == AlertLog.Kind.MARGIN:
        subject = f"[Weckr] Margin of user {who} below threshold in {project}"
        body = (
            f"User {who} on plan {plan}: revenue ${detail('revenue')}, AI cost "
            f"${detail('spend')}, margin ${detail('margin')} (threshold ${detail('threshold')})."
        )
    elif alert.kind == AlertLog.Kind.BILLING_GAP:
        provider = detail("provider")
        subject = (
            f"[Weckr] {provider} billed {detail('percent')}% more than recorded on "
            f"{detail('day')} in {project}"
        )
        models = details.get("models") or []
        carried = (
            f" Models carrying it: {text('; '.join(str(m) for m in models))}." if models else ""
        )
        body = (
            f"On {detail('day')} {provider} billed ${detail('billed')}; Weckr recorded "
            f"${detail('recorded')}: a gap of ${detail('gap')} ({detail('percent')}%, the "
            f"threshold is {detail('threshold')}%).{carried} Calls made outside the "
            "instrumented path, streams without usage or out-of-date prices cause this."
        )
    elif alert.kind == AlertLog.Kind.RUN_STOPPED:
        subject = f"[Weckr] Agent run of user {who} stopped by a loop guard in {project}"
        body = (
            f"A {detail('source')} run ({detail('run_id')}) of user {who} was stopped before "
            f"its next LLM call: {detail('reason')}. It had made {count('llm_calls')} "
            f"LLM calls, {alert.window_tokens or 0:,} tokens, ${alert.window_cost_usd or 0:.4f}."
        )
    elif alert.kind == AlertLog.Kind.UNKNOWN_PLAN and details.get("refused"):
        subject = f"[Weckr] Calls on plan {plan} are refused in {project}"
        body = (
            f"A user's call on plan {plan} was refused: the plan matches none of the "
            f"project's plans. {detail('rule', '')} Add the plan with its cap, fix "
            "the plan name your app passes, or change WECKR['UNKNOWN_PLAN'] / "
            "WECKR['DEFAULT_PLAN']. Later refusals this month are not alerted again."
        )
    elif alert.kind == AlertLog.Kind.UNKNOWN_PLAN:
        subject = f"[Weckr] Calls on plan {plan}, which Weckr does not know, in {project}"
        body = (
            f"This month {count('users')} user(s) made "
            f"{count('calls')} call(s) costing ${detail('cost')} on plan "
            f"{plan}, which matches none of the project's plans: {detail('rule', '')} Add "
            "the plan with its cap, or fix the plan name your app passes."
        )
    else:
        subject = f"[Weckr] Test alert for {project}"
        body = "This is a test alert from Weckr. If you can read it, alerts reach you here."
    return AlertMessage(subject=subject, body=body)


def send_slack(url: str, message: AlertMessage) -> None:
    """Post ``message`` (composed with ``slack_text``) to a Slack incoming webhook."""
    validate_slack_url(url)
    try:
        response = httpx.post(
            url,
            json={
                "text": f"*{message.subject}*\n{message.body}",
                # No previews of links that user text may carry.
                "unfurl_links": False,
                "unfurl_media": False,
            },
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
    """Send ``message`` (composed with ``plain_text``) as a plain-text e-mail: there is
    no HTML part for user text to inject into, and the subject is one line."""
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

    slack_message = compose(alert, slack_text)
    email_message = compose(alert, plain_text)
    details = dict(alert.details or {})
    outcome: dict[str, str] = dict(details.get("delivery") or {})
    details["delivery"] = outcome
    alert.details = details
    retryable = False
    for channel in channels:
        if outcome.get(channel) == SENT:
            continue
        try:
            if channel == SLACK:
                send_slack(project.slack_webhook_url, slack_message)
            else:
                send_email(project.alert_email, email_message)
        except AlertChannelError as error:
            logger.warning("Weckr alert %s: %s failed: %s", alert.pk, channel, error)
            outcome[channel] = str(error)
            retryable = retryable or error.retryable
        else:
            outcome[channel] = SENT
            # Kept at once: the task redelivered after its worker died mid-way (acks_late)
            # does not send this channel again.
            alert.save(update_fields=("details",))

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
    alert.error = "\n".join(errors)
    alert.save(update_fields=("channels", "attempts", "status", "error", "sent_at", "details"))
    return retryable


def send_test_alert(project: Project) -> AlertLog:
    """Send a test alert through every configured channel, now, and return its log row."""
    alert = AlertLog.objects.create(project=project, kind=AlertLog.Kind.TEST)
    deliver(alert)
    return alert
