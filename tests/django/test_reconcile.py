"""Recorded spend against the providers' bills. The fake transports answer in the
documented shapes:

- OpenAI Costs API, https://platform.openai.com/docs/api-reference/usage/costs:
  ``{"object": "page", "data": [{"object": "bucket", "start_time", "end_time",
  "results": [{"object": "organization.costs.result", "amount": {"value", "currency"},
  "line_item"}]}], "has_more", "next_page"}``, amounts in dollars;
- Anthropic cost report, https://docs.claude.com/en/docs/build-with-claude/usage-cost-api
  (https://platform.claude.com/docs/en/api/admin/cost_report/retrieve): ``{"data":
  [{"starting_at", "ending_at", "results": [{"amount", "currency", "description",
  "model", "cost_type"}]}], "has_more", "next_page"}``, amounts as decimal strings in
  cents ("123.45" in "USD" is $1.23);
- OpenAI completions usage, https://platform.openai.com/docs/api-reference/usage/completions:
  buckets as the Costs API's, each result ``{"object":
  "organization.usage.completions.result", "input_tokens", "output_tokens",
  "input_cached_tokens", "num_model_requests", "project_id", "user_id", "api_key_id",
  "model", "batch"}`` (``input_tokens`` counts the cached ones too);
- Anthropic messages usage report,
  https://docs.claude.com/en/api/admin-api/usage-cost/get-messages-usage-report: buckets as
  the cost report's, each result ``{"uncached_input_tokens", "cache_creation":
  {"ephemeral_1h_input_tokens", "ephemeral_5m_input_tokens"}, "cache_read_input_tokens",
  "output_tokens", "server_tool_use", "api_key_id", "workspace_id", "model",
  "service_tier", "context_window"}``.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from django.contrib.auth.models import User
from django.core.management import CommandError, call_command
from django.test import Client, override_settings

from tests.django.helpers import make_record
from weckr_django import reconcile
from weckr_django.alerts import compose
from weckr_django.ingest import ingest_records
from weckr_django.models import AlertLog, BilledCost, Project

pytestmark = pytest.mark.django_db

TODAY = datetime.now(UTC).date()
YESTERDAY = TODAY - timedelta(days=1)


def epoch(day: date) -> int:
    return int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp())


def openai_pages(request: httpx.Request) -> httpx.Response:
    """Two pages: yesterday, then today (the cursor is the provider's, opaque)."""
    if request.headers.get("authorization") != "Bearer sk-admin-openai":
        body = {"error": {"message": "Incorrect API key provided", "code": "invalid_api_key"}}
        return httpx.Response(401, json=body)
    query = parse_qs(urlsplit(str(request.url)).query)
    assert query["bucket_width"] == ["1d"] and query["group_by"] == ["line_item"]

    def bucket(day: date, results: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "object": "bucket",
            "start_time": epoch(day),
            "end_time": epoch(day + timedelta(days=1)),
            "results": results,
        }

    def result(line_item: str, value: float) -> dict[str, Any]:
        return {
            "object": "organization.costs.result",
            "amount": {"value": value, "currency": "usd"},
            "line_item": line_item,
            "project_id": None,
        }

    if "page" not in query:
        data = [
            bucket(
                YESTERDAY,
                [result("gpt-4o-2024-08-06, input", 1.5), result("gpt-4o-2024-08-06, output", 0.5)],
            )
        ]
        return httpx.Response(
            200, json={"object": "page", "data": data, "has_more": True, "next_page": "page_AAA="}
        )
    assert query["page"] == ["page_AAA="]
    data = [bucket(TODAY, [result("gpt-4o-mini-2024-07-18, input", 0.25)])]
    return httpx.Response(
        200, json={"object": "page", "data": data, "has_more": False, "next_page": None}
    )


def anthropic_page(request: httpx.Request) -> httpx.Response:
    if request.headers.get("x-api-key") != "sk-ant-admin-key":
        body = {"type": "error", "error": {"type": "authentication_error", "message": "invalid"}}
        return httpx.Response(401, json=body)
    assert request.headers["anthropic-version"] == "2023-06-01"
    data = [
        {
            "starting_at": f"{YESTERDAY}T00:00:00Z",
            "ending_at": f"{TODAY}T00:00:00Z",
            "results": [
                {
                    "amount": "12345.6",  # cents: $123.456
                    "currency": "USD",
                    "cost_type": "tokens",
                    "description": "Claude Sonnet 4 Usage - Input Tokens",
                    "model": "claude-sonnet-4-20250514",
                    "token_type": "uncached_input_tokens",
                },
                {"amount": "50", "currency": "USD", "cost_type": "web_search"},
            ],
        }
    ]
    return httpx.Response(200, json={"data": data, "has_more": False, "next_page": None})


def openai_key_usage(request: httpx.Request) -> httpx.Response:
    """Yesterday: the app's key used exactly the gpt-4o tokens Weckr records in the
    tests (1,000 in, 500 out) and a batch job's key 42,000 more; today both used a
    little gpt-4o-mini, which Weckr recorded none of."""
    if request.headers.get("authorization") != "Bearer sk-admin-openai":
        return httpx.Response(401, json={"error": {"message": "Incorrect API key provided"}})
    query = parse_qs(urlsplit(str(request.url)).query)
    assert query["bucket_width"] == ["1d"] and query["group_by"] == ["api_key_id", "model"]

    def result(key_id: str, model: str, tokens_in: int, tokens_out: int) -> dict[str, Any]:
        return {
            "object": "organization.usage.completions.result",
            "input_tokens": tokens_in,
            "output_tokens": tokens_out,
            "input_cached_tokens": tokens_in // 4,
            "num_model_requests": 3,
            "project_id": None,
            "user_id": None,
            "api_key_id": key_id,
            "model": model,
            "batch": None,
        }

    data = [
        {
            "object": "bucket",
            "start_time": epoch(day),
            "end_time": epoch(day + timedelta(days=1)),
            "results": results,
        }
        for day, results in (
            (
                YESTERDAY,
                [
                    result("key_app", "gpt-4o-2024-08-06", 1000, 500),
                    result("key_batch", "gpt-4o-2024-08-06", 40_000, 2_000),
                ],
            ),
            (
                TODAY,
                [
                    result("key_app", "gpt-4o-mini-2024-07-18", 250, 50),
                    result("key_batch", "gpt-4o-mini-2024-07-18", 200, 100),
                ],
            ),
        )
    ]
    return httpx.Response(
        200, json={"object": "page", "data": data, "has_more": False, "next_page": None}
    )


def anthropic_key_usage(request: httpx.Request) -> httpx.Response:
    """Two keys with the same Claude tokens yesterday, and a call from the Console
    (no key)."""
    assert request.headers.get("x-api-key") == "sk-ant-admin-key"
    query = parse_qs(urlsplit(str(request.url)).query)
    assert query["group_by[]"] == ["api_key_id", "model"]

    def result(key_id: str | None, uncached: int) -> dict[str, Any]:
        return {
            "uncached_input_tokens": uncached,
            "cache_creation": {"ephemeral_1h_input_tokens": 0, "ephemeral_5m_input_tokens": 100},
            "cache_read_input_tokens": 400,
            "output_tokens": 300,
            "server_tool_use": {"web_search_requests": 0},
            "api_key_id": key_id,
            "workspace_id": None,
            "model": "claude-sonnet-4-20250514",
            "service_tier": "standard",
            "context_window": "0-200k",
        }

    data = [
        {
            "starting_at": f"{YESTERDAY}T00:00:00Z",
            "ending_at": f"{TODAY}T00:00:00Z",
            "results": [
                result("apikey_01A", 200),
                result("apikey_01B", 200),
                result(None, 1200),
            ],
        }
    ]
    return httpx.Response(200, json={"data": data, "has_more": False, "next_page": None})


def client_for(handler: Any) -> httpx.Client:
    return httpx.Client(transport=httpx.MockTransport(handler))


def test_openais_costs_are_read_page_by_page() -> None:
    lines = reconcile.fetch("openai", "sk-admin-openai", YESTERDAY, TODAY, client_for(openai_pages))
    assert [(line.day, line.model, line.amount_usd) for line in lines] == [
        (YESTERDAY, "gpt-4o-2024-08-06", Decimal("1.5")),
        (YESTERDAY, "gpt-4o-2024-08-06", Decimal("0.5")),
        (TODAY, "gpt-4o-mini-2024-07-18", Decimal("0.25")),
    ]


def test_anthropics_cost_report_is_in_cents() -> None:
    lines = reconcile.fetch(
        "anthropic", "sk-ant-admin-key", YESTERDAY, TODAY, client_for(anthropic_page)
    )
    assert [(line.model, line.line_item, line.amount_usd) for line in lines] == [
        ("claude-sonnet-4-20250514", "Claude Sonnet 4 Usage - Input Tokens", Decimal("123.456")),
        ("", "web_search", Decimal("0.5")),
    ]


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_a_rejected_key_is_said_without_showing_it(provider: str) -> None:
    handler = openai_pages if provider == "openai" else anthropic_page
    with pytest.raises(reconcile.BillingError) as caught:
        reconcile.fetch(provider, "sk-not-admin", YESTERDAY, TODAY, client_for(handler))
    assert "refused the admin key (HTTP 401)" in str(caught.value)
    assert "sk-not-admin" not in str(caught.value)


def test_an_answer_that_is_not_a_report_is_an_error() -> None:
    def odd(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"data": [{"start_time": "yesterday", "results": []}]})

    with pytest.raises(reconcile.BillingError, match="without a start time"):
        reconcile.fetch("openai", "sk-admin-openai", YESTERDAY, TODAY, client_for(odd))


def test_a_day_with_a_gap_names_the_models_that_carry_it() -> None:
    project = Project.objects.create(name="Billed")
    # Recorded: one gpt-4o call yesterday; the bill has $2 of gpt-4o that day.
    noon = datetime(YESTERDAY.year, YESTERDAY.month, YESTERDAY.day, 12, tzinfo=UTC)
    [record] = [make_record("r1", model="gpt-4o", when=noon)]
    ingest_records(project, [record])
    lines = reconcile.fetch("openai", "sk-admin-openai", YESTERDAY, TODAY, client_for(openai_pages))
    assert reconcile.store(project, lines, YESTERDAY, TODAY, "openai") == 3

    [today, yesterday] = reconcile.comparison(project, YESTERDAY, TODAY)
    recorded = yesterday.recorded_usd
    assert recorded > 0
    assert (yesterday.billed_usd, yesterday.gap_usd) == (Decimal(2), Decimal(2) - recorded)
    assert yesterday.models[0].model == "gpt-4o"  # dated snapshot and name meet
    assert (today.billed_usd, today.recorded_usd) == (Decimal("0.25"), Decimal(0))
    # Fetching again replaces the days' bill rather than adding to it.
    reconcile.store(project, lines, YESTERDAY, TODAY, "openai")
    assert BilledCost.objects.filter(project=project).count() == 3


@pytest.fixture
def fake_openai() -> Iterator[str]:
    """OpenAI's Costs API (as ``openai_pages``) and completions usage (as
    ``openai_key_usage``) on a local port."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            request = httpx.Request(
                "GET", f"http://fake{self.path}", headers=dict(self.headers.items())
            )
            handler = openai_key_usage if "/usage/" in self.path else openai_pages
            response = handler(request)
            body = response.content
            self.send_response(response.status_code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1/organization/costs"
    finally:
        server.shutdown()
        server.server_close()


def test_the_command_fetches_stores_and_prints_the_gap(
    fake_openai: str, capsys: pytest.CaptureFixture[str]
) -> None:
    project = Project.objects.create(name="Billed")
    with override_settings(WECKR={"DELIVERY": "sync", "OPENAI_ADMIN_KEY": "sk-admin-openai"}):
        call_command(
            "weckr_reconcile", "--project", "Billed", "--days", "2", "--openai-url", fake_openai
        )
    said = capsys.readouterr().out
    assert "openai: 3 billed line(s)" in said
    assert f"{YESTERDAY} openai: billed $2.00, recorded $0.00, gap $2.00 (100.0%)" in said
    assert "sk-admin-openai" not in said
    assert BilledCost.objects.filter(project=project).count() == 3

    with (
        override_settings(WECKR={"DELIVERY": "sync", "OPENAI_ADMIN_KEY": "sk-wrong"}),
        pytest.raises(CommandError, match="refused the admin key"),
    ):
        call_command("weckr_reconcile", "--project", "Billed", "--openai-url", fake_openai)
    with (
        override_settings(WECKR={"DELIVERY": "sync"}),
        pytest.raises(CommandError, match="No admin key"),
    ):
        call_command("weckr_reconcile", "--project", "Billed")


def test_the_recorded_vs_billed_page() -> None:
    staff = User.objects.create_user("staff", password="pw", is_staff=True, is_superuser=True)
    staff_client = Client()
    staff_client.force_login(staff)
    project = Project.objects.create(name="Billed")
    staff_client.get(f"/weckr/?project={project.pk}")
    assert 'id="no-bill"' in staff_client.get("/weckr/billing/").content.decode()

    lines = reconcile.fetch("openai", "sk-admin-openai", YESTERDAY, TODAY, client_for(openai_pages))
    reconcile.store(project, lines, YESTERDAY, TODAY, "openai")
    page = staff_client.get("/weckr/billing/").content.decode()
    assert f'data-day="{TODAY:%Y-%m-%d}" data-provider="openai"' in page
    assert "gpt-4o-mini" in page
    assert json.dumps("sk-admin-openai") not in page


def test_a_day_billed_above_the_threshold_is_alerted_once(
    fake_openai: str, capsys: pytest.CaptureFixture[str]
) -> None:
    project = Project.objects.create(name="Billed", billing_gap_alert_percent=20)
    settings = {"DELIVERY": "sync", "OPENAI_ADMIN_KEY": "sk-admin-openai"}
    with override_settings(WECKR=settings):
        for _ in range(2):  # the second run finds the days alerted already
            call_command("weckr_reconcile", "--project", "Billed", "--openai-url", fake_openai)
    assert "2 billing gap alert(s) sent." in capsys.readouterr().out

    alerts = AlertLog.objects.filter(project=project, kind=AlertLog.Kind.BILLING_GAP)
    assert sorted(alert.details["day"] for alert in alerts) == [f"{YESTERDAY}", f"{TODAY}"]
    message = compose(alerts.get(details__day=f"{YESTERDAY}"))
    assert message.subject == (
        f"[Weckr] openai billed 100.0% more than recorded on {YESTERDAY} in Billed"
    )
    assert "a gap of $2.00" in message.body and "gpt-4o $2.00" in message.body


def test_the_usage_per_api_key_is_read_in_both_providers_shapes() -> None:
    openai = reconcile.fetch_key_usage(
        "openai", "sk-admin-openai", YESTERDAY, TODAY, client_for(openai_key_usage)
    )
    assert [(usage.day, usage.api_key_id, usage.model, usage.tokens) for usage in openai] == [
        (YESTERDAY, "key_app", "gpt-4o-2024-08-06", 1500),
        (YESTERDAY, "key_batch", "gpt-4o-2024-08-06", 42_000),
        (TODAY, "key_app", "gpt-4o-mini-2024-07-18", 300),
        (TODAY, "key_batch", "gpt-4o-mini-2024-07-18", 300),
    ]
    anthropic = reconcile.fetch_key_usage(
        "anthropic", "sk-ant-admin-key", YESTERDAY, TODAY, client_for(anthropic_key_usage)
    )
    # Uncached input, cache writes, cache reads and output: 200 + 100 + 400 + 300.
    assert [(usage.api_key_id, usage.tokens) for usage in anthropic] == [
        ("apikey_01A", 1000),
        ("apikey_01B", 1000),
        ("", 2000),
    ]
    assert reconcile.usage_url_beside(reconcile.OPENAI_COSTS_URL, "openai") == (
        reconcile.OPENAI_USAGE_URL
    )
    assert reconcile.usage_url_beside(reconcile.ANTHROPIC_COST_REPORT_URL, "anthropic") == (
        reconcile.ANTHROPIC_USAGE_URL
    )
    assert reconcile.usage_url_beside("https://proxy.example/openai-bill", "openai") is None


def test_a_key_whose_tokens_weckr_never_recorded_is_not_instrumented() -> None:
    project = Project.objects.create(name="Keys")
    noon = datetime(YESTERDAY.year, YESTERDAY.month, YESTERDAY.day, 12, tzinfo=UTC)
    # Weckr saw the app's call yesterday: 1,000 in and 500 out, as key_app used.
    ingest_records(project, [make_record("app-1", model="gpt-4o", when=noon)])
    usage = reconcile.fetch_key_usage(
        "openai", "sk-admin-openai", YESTERDAY, TODAY, client_for(openai_key_usage)
    )
    assert reconcile.store_key_usage(project, usage, YESTERDAY, TODAY, "openai") == 4

    verdicts = reconcile.key_verdicts(project, YESTERDAY, TODAY)

    # Yesterday tells (Weckr recorded OpenAI calls): key_app's tokens are the recorded
    # ones, key_batch's are not. Today Weckr recorded no OpenAI call at all, which
    # tells nothing (not installed yet, say), so today's mini calls judge no key.
    assert [
        (v.api_key_id, v.tokens, v.days, v.matched_days, v.unmatched_days, v.instrumented)
        for v in verdicts
    ] == [
        ("key_batch", 42_300, 2, 0, 1, False),
        ("key_app", 1_800, 2, 1, 0, True),
    ]
    # Fetching again replaces the days' usage rather than adding to it.
    reconcile.store_key_usage(project, usage, YESTERDAY, TODAY, "openai")
    assert [v.tokens for v in reconcile.key_verdicts(project, YESTERDAY, TODAY)] == [42_300, 1_800]


def test_keys_the_tokens_cannot_tell_apart_are_not_judged() -> None:
    project = Project.objects.create(name="Twins")
    noon = datetime(YESTERDAY.year, YESTERDAY.month, YESTERDAY.day, 12, tzinfo=UTC)
    # One call of 1,000 tokens (cache reads in the input, writes beside it): either
    # of two keys that used 1,000 tokens each could have made it.
    record = make_record(
        "claude-1",
        model="claude-sonnet-4",
        provider="anthropic",
        input_tokens=600,
        output_tokens=300,
        when=noon,
        cached_input_tokens=400,
        cache_creation_tokens=100,
    )
    ingest_records(project, [record])
    usage = reconcile.fetch_key_usage(
        "anthropic", "sk-ant-admin-key", YESTERDAY, TODAY, client_for(anthropic_key_usage)
    )
    reconcile.store_key_usage(project, usage, YESTERDAY, TODAY, "anthropic")

    verdicts = {
        v.api_key_id: v.instrumented for v in reconcile.key_verdicts(project, YESTERDAY, TODAY)
    }

    assert verdicts == {"apikey_01A": None, "apikey_01B": None, "": None}


def test_the_command_names_the_keys_that_are_not_instrumented(
    fake_openai: str, capsys: pytest.CaptureFixture[str]
) -> None:
    project = Project.objects.create(name="Billed")
    noon = datetime(YESTERDAY.year, YESTERDAY.month, YESTERDAY.day, 12, tzinfo=UTC)
    ingest_records(project, [make_record("app-1", model="gpt-4o", when=noon)])
    with override_settings(WECKR={"DELIVERY": "sync", "OPENAI_ADMIN_KEY": "sk-admin-openai"}):
        call_command(
            "weckr_reconcile", "--project", "Billed", "--days", "2", "--openai-url", fake_openai
        )
    said = capsys.readouterr().out
    assert "Not instrumented: openai API key key_batch, 42300 tokens on 2 day(s)." in said
    assert "key_app" not in said

    staff = User.objects.create_user("staff", password="pw", is_staff=True, is_superuser=True)
    staff_client = Client()
    staff_client.force_login(staff)
    staff_client.get(f"/weckr/?project={project.pk}")
    page = staff_client.get("/weckr/billing/").content.decode()
    assert 'id="api-keys-table"' in page
    batch_row = page.split('data-key="key_batch"')[1].split("</tr>")[0]
    assert "not instrumented" in batch_row
    app_row = page.split('data-key="key_app"')[1].split("</tr>")[0]
    assert ">yes<" in app_row
