"""The OpenAPI 3 description of the wire API, served at ``GET /api/v1/schema``.

The views read their JSON bodies themselves (see ``views``), so there are no
serializers to introspect: the request and response bodies are written out here,
with the limits of ``weckr_django.wire`` (one source for the rules and their
description).
"""

from __future__ import annotations

from typing import Any

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.openapi import AutoSchema
from drf_spectacular.renderers import OpenApiJsonRenderer, OpenApiYamlRenderer
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse
from drf_spectacular.views import SpectacularAPIView

from weckr_core.records import SOURCES
from weckr_django.api.authentication import HEADER
from weckr_django.wire import (
    MAX_LATENCY_MS,
    MAX_TAGS,
    MAX_TOKENS_PER_CALL,
    TEXT_FIELDS,
)

Schema = dict[str, Any]

__all__ = ["AutoSchema", "SchemaView"]


def _text(key: str, description: str = "", **extra: Any) -> Schema:
    schema: Schema = {"type": "string", "maxLength": TEXT_FIELDS[key].max_length, **extra}
    if description:
        schema["description"] = description
    return schema


def _opaque(key: str, description: str) -> Schema:
    return {
        "oneOf": [_text(key), {"type": "integer"}],
        "nullable": True,
        "description": description
        + " No e-mail address, card number, IBAN or phone number (answered 400).",
    }


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


_TOKENS: Schema = {"type": "integer", "minimum": 0, "maximum": MAX_TOKENS_PER_CALL}
_USD: Schema = {"type": "number", "nullable": True}
ERROR: Schema = {
    "type": "object",
    "properties": {
        "error": {"type": "string", "description": "What is wrong, in a sentence."},
        "field": {"type": "string", "nullable": True, "description": "The field at fault."},
    },
    "required": ["error", "field"],
}

EVENT: Schema = {
    "type": "object",
    "description": "One LLM call, as weckr-sdk sends it. Unknown fields are ignored.",
    "required": ["model"],
    "example": {
        "eventId": "evt-1",
        "userId": "42",
        "feature": "summaries",
        "planName": "pro",
        "model": "gpt-4o",
        "provider": "openai",
        "inputTokens": 1200,
        "outputTokens": 300,
    },
    "properties": {
        "eventId": _text(
            "eventId",
            "Client-generated; a resend is not counted twice.",
            pattern=r"^[A-Za-z0-9._:\-]+$",
        ),
        "timestamp": _text("timestamp", "ISO 8601; at most 400 days old.", format="date-time"),
        "userId": _opaque("userId", "Opaque user id, such as the database primary key."),
        "accountId": _opaque(
            "accountId", "Opaque id of the paying customer (workspace, team), when not the user."
        ),
        "feature": _opaque("feature", "The product feature that made the call."),
        "planName": _text("planName", "The user's plan.", nullable=True),
        "planRevenueUsd": {"type": "number", "minimum": 0, "maximum": 10**9, "nullable": True},
        "provider": _text("provider", nullable=True),
        "model": _text("model", minLength=1),
        "requestedModel": _text("requestedModel", "The model asked for, when downgraded."),
        "inputTokens": _TOKENS,
        "outputTokens": _TOKENS,
        "cachedInputTokens": {**_TOKENS, "description": "Part of inputTokens."},
        "cacheCreationTokens": _TOKENS,
        "reasoningTokens": _TOKENS,
        "costUsd": {"type": "number", "nullable": True, "description": "Ignored: recomputed."},
        "latencyMs": {"type": "number", "minimum": 0, "maximum": MAX_LATENCY_MS, "nullable": True},
        "status": {"type": "string", "enum": ["ok", "error"]},
        "errorType": _text("errorType"),
        "usageReported": {"type": "boolean"},
        "source": {"type": "string", "enum": list(SOURCES)},
        "runId": _text("runId"),
        "parentRunId": _text("parentRunId"),
        "agent": _text("agent"),
        "task": _text("task"),
        "step": {"oneOf": [_text("step"), {"type": "integer"}]},
        "tags": {"type": "array", "maxItems": MAX_TAGS, "items": _text("tags")},
        "reservationId": _text("reservationId", pattern=r"^[A-Za-z0-9\-]+$"),
    },
}

EVENT_REF = _ref("Event")

LOGGED: Schema = {
    "type": "object",
    "properties": {
        "ok": {"type": "boolean"},
        "eventId": {"type": "string"},
        "duplicate": {"type": "boolean"},
        "costUsd": _USD,
    },
    "required": ["ok", "eventId", "duplicate", "costUsd"],
}

BATCH: Schema = {
    "type": "object",
    "required": ["events"],
    "properties": {"events": {"type": "array", "items": _ref("Event")}},
}

BATCH_RESULT: Schema = {
    "type": "object",
    "properties": {
        "accepted": {"type": "integer", "description": "Events stored now."},
        "duplicates": {"type": "integer", "description": "Events known already."},
        "rejected": {
            "type": "array",
            "description": "Events not stored, each with its index in the batch and why.",
            "items": {
                "type": "object",
                "properties": {
                    "index": {"type": "integer"},
                    "eventId": {"type": "string", "nullable": True},
                    "error": {"type": "string"},
                    "field": {"type": "string", "nullable": True},
                },
                "required": ["index", "eventId", "error", "field"],
            },
        },
    },
    "required": ["accepted", "duplicates", "rejected"],
}

RESERVE: Schema = {
    "type": "object",
    "required": ["model", "inputTokens"],
    "properties": {
        "userId": _opaque("userId", "Opaque user id."),
        "accountId": _opaque("accountId", "Opaque account id: the account's cap applies too."),
        "planName": _text("planName", nullable=True),
        "model": _text("model", minLength=1),
        "provider": _text("provider", nullable=True),
        "inputTokens": _TOKENS,
        "maxOutputTokens": {**_TOKENS, "nullable": True},
    },
}

DECISION: Schema = {
    "type": "object",
    "properties": {
        "allowed": {"type": "boolean"},
        "action": {"type": "string", "nullable": True},
        "alternativeModel": {"type": "string", "nullable": True},
        "currentSpend": _USD,
        "cap": _USD,
        "remainingBudget": _USD,
        "inFlight": _USD,
        "plan": {"type": "string", "nullable": True},
        "reason": {"type": "string", "nullable": True},
        "accountId": {
            "type": "string",
            "nullable": True,
            "description": "Set when the cap reported is this account's (all its users "
            "together), not the user's own.",
        },
    },
}

RESERVED: Schema = {
    **DECISION,
    "properties": {
        **DECISION["properties"],
        "reservation": {
            "type": "object",
            "nullable": True,
            "properties": {
                "id": {"type": "string"},
                "amountUsd": _USD,
                "model": {"type": "string"},
            },
        },
    },
}

OBJECT: Schema = {"type": "object", "additionalProperties": True}

_COUNT: Schema = {"type": "integer", "minimum": 0}
TRACK: Schema = {
    "oneOf": [
        {
            "title": "Tokenr",
            "description": "One call, as Tokenr's SDK posts it (input_tokens leaves out "
            "cache_read_tokens). team_id is the user; a user_id in tags wins over it.",
            "type": "object",
            "required": ["model", "input_tokens", "output_tokens"],
            "properties": {
                "provider": {"type": "string"},
                "model": {"type": "string"},
                "input_tokens": _COUNT,
                "output_tokens": _COUNT,
                "cache_read_tokens": _COUNT,
                "cache_write_tokens": _COUNT,
                "agent_id": {"type": "string"},
                "feature_name": {"type": "string"},
                "team_id": {"type": "string"},
                "status": {"type": "string", "enum": ["success", "error"]},
                "latency_ms": {"type": "number"},
                "tags": OBJECT,
                "requested_at": {"type": "string", "format": "date-time"},
            },
        },
        {
            "title": "AICostManager",
            "description": "Up to 1,000 records, as AICostManager's SDK posts them: the "
            "provider's raw usage object in payload, priced here. response_id is the "
            "event id; customer_key is the user, unless context names a user_id.",
            "type": "object",
            "required": ["tracked"],
            "properties": {
                "tracked": {
                    "type": "array",
                    "maxItems": 1000,
                    "items": {
                        "type": "object",
                        "required": ["service_key"],
                        "properties": {
                            "service_key": {"type": "string", "example": "openai::gpt-4o-mini"},
                            "response_id": {"type": "string"},
                            "timestamp": {"type": "string", "description": "Epoch seconds."},
                            "payload": OBJECT,
                            "customer_key": {"type": "string"},
                            "context": OBJECT,
                        },
                    },
                }
            },
        },
    ]
}

TRACKED: Schema = {
    "oneOf": [
        {
            "title": "Tokenr",
            "type": "object",
            "properties": {
                "ok": {"type": "boolean"},
                "eventId": {"type": "string"},
                "cost": _USD,
                "costUsd": _USD,
            },
        },
        {
            "title": "AICostManager",
            "type": "object",
            "properties": {
                "results": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {
                            "response_id": {"type": "string", "nullable": True},
                            "status": {
                                "type": "string",
                                "enum": ["completed", "error", "service_key_unknown"],
                            },
                            "cost": {**_USD, "nullable": True},
                            "errors": {"type": "array", "items": {"type": "string"}},
                        },
                    },
                },
                "triggered_limits": OBJECT,
            },
        },
    ]
}

CHECK_PARAMETERS = [
    OpenApiParameter(name, str, OpenApiParameter.QUERY, description=description)
    for name, description in (
        ("userId", "Opaque user id; with no user and no account the call is not capped."),
        ("accountId", "Opaque account id: the account's cap applies too."),
        ("planName", "The user's (or account's) plan."),
        ("model", "The model about to be called."),
    )
]
MONTH_PARAMETER = OpenApiParameter(
    "month",
    str,
    OpenApiParameter.QUERY,
    description="The calendar month, YYYY-MM, in the project's timezone; default: this month.",
)
HOLDER_PARAMETERS = [
    OpenApiParameter(
        "userId", str, OpenApiParameter.QUERY, description="The reservation's user (or accountId)."
    ),
    OpenApiParameter(
        "accountId", str, OpenApiParameter.QUERY, description="The reservation's account, if any."
    ),
]


def answers(success: dict[int, Schema | None], *errors: int) -> dict[int, Any]:
    """The answers of an endpoint: its successes with their bodies, the errors it
    gives, and those every endpoint can give (a bad or revoked key, the rate limit,
    the database down)."""
    found: dict[int, Any] = {
        status: None if body is None else OpenApiResponse(body) for status, body in success.items()
    }
    for status in (*errors, 401, 403, 429, 503):
        found[status] = OpenApiResponse(_ref("Error"))
    return found


class ApiKeyScheme(OpenApiAuthenticationExtension):  # type: ignore[no-untyped-call]
    """The ``x-api-key`` header of ``ApiKeyAuthentication``."""

    target_class = "weckr_django.api.authentication.ApiKeyAuthentication"
    name = "ApiKey"

    def get_security_definition(self, auto_schema: Any) -> Schema:
        return {"type": "apiKey", "in": "header", "name": HEADER}


def weckr_endpoints_only(endpoints: list[Any], **_: Any) -> list[Any]:
    """Preprocessing hook: the wire API's endpoints, not the host project's."""
    from weckr_django.api.views import WeckrAPIView

    return [
        (path, regex, method, callback)
        for path, regex, method, callback in endpoints
        if issubclass(getattr(callback, "cls", object), WeckrAPIView)
    ]


class SchemaView(SpectacularAPIView):
    """``GET /api/v1/schema``: the OpenAPI 3 description, JSON (``Accept:
    application/yaml`` or ``?format=yaml`` for YAML). Public: it holds no data."""

    renderer_classes = [OpenApiJsonRenderer, OpenApiYamlRenderer]
    authentication_classes: list[Any] = []
    custom_settings = {
        "TITLE": "Weckr API",
        "DESCRIPTION": "Usage events in, caps and margins out; wire-compatible with weckr-sdk.",
        "VERSION": "1",
        "PREPROCESSING_HOOKS": ["weckr_django.api.schema.weckr_endpoints_only"],
        "APPEND_COMPONENTS": {"schemas": {"Error": ERROR, "Event": EVENT}},
        # The enums stay inline: the default hook would move them out of the raw schemas.
        "POSTPROCESSING_HOOKS": [],
    }
