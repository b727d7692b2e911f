"""An app in its own process instrumented with OpenTelemetry: OpenLLMetry's OpenAI
instrumentation around the real ``openai`` client (on a fake transport), spans sent
by the SDK's OTLP/HTTP exporter to a Weckr server.

``python -m tests.api.otel_client URL KEY`` makes one chat call for each of the
users u1 and u2, exports the two spans twice (plain, then gzip: the second time is
a resend), and prints their ids as JSON. A process of its own, because OpenLLMetry's
``uninstrument()`` leaves ``openai``'s methods wrapped for the rest of a process.
"""

from __future__ import annotations

import contextvars
import json
import os
import sys
from typing import Any

from opentelemetry.context import Context
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.instrumentation.openai import OpenAIInstrumentor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from tests.core import providers as p

CURRENT_USER: contextvars.ContextVar[str | None] = contextvars.ContextVar("user", default=None)


class UserOnSpans(SpanProcessor):
    """How an app puts its user on every span of a request: ``user.id`` set when a
    span starts, from the request's context."""

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        user = CURRENT_USER.get()
        if user is not None:
            span.set_attribute("user.id", user)

    def on_end(self, span: ReadableSpan) -> None:
        pass


def main(url: str, key: str) -> None:
    os.environ.pop("OTEL_SDK_DISABLED", None)
    os.environ["TRACELOOP_TRACE_CONTENT"] = "false"  # no prompts on the spans
    provider = TracerProvider(
        resource=Resource.create(
            {"service.name": "billing-worker", "weckr.feature": "invoices", "weckr.plan": "pro"}
        )
    )
    captured = InMemorySpanExporter()
    provider.add_span_processor(UserOnSpans())
    provider.add_span_processor(SimpleSpanProcessor(captured))
    OpenAIInstrumentor().instrument(tracer_provider=provider)

    fake = p.FakeProvider(p.openai_chat_body("gpt-4o-mini", p.openai_usage(1200, 300, cached=200)))
    client = p.openai_client(fake)
    messages: Any = [{"role": "user", "content": "Total the invoice."}]
    for user in ("u1", "u2"):
        token = CURRENT_USER.set(user)
        try:
            client.chat.completions.create(model="gpt-4o-mini", messages=messages)
        finally:
            CURRENT_USER.reset(token)
    spans = captured.get_finished_spans()

    results = []
    for compression in (Compression.NoCompression, Compression.Gzip):
        exporter = OTLPSpanExporter(
            endpoint=f"{url}/api/v1/otlp/v1/traces",
            headers={"x-api-key": key},
            compression=compression,
        )
        results.append(exporter.export(spans).name)
        exporter.shutdown()
    print(
        json.dumps(
            {
                "exports": results,
                "spans": [
                    f"{span.context.trace_id:032x}-{span.context.span_id:016x}" for span in spans
                ],
            }
        )
    )


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
