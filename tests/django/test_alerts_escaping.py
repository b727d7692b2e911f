"""User-controlled text in alerts can neither mention, link nor format in Slack, nor
add lines or headers to an e-mail."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import httpx
import pytest
from django.core import mail
from django.core.mail import EmailMessage
from django.core.mail.backends import locmem
from django.test.utils import override_settings

from weckr_django import alerts, tasks
from weckr_django.models import AlertLog, Project

from .helpers import make_plan, make_project

pytestmark = pytest.mark.django_db

SLACK_URL = "https://hooks.slack.com/services/T/B/X"
ISSUE_PAYLOAD = "<!channel> <https://evil.test/login|Reset your password>"
PAYLOADS = [
    ISSUE_PAYLOAD,
    "<!here|here> <!everyone> <@U024BE7LH> <#C024BE7LR> <!subteam^S1>",
    "<mailto:ceo@example.com|the CEO>",
    "&lt;!channel&gt; already escaped",
    "u1\n\n*Your account is locked*: https://evil.test\r\nBcc: victim@example.com",
    "u1\u2028second line\u2029\u202egnp.exe\u200b",
]


@pytest.fixture
def slack_posts(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """The JSON bodies posted to Slack's webhook (answered 200, as Slack does)."""
    posts: list[dict[str, Any]] = []

    def post(url: str, *, json: dict[str, Any], **kwargs: Any) -> httpx.Response:
        posts.append(json)
        return httpx.Response(200, text="ok", request=httpx.Request("POST", url))

    monkeypatch.setattr(httpx, "post", post)
    return posts


def assert_inert_in_slack(text: str, payload: str) -> None:
    # Slack's controls all start with "<"; the templates have none, so any "<" or
    # ">" would have come from the payload.
    assert "<" not in text
    assert ">" not in text
    assert re.fullmatch(r"([^&]|&(amp|lt|gt);)*", text), "a bare & in the message"
    assert "\n" not in text.split("\n", 1)[1], "user text started a line of its own"
    escaped = alerts.slack_text(payload)
    assert escaped in text


def alert_of_every_kind(project: Project, payload: str) -> list[AlertLog]:
    """One alert of each kind, each with ``payload`` in every user-controlled field."""
    values = {
        "plan": payload,
        "spend": "1.2345",
        "cap": "1.00",
        "revenue": "20.00",
        "margin": "-1.00",
        "threshold": "0.00",
        "rule": payload,
        "users": 1,
        "calls": 2,
        "cost": "0.10",
    }
    stop = {"run_id": payload, "reason": payload, "source": payload, "llm_calls": 9}
    kinds: list[tuple[str, dict[str, Any]]] = [
        (AlertLog.Kind.LOOP, {"threshold": 1000}),
        (AlertLog.Kind.SOFT_CAP, values),
        (AlertLog.Kind.CAP_REACHED, values),
        (AlertLog.Kind.MARGIN, values),
        (AlertLog.Kind.RUN_STOPPED, stop),
        (AlertLog.Kind.UNKNOWN_PLAN, values),
        (AlertLog.Kind.UNKNOWN_PLAN, {**values, "refused": True}),
        (AlertLog.Kind.TEST, {}),
    ]
    return [
        AlertLog.objects.create(project=project, kind=kind, user_id=payload, details=details)
        for kind, details in kinds
    ]


def test_the_issue_payload_is_posted_as_text(slack_posts: list[dict[str, Any]]) -> None:
    project = make_project(slack_webhook_url=SLACK_URL)
    alert = AlertLog.objects.create(
        project=project,
        kind=AlertLog.Kind.LOOP,
        user_id=ISSUE_PAYLOAD,
        window_seconds=300,
        window_tokens=60_000,
        details={"threshold": 50_000},
    )

    alerts.deliver(alert)

    alert.refresh_from_db()
    assert alert.status == AlertLog.Status.SENT
    [post] = slack_posts
    assert "&lt;!channel&gt; &lt;https://evil.test/login|Reset your password&gt;" in post["text"]
    assert_inert_in_slack(post["text"], ISSUE_PAYLOAD)
    assert (post["unfurl_links"], post["unfurl_media"]) == (False, False)


@pytest.mark.parametrize("payload", PAYLOADS)
def test_every_user_controlled_field_is_escaped_for_slack(payload: str) -> None:
    project = make_project(name=payload)
    for alert in alert_of_every_kind(project, payload):
        message = alerts.compose(alert, alerts.slack_text)
        assert_inert_in_slack(f"*{message.subject}*\n{message.body}", payload)


@pytest.mark.parametrize("payload", PAYLOADS)
def test_an_email_alert_keeps_user_text_on_its_line(payload: str) -> None:
    project = make_project(name=payload, alert_email="ops@example.com")
    created = alert_of_every_kind(project, payload)
    for alert in created:
        alerts.deliver(alert)

    assert len(mail.outbox) == len(created)
    for sent in mail.outbox:
        assert (sent.to, sent.cc, sent.bcc) == (["ops@example.com"], [], [])
        assert not getattr(sent, "alternatives", None), "an HTML part"
        assert alerts.plain_text(payload) in sent.subject
        assert "\n" not in sent.body and "\r" not in sent.body
        assert sent.message()["Bcc"] is None


def test_plain_text_loses_nothing_and_keeps_ordinary_text() -> None:
    assert alerts.plain_text(ISSUE_PAYLOAD) == ISSUE_PAYLOAD
    assert alerts.plain_text("Zoë 用户 🙂 a*b_c~d`e") == "Zoë 用户 🙂 a*b_c~d`e"
    assert alerts.plain_text("a\nb\u202ec\x00") == "a\\u000ab\\u202ec\\u0000"
    assert alerts.slack_text("R&D <b>") == "R&amp;D &lt;b&gt;"


def test_alerts_raised_from_client_input_reach_slack_inert(
    slack_posts: list[dict[str, Any]], django_capture_on_commit_callbacks: Any
) -> None:
    project = make_project(slack_webhook_url=SLACK_URL)
    make_plan(project, "pro", cap="10")
    stop = {
        "run_id": ISSUE_PAYLOAD,
        "reason": "<!here> call <tel:+15550100|support>",
        "source": "langchain",
        "llm_calls": 40,
        "tokens": 90_000,
        "cost_usd": "1.5",
        "user_id": ISSUE_PAYLOAD,
        "plan": "pro",
        "feature": "<!channel>",
        "agent": "<@U1>",
    }
    with django_capture_on_commit_callbacks(execute=True):
        tasks.record_run_stop(str(project.pk), stop)
        tasks.unknown_plan_refused(str(project.pk), ISSUE_PAYLOAD)

    assert len(slack_posts) == 2
    for post in slack_posts:
        assert_inert_in_slack(post["text"], ISSUE_PAYLOAD)


class DyingAfterSlackBackend(locmem.EmailBackend):
    """The worker is killed while the e-mail is being sent."""

    def send_messages(self, messages: Sequence[EmailMessage]) -> int:
        raise SystemExit("kill -9")


def test_a_redelivered_alert_does_not_post_to_slack_again(
    slack_posts: list[dict[str, Any]],
) -> None:
    project = make_project(slack_webhook_url=SLACK_URL, alert_email="ops@example.com")
    alert = AlertLog.objects.create(project=project, kind=AlertLog.Kind.TEST)
    with (
        override_settings(EMAIL_BACKEND=f"{__name__}.DyingAfterSlackBackend"),
        pytest.raises(SystemExit),
    ):
        tasks.dispatch_alert(alert.pk)
    assert len(slack_posts) == 1

    assert tasks.dispatch_alert(alert.pk) == AlertLog.Status.SENT  # the redelivery

    assert len(slack_posts) == 1
    assert len(mail.outbox) == 1
    alert.refresh_from_db()
    assert alert.details["delivery"] == {"slack": "sent", "email": "sent"}
