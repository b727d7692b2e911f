"""Usage from OpenTelemetry: OTLP/HTTP trace exports whose spans carry GenAI usage.

Any language, any instrumentation that follows the OpenTelemetry GenAI semantic
conventions (OpenLLMetry, OpenLIT, the Vercel AI SDK, LangSmith's and CrewAI's OTLP
export) can send its spans to ``POST /api/v1/otlp/v1/traces``. Each span with token
usage becomes one usage event, through the same validation, pricing and ingest as
``/api/v1/log``; other spans are not usage and are passed over. The event id is the
span's trace and span id, so a resent export stores nothing twice.

Usage sent this way counts toward caps and margins like any other, but the call was
made before Weckr heard of it: it cannot be refused.
"""

from __future__ import annotations

import base64
import gzip
import json
import zlib
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

#: A decompressed export larger than this is refused (a small gzip body can expand
#: a thousandfold).
MAX_EXPORT_BYTES = 16 * 1024 * 1024
#: Usage spans in one export, at most (an SDK's batch holds 512 spans by default).
MAX_USAGE_SPANS = 5_000
PROTOBUF = "application/x-protobuf"
JSON = "application/json"

# The attributes read, current names first, then the older ones instrumentations
# still send.
INPUT_TOKENS = (
    "gen_ai.usage.input_tokens",
    "gen_ai.usage.prompt_tokens",
    "llm.usage.prompt_tokens",
)
OUTPUT_TOKENS = (
    "gen_ai.usage.output_tokens",
    "gen_ai.usage.completion_tokens",
    "llm.usage.completion_tokens",
)
CACHE_READ_TOKENS = (
    "gen_ai.usage.cache_read.input_tokens",
    "gen_ai.usage.cache_read_input_tokens",
)
CACHE_WRITE_TOKENS = (
    "gen_ai.usage.cache_creation.input_tokens",
    "gen_ai.usage.cache_creation_input_tokens",
)
REASONING_TOKENS = ("gen_ai.usage.reasoning.output_tokens", "gen_ai.usage.reasoning_tokens")
MODEL = ("gen_ai.response.model", "gen_ai.request.model", "llm.response.model")
PROVIDER = ("gen_ai.provider.name", "gen_ai.system")
# OpenLLMetry's ``Traceloop.set_association_properties({...})`` writes each key under
# this prefix on every span of the context; Langfuse's SDK writes ``langfuse.*``.
_TRACELOOP = "traceloop.association.properties."
USER = ("user.id", "enduser.id", "langfuse.user.id", f"{_TRACELOOP}user_id")
RUN = (
    "gen_ai.conversation.id",
    "session.id",
    "langfuse.session.id",
    f"{_TRACELOOP}session_id",
)
AGENT = ("gen_ai.agent.name",)
FEATURE = ("weckr.feature", f"{_TRACELOOP}weckr.feature")
PLAN = ("weckr.plan", f"{_TRACELOOP}weckr.plan")
ACCOUNT = ("weckr.account", f"{_TRACELOOP}weckr.account")

#: ``gen_ai.system`` / ``gen_ai.provider.name`` values, as the price database names
#: the provider.
_PROVIDERS = {
    "openai": "openai",
    "azure.ai.openai": "azure",
    "az.ai.openai": "azure",
    "anthropic": "anthropic",
    "gcp.gemini": "google",
    "gcp.vertex_ai": "google",
    "gemini": "google",
    "google": "google",
    "vertex_ai": "google",
    "aws.bedrock": "aws",
    "mistral_ai": "mistral",
    "mistralai": "mistral",
    "groq": "groq",
    "deepseek": "deepseek",
    "cohere": "cohere",
    "x_ai": "x-ai",
    "xai": "x-ai",
}


class OtlpError(ValueError):
    """An export that cannot be read; the message says why."""


def decode(body: bytes, content_type: str, content_encoding: str) -> ExportTraceServiceRequest:
    """The export in ``body``: protobuf or JSON (OTLP/HTTP's two encodings), gzip or
    deflate compressed or not."""
    data = _decompressed(body, content_encoding.strip().lower())
    kind = content_type.split(";")[0].strip().lower()
    request = ExportTraceServiceRequest()
    if kind == PROTOBUF:
        try:
            request.ParseFromString(data)
        except DecodeError as error:
            raise OtlpError(f"The body is not an OTLP protobuf trace export: {error}") from None
        return request
    if kind == JSON:
        try:
            document = json.loads(data.decode("utf-8"))
            json_format.ParseDict(_ids_as_base64(document), request, ignore_unknown_fields=True)
        except (UnicodeDecodeError, ValueError, RecursionError, json_format.ParseError) as error:
            raise OtlpError(f"The body is not an OTLP JSON trace export: {error}") from None
        return request
    raise OtlpError(
        f"Content-Type {content_type or '(none)'} is not an OTLP encoding: send "
        f"{PROTOBUF} or {JSON}."
    )


def answer(rejected: int, message: str, content_type: str) -> tuple[bytes, str]:
    """The OTLP answer (a partial success when spans were rejected), in the request's
    encoding."""
    response = ExportTraceServiceResponse()
    if rejected:
        response.partial_success.rejected_spans = rejected
        response.partial_success.error_message = message
    if content_type.split(";")[0].strip().lower() == JSON:
        return json_format.MessageToJson(response).encode(), JSON
    return response.SerializeToString(), PROTOBUF


def usage_events(request: ExportTraceServiceRequest) -> tuple[list[dict[str, Any]], list[str]]:
    """One wire event (``/api/v1/log``'s payload) per span with GenAI token usage, and
    why each usage span that cannot become one was refused (its ids are not a trace
    and span id: they are what makes a resend count once)."""
    events, refused = [], []
    for resource_spans in request.resource_spans:
        resource = _attributes(resource_spans.resource.attributes)
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                event = _event(span, resource)
                if event is None:
                    continue
                if len(span.trace_id) != 16 or len(span.span_id) != 8:
                    refused.append(
                        f"span {span.span_id.hex() or '(none)'}: its traceId must be 16 bytes "
                        "and its spanId 8."
                    )
                    continue
                events.append(event)
    return events, refused


def _event(span: Span, resource: Mapping[str, Any]) -> dict[str, Any] | None:
    own = _attributes(span.attributes)

    def first(names: Iterable[str], *, resource_too: bool = False) -> Any:
        for name in names:
            if name in own:
                return own[name]
        if resource_too:
            for name in names:
                if name in resource:
                    return resource[name]
        return None

    input_tokens = first(INPUT_TOKENS)
    output_tokens = first(OUTPUT_TOKENS)
    if input_tokens is None and output_tokens is None:
        return None  # not an LLM call's span, or one without usage: not usage
    input_count = _count(input_tokens)
    cached, written = _count(first(CACHE_READ_TOKENS)), _count(first(CACHE_WRITE_TOKENS))
    if all(isinstance(count, int) for count in (input_count, cached, written)):
        # The conventions count cache reads and writes in the input; Weckr counts reads
        # in it and writes beside it. An input below reads plus writes was reported
        # without them (Anthropic's own way): the reads are added to it.
        if input_count >= cached + written:
            input_count -= written
        else:
            input_count += cached
    event: dict[str, Any] = {
        "eventId": f"otel-{span.trace_id.hex()}-{span.span_id.hex()}"[:64],
        "timestamp": _time(span.end_time_unix_nano or span.start_time_unix_nano),
        "model": first(MODEL) or "unknown",
        "provider": _provider(first(PROVIDER)),
        "inputTokens": input_count,
        "outputTokens": _count(output_tokens),
        "cachedInputTokens": cached,
        "cacheCreationTokens": written,
        "reasoningTokens": _count(first(REASONING_TOKENS)),
        "status": "error" if span.status.code == Status.STATUS_CODE_ERROR else "ok",
        "source": "otel",
        "latencyMs": _latency(span),
        "userId": first(USER, resource_too=True),
        "accountId": first(ACCOUNT, resource_too=True),
        "planName": first(PLAN, resource_too=True),
        "feature": first(FEATURE, resource_too=True),
        "runId": first(RUN),
        "agent": first(AGENT),
    }
    service = resource.get("service.name")
    if isinstance(service, str) and service:
        event["tags"] = [f"service:{service}"]
    return {key: value for key, value in event.items() if value is not None}


def _attributes(pairs: Iterable[KeyValue]) -> dict[str, Any]:
    return {pair.key: _value(pair.value) for pair in pairs}


def _value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind in ("string_value", "bool_value", "int_value", "double_value"):
        return getattr(value, kind)
    return None  # arrays, maps and bytes hold nothing Weckr reads


def _count(value: Any) -> Any:
    """A token count as sent; a non-count is left for the wire's validation to refuse."""
    if value is None:
        return 0
    if isinstance(value, float) and value.is_integer():
        return int(value)
    text = value.strip() if isinstance(value, str) else ""
    if text and len(text) <= 18 and text.isascii() and text.isdigit():
        return int(text)
    return value


def _provider(name: Any) -> str | None:
    if not isinstance(name, str) or not name:
        return None
    return _PROVIDERS.get(name.lower(), name.lower())


def _time(unix_nano: int) -> str | None:
    if not unix_nano:
        return None
    return datetime.fromtimestamp(unix_nano / 1e9, UTC).isoformat()


def _latency(span: Span) -> int | None:
    if not span.start_time_unix_nano or span.end_time_unix_nano < span.start_time_unix_nano:
        return None
    return round((span.end_time_unix_nano - span.start_time_unix_nano) / 1e6)


def _decompressed(body: bytes, encoding: str) -> bytes:
    if encoding in ("", "identity"):
        return body
    if encoding not in ("gzip", "deflate"):
        raise OtlpError(f"Content-Encoding {encoding} is not supported: send gzip or none.")
    inflater = zlib.decompressobj(wbits=31 if encoding == "gzip" else 15)
    try:
        data = inflater.decompress(body, MAX_EXPORT_BYTES + 1)
    except (zlib.error, gzip.BadGzipFile) as error:
        raise OtlpError(f"The body is not valid {encoding}: {error}") from None
    if len(data) > MAX_EXPORT_BYTES:
        raise OtlpError(f"The export is over {MAX_EXPORT_BYTES // (1024 * 1024)} MiB unpacked.")
    return data


def _ids_as_base64(document: Any) -> Any:
    """OTLP/JSON writes trace and span ids in hex; protobuf's JSON mapping reads bytes
    as base64. Rewrite them, in place, before parsing."""
    for resource_spans in _items(document, "resourceSpans"):
        for scope_spans in _items(resource_spans, "scopeSpans"):
            for span in _items(scope_spans, "spans"):
                for key in ("traceId", "spanId", "parentSpanId"):
                    value = span.get(key)
                    if isinstance(value, str) and value:
                        try:
                            span[key] = base64.b64encode(bytes.fromhex(value)).decode()
                        except ValueError:
                            raise OtlpError(f"{key} {value!r} is not hex.") from None
    return document


def _items(parent: Any, key: str) -> list[dict[str, Any]]:
    """``parent[key]``, a list of objects (missing: none); an OtlpError otherwise."""
    if not isinstance(parent, dict):
        raise OtlpError("The body is not an OTLP trace export: objects are expected.")
    items = parent.get(key)
    if items is None:
        return []
    if not isinstance(items, list) or not all(isinstance(item, dict) for item in items):
        raise OtlpError(f"{key} must be a list of objects.")
    return items
