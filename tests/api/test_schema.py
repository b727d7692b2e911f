"""``GET /api/v1/schema``: the OpenAPI description of the wire API."""

from __future__ import annotations

import json
from typing import Any

from django.test import Client
from drf_spectacular.validation import validate_schema

from weckr_django.wire import MAX_TAGS, MAX_TOKENS_PER_CALL, TEXT_FIELDS


def schema(client: Client) -> dict[str, Any]:
    response = client.get("/api/v1/schema")
    assert response.status_code == 200, response.content
    assert response.headers["Content-Type"].startswith("application/vnd.oai.openapi+json")
    body: dict[str, Any] = json.loads(response.content)
    return body


def test_the_schema_is_public_valid_openapi_and_lists_the_api_only(
    client: Client, db: None
) -> None:
    found = schema(client)

    validate_schema(found)
    assert sorted(found["paths"]) == [
        "/api/v1/accounts/{project_id}",
        "/api/v1/check",
        "/api/v1/export/{project_id}/{kind}",
        "/api/v1/log",
        "/api/v1/log/batch",
        "/api/v1/me",
        "/api/v1/otlp/v1/traces",
        "/api/v1/recommendations/models/{project_id}",
        "/api/v1/recommendations/pricing/{project_id}",
        "/api/v1/reserve",
        "/api/v1/reserve/{reservation}",
        "/api/v1/stats/{project_id}",
        "/api/v1/track",
        "/api/v1/users/{project_id}",
    ]
    assert found["components"]["securitySchemes"] == {
        "ApiKey": {"type": "apiKey", "in": "header", "name": "x-api-key"}
    }
    assert client.get("/api/v1/schema?format=yaml").content.startswith(b"openapi: 3.0")


def test_the_event_schema_carries_the_servers_limits(client: Client, db: None) -> None:
    found = schema(client)
    properties = found["components"]["schemas"]["Event"]["properties"]

    assert properties["agent"]["maxLength"] == TEXT_FIELDS["agent"].max_length == 255
    assert properties["userId"]["oneOf"][0]["maxLength"] == 255
    assert properties["accountId"]["oneOf"][0]["maxLength"] == 255
    assert properties["tags"]["maxItems"] == MAX_TAGS
    assert properties["tags"]["items"]["maxLength"] == TEXT_FIELDS["tags"].max_length
    assert properties["inputTokens"]["maximum"] == MAX_TOKENS_PER_CALL
    for text in set(TEXT_FIELDS) - {"userId", "accountId", "feature", "step", "tags"}:
        assert properties[text]["maxLength"] == TEXT_FIELDS[text].max_length, text
    batch = found["paths"]["/api/v1/log/batch"]["post"]
    rejected = batch["responses"]["200"]["content"]["application/json"]["schema"]["properties"]
    assert set(rejected["rejected"]["items"]["properties"]) == {
        "index",
        "eventId",
        "error",
        "field",
    }
    assert set(batch["responses"]) >= {"200", "400", "401", "413", "429", "503"}


def test_every_reference_resolves(client: Client, db: None) -> None:
    found = schema(client)
    references: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("$ref"), str):
                references.add(node["$ref"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(found)

    components = found["components"]["schemas"]
    assert references == {"#/components/schemas/Error", "#/components/schemas/Event"}
    assert {reference.rsplit("/", 1)[1] for reference in references} <= set(components)
