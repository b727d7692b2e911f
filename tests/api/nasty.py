"""Values that have broken, or could break, a server reading JSON: for the fuzz tests
of the API here and against the real stack in ``tests/integration``."""

from __future__ import annotations

from typing import Any

#: Every field of a wire event.
EVENT_FIELDS = [
    "eventId",
    "timestamp",
    "userId",
    "accountId",
    "feature",
    "planName",
    "planRevenueUsd",
    "provider",
    "model",
    "requestedModel",
    "inputTokens",
    "outputTokens",
    "cachedInputTokens",
    "cacheCreationTokens",
    "reasoningTokens",
    "costUsd",
    "latencyMs",
    "status",
    "errorType",
    "usageReported",
    "source",
    "runId",
    "parentRunId",
    "agent",
    "task",
    "step",
    "tags",
    "reservationId",
]

#: The text PostgreSQL or UTF-8 cannot hold, and text that is too long.
UNSTORABLE_TEXT = ["\x00", "a\x00b", "\ud800", "x\udfffy", "\udc00\ud800", "x" * 100_000]

NASTY_VALUES: list[Any] = [
    None,
    True,
    False,
    0,
    -1,
    1.5,
    -0.0,
    10**30,
    -(10**30),
    1e308,
    "",
    " ",
    *UNSTORABLE_TEXT,
    "é" * 300,
    "🙂" * 200,
    "\u202e\ufeff\uffff",
    "9" * 5000,
    [],
    [None],
    ["\x00"],
    ["\ud800"],
    ["ok", 5],
    ["x" * 101],
    ["a"] * 33,
    {},
    {"a": {"b": []}},
    [[["deep"]]],
    "2024-13-45T99:99:99",
    "0001-01-01T00:00:00+23:59",
    "NaN",
    "Infinity",
    "<script>",
    "'; DROP TABLE weckr_django_usageevent; --",
    "4111.1111.1111.1111",
    "jane@example.com",
    "+49 151 12345678",
    "DE89 3704 0044 0532 0130 00",
]
