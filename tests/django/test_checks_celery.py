"""weckr.W005 and weckr.W006: the broker settings at-least-once delivery needs."""

from __future__ import annotations

from typing import Any

import pytest
from django.core.checks import run_checks
from django.test.utils import override_settings

REDIS = "redis://127.0.0.1:6379/0"
GOOD = {
    "CELERY_TASK_ALWAYS_EAGER": False,
    "CELERY_BROKER_TRANSPORT_OPTIONS": {"visibility_timeout": 600},
    "CELERY_WORKER_PREFETCH_MULTIPLIER": 1,
}


def celery_messages(**celery_settings: Any) -> dict[str, str]:
    with override_settings(**{**GOOD, **celery_settings}):
        return {
            message.id: message.msg
            for message in run_checks()
            if message.id in ("weckr.W005", "weckr.W006")
        }


def test_the_recommended_settings_pass() -> None:
    assert celery_messages(CELERY_BROKER_URL=REDIS) == {}
    assert celery_messages(CELERY_BROKER_URL="sqs://", CELERY_WORKER_PREFETCH_MULTIPLIER=1) == {}


@pytest.mark.parametrize("broker", [REDIS, "rediss://cache:6380/1", "sentinel://s1:26379"])
def test_a_redis_broker_without_a_visibility_timeout_is_reported(broker: str) -> None:
    messages = celery_messages(CELERY_BROKER_URL=broker, CELERY_BROKER_TRANSPORT_OPTIONS={})

    assert set(messages) == {"weckr.W005"}
    assert "an hour" in messages["weckr.W005"]


def test_sqs_keeps_its_own_default() -> None:
    messages = celery_messages(CELERY_BROKER_URL="sqs://", CELERY_BROKER_TRANSPORT_OPTIONS=None)

    assert "30 minutes" in messages["weckr.W005"]


@pytest.mark.parametrize(
    ("timeout", "reported", "says"),
    [
        (3600, True, "wait that long"),
        (300, True, "run twice"),
        ("soon", True, "not a number"),
        (600, False, ""),
        (900, False, ""),
    ],
)
def test_the_visibility_timeout_must_be_minutes_and_outlast_retries(
    timeout: object, reported: bool, says: str
) -> None:
    messages = celery_messages(
        CELERY_BROKER_URL=REDIS,
        CELERY_BROKER_TRANSPORT_OPTIONS={"visibility_timeout": timeout, "region": "x"},
    )

    assert ("weckr.W005" in messages) is reported
    assert says in messages.get("weckr.W005", "")


def test_a_prefetch_multiplier_above_one_is_reported() -> None:
    messages = celery_messages(
        CELERY_BROKER_URL="amqp://guest@rabbit//", CELERY_WORKER_PREFETCH_MULTIPLIER=4
    )

    assert set(messages) == {"weckr.W006"}
    assert "is 4" in messages["weckr.W006"]
    # Redis workers that only fetch when a process is free hold nothing in advance.
    assert (
        celery_messages(
            CELERY_BROKER_URL=REDIS,
            CELERY_WORKER_PREFETCH_MULTIPLIER=4,
            CELERY_WORKER_DISABLE_PREFETCH=True,
        )
        == {}
    )


def test_nothing_is_reported_without_a_broker_or_with_eager_tasks() -> None:
    assert celery_messages(CELERY_BROKER_URL=None, CELERY_BROKER_TRANSPORT_OPTIONS={}) == {}
    assert (
        celery_messages(
            CELERY_BROKER_URL=REDIS,
            CELERY_TASK_ALWAYS_EAGER=True,
            CELERY_BROKER_TRANSPORT_OPTIONS={},
            CELERY_WORKER_PREFETCH_MULTIPLIER=8,
        )
        == {}
    )
