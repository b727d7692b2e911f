"""The ``Weckr`` client: the published weckr-sdk's interface on a Backend.

    wk = Weckr(api_key="wk_...", plans={"free": 0, "pro": 29})
    result = wk.chat(openai_client, {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": "Summarize this."}],
        "user_id": user.id,
        "feature": "ai-summary",
        "plan": user.plan,
    })

Differences from weckr-sdk 0.3.0, all on purpose: each call of a user reserves its
worst-case cost against the cap before the provider is called and settles its
real cost right after, instead of a cached check; records go to a Backend (a queue
sent in batches, never a thread per call); streams are recorded with their real
usage; ``user_id``, ``feature`` and ``plan`` fall back to the attribution context; a
plan is only checked against ``plans`` when ``plans`` was given.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, TypeVar

from weckr_core import caps, estimate
from weckr_core.backends import Backend, CapDecision, CapRequest, Reservation, get_backend
from weckr_core.backends.http import DEFAULT_CHECK_ENDPOINT, DEFAULT_LOG_ENDPOINT, HttpBackend
from weckr_core.context import current_attribution
from weckr_core.errors import WeckrConfigError, warn_downgrade
from weckr_core.pricing import preload_prices
from weckr_core.records import Source, Status, TokenUsage, UsageRecord, new_event_id, utc_now
from weckr_core.streaming import (
    AsyncRecordedStream,
    RecordedStream,
    RecordedStreamManager,
    StreamUsage,
)
from weckr_core.usage import NOT_REPORTED, detect_provider
from weckr_core.wrap import (
    ANTHROPIC_MESSAGES,
    GEMINI,
    GEMINI_STREAM,
    OPENAI_CHAT,
    Endpoint,
    unwrap,
    wrap_with,
)

__all__ = ["DEFAULT_CHECK_ENDPOINT", "DEFAULT_LOG_ENDPOINT", "Weckr"]


logger = logging.getLogger("weckr")

C = TypeVar("C")
OnError = Callable[[BaseException], None]
OnDowngrade = Callable[[dict[str, str]], None]

_MAX_DOWNGRADES_REMEMBERED = 10_000
# The stream class a recorded call hands back, of the client's kind (sync or async).
_StreamType = type[RecordedStream[Any]] | type[AsyncRecordedStream[Any]]
_SDK_MODULES = ("openai", "anthropic", "google.")
# Provider and async-ness per client class, for classes from the SDKs' own modules
# only: a generic proxy class can stand in front of clients of different providers.
_kind_by_type: dict[type, tuple[str, bool]] = {}


def _client_kind(client: Any) -> tuple[str, bool]:
    """The client's provider, and whether it is an async client."""
    cls = type(client)
    kind = _kind_by_type.get(cls)
    if kind is None:
        kind = detect_provider(client), cls.__name__.startswith("Async")
        if (cls.__module__ or "").startswith(_SDK_MODULES):
            _kind_by_type[cls] = kind
    return kind


def _model_name(model: Any) -> str:
    if not model:
        return "unknown"
    name = str(model)
    # google-genai and google-generativeai accept "models/gemini-2.5-flash".
    return name[7:] if name.startswith("models/") else name


def _cap_request(
    user_id: str, plan: str | None, model: str, provider: str, params: Mapping[str, Any]
) -> CapRequest:
    """What a cap needs of a request: who, which model, and what it may cost."""
    return CapRequest(
        user_id,
        plan,
        model,
        provider,
        prompt=params,
        max_output_tokens=estimate.max_output_tokens(params),
    )


@dataclass(slots=True)
class _ChatRequest:
    """A ``wk.chat`` call before its cap decision."""

    provider: str
    target: Any
    params: dict[str, Any]
    is_async: bool
    user_id: str | None
    plan: str | None
    feature: str | None
    tags: tuple[str, ...]


class _Call:
    """One intercepted LLM call, from its cap decision to its usage record."""

    __slots__ = (
        "backend",
        "event_id",
        "feature",
        "model",
        "plan",
        "plan_revenue",
        "provider",
        "requested_model",
        "reservation",
        "source",
        "started",
        "started_at",
        "tags",
        "user_id",
        "weckr",
    )

    def __init__(
        self,
        weckr: Weckr,
        backend: Backend,
        source: Source,
        provider: str,
        model: str,
        user_id: str | None,
        plan: str | None,
        plan_revenue: Decimal | None,
        feature: str | None,
        tags: tuple[str, ...],
    ) -> None:
        self.weckr = weckr
        self.backend = backend
        self.event_id = new_event_id()
        self.started_at = utc_now()
        self.source = source
        self.provider = provider
        self.model = model
        self.requested_model: str | None = None  # set on a downgrade
        self.reservation: Reservation | None = None
        self.user_id = user_id
        self.plan = plan
        self.plan_revenue = plan_revenue
        self.feature = feature
        self.tags = tags
        self.started = time.perf_counter()

    def finish(
        self, usage: TokenUsage, model: str | None, error: BaseException | None = None
    ) -> None:
        """Settle the call's reservation and hand its record to the backend;
        ``model`` is the model that served the call, when the response names it."""
        record = UsageRecord(
            event_id=self.event_id,
            timestamp=self.started_at,
            user_id=self.user_id,
            feature=self.feature,
            plan=self.plan,
            plan_revenue_usd=self.plan_revenue,
            provider=self.provider,
            model=model or self.model,
            requested_model=self.requested_model,
            latency_ms=int((time.perf_counter() - self.started) * 1000),
            status="ok" if error is None else "error",
            error_type=None if error is None else type(error).__name__,
            source=self.source,
            tags=self.tags,
        )
        record.apply_usage(usage)
        try:
            caps.finish(self.backend, self.reservation, record, self.weckr._report)
        except Exception as refusal:
            self.weckr._refused(self.event_id, self.model, self.user_id, refusal)

    def release(self) -> None:
        """The call was never made: drop its reservation."""
        caps.release(self.backend, self.reservation, self.weckr._report)

    def finish_stream(self, collected: StreamUsage, error: BaseException | None) -> None:
        self.finish(collected.usage, collected.model, error)

    def finish_result(self, endpoint: Endpoint, result: Any, stream: _StreamType | None) -> Any:
        """What the caller gets back: a response, recorded now, or (with ``stream``,
        the stream class of the client's kind) the stream, recorded when it ends."""
        if stream is not None:
            return stream(result, endpoint.stream_usage(), self.finish_stream)
        try:
            part = getattr(result, endpoint.usage_field, None)
            if part is None and isinstance(result, Mapping):
                part = result.get(endpoint.usage_field)
            usage = endpoint.usage(part)
            model = getattr(result, endpoint.model_field, None)
        except Exception as error:
            # Keep the row; an unreadable usage is recorded as not reported.
            self.weckr._report(error)
            self.finish(NOT_REPORTED, None)
            return result
        self.finish(usage, model if isinstance(model, str) else None)
        return result

    def fail(self, error: BaseException) -> None:
        self.finish(NOT_REPORTED, None, error)


class _DeferredCall:
    """A wrapped call the SDK sends when a ``with`` block is entered: the cap check
    waits for the block too (awaited, on async clients)."""

    def __init__(
        self,
        weckr: Weckr,
        method: Any,
        endpoint: Endpoint,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> None:
        self._weckr = weckr
        self._method = method
        self._endpoint = endpoint
        self._args = args
        self._kwargs = kwargs


class _StreamingResponse(_DeferredCall):
    """A ``with_streaming_response`` call: the cap check and the request happen on
    entry, as the SDK's own manager sends the request then; the call is recorded
    when the caller parses the response (a stream when it ends), and with its usage
    unreported when the block ends without a parse."""

    _manager: Any = None
    _call: _Call | None = None
    _recorded = False

    def _request(self, decision: CapDecision | None) -> tuple[_Call, bool]:
        call, stream = self._weckr._start_wrapped(self._endpoint, self._kwargs, decision=decision)
        try:
            self._manager = self._method(*self._args, **self._kwargs)
        except BaseException:
            call.release()
            raise
        self._call = call
        call.started = time.perf_counter()
        return call, stream

    def _parsed(self, call: _Call, result: Any, stream: _StreamType | None) -> Any:
        """Record the first parse; a stream is handed on recorded."""
        if self._recorded:
            return result
        self._recorded = True
        return call.finish_result(self._endpoint, result, stream)

    def _finish_unparsed(self) -> None:
        if self._call is not None and not self._recorded:
            self._recorded = True
            self._call.finish(NOT_REPORTED, None)  # read some other way: usage unknown

    def __enter__(self) -> Any:
        call, stream = self._request(None)
        try:
            response = self._manager.__enter__()
        except BaseException as error:
            self._recorded = True
            call.fail(error)
            raise
        parse = response.parse
        parsed: list[Any] = []

        def parse_recorded(*, to: Any = None) -> Any:
            if to is not None:
                return parse(to=to)
            if not parsed:
                parsed.append(self._parsed(call, parse(), RecordedStream if stream else None))
            return parsed[0]

        response.parse = parse_recorded
        return response

    def __exit__(self, *exc_info: Any) -> Any:
        try:
            return self._manager.__exit__(*exc_info)
        finally:
            self._finish_unparsed()


class _AsyncStreamingResponse(_StreamingResponse):
    async def __aenter__(self) -> Any:
        decision = await self._weckr._areserve_wrapped(self._endpoint, self._kwargs)
        call, stream = self._request(decision)
        try:
            response = await self._manager.__aenter__()
        except BaseException as error:
            self._recorded = True
            call.fail(error)
            raise
        parse = response.parse
        parsed: list[Any] = []

        async def parse_recorded(*, to: Any = None) -> Any:
            if to is not None:
                return await parse(to=to)
            if not parsed:
                result = await parse()
                parsed.append(self._parsed(call, result, AsyncRecordedStream if stream else None))
            return parsed[0]

        response.parse = parse_recorded
        return response

    async def __aexit__(self, *exc_info: Any) -> Any:
        try:
            return await self._manager.__aexit__(*exc_info)
        finally:
            self._finish_unparsed()


class _AsyncStreamHelper(_DeferredCall):
    """An async client's ``.stream(...)`` helper: the SDK sends the request when the
    ``async with`` block is entered, so the cap check is awaited there too."""

    _manager: RecordedStreamManager | None = None

    async def __aenter__(self) -> Any:
        decision = await self._weckr._areserve_wrapped(self._endpoint, self._kwargs)
        call, _ = self._weckr._start_wrapped(
            self._endpoint, self._kwargs, helper=True, decision=decision
        )
        assert self._endpoint.final_usage is not None
        try:
            manager = self._method(*self._args, **self._kwargs)
        except BaseException:
            call.release()
            raise
        self._manager = RecordedStreamManager(
            manager, self._endpoint.final_usage, call.finish_stream
        )
        return await self._manager.__aenter__()

    async def __aexit__(self, *exc_info: Any) -> None:
        if self._manager is not None:
            await self._manager.__aexit__(*exc_info)


class Weckr:
    """Caps, attribution and usage records around LLM calls.

    With ``api_key``, records go to a Weckr server through an ``HttpBackend`` owned
    by this client; with ``backend``, to that backend; with neither, to the process
    default backend (inside Django, the one weckr_django installs).
    ``plans`` maps plan names to their monthly price in USD.
    """

    def __init__(
        self,
        api_key: str | None = None,
        plans: Mapping[str, float | int | str | Decimal] | None = None,
        endpoint: str = DEFAULT_LOG_ENDPOINT,
        check_endpoint: str = DEFAULT_CHECK_ENDPOINT,
        disable_cap_check: bool = False,
        on_error: OnError | None = None,
        on_downgrade: OnDowngrade | None = None,
        backend: Backend | None = None,
    ) -> None:
        if api_key is not None and not api_key.strip():
            raise WeckrConfigError(
                "invalid_api_key",
                "Weckr: api_key is empty. Pass a key, or leave api_key out to use the "
                "configured backend.",
            )
        self.plans: dict[str, Decimal] | None = (
            None if plans is None else {name: _plan_price(name, v) for name, v in plans.items()}
        )
        self.disable_cap_check = disable_cap_check
        self.on_error = on_error
        self.on_downgrade = on_downgrade
        # Before any backend thread prices a record (see pricing.preload_prices).
        preload_prices()
        self._owns_backend = False
        if backend is None and api_key is not None:
            backend = HttpBackend(api_key, endpoint, check_endpoint, on_error=on_error)
            self._owns_backend = True
        self._backend = backend
        self._downgrades_seen: set[tuple[str | None, str, str]] = set()
        self._last_event_id: ContextVar[str | None] = ContextVar(
            "weckr_last_event_id", default=None
        )

    @property
    def backend(self) -> Backend:
        return self._backend if self._backend is not None else get_backend()

    @property
    def last_event_id(self) -> str | None:
        """The event id of the latest call made by this client in the current
        thread or asyncio task (the id of its usage record)."""
        return self._last_event_id.get()

    # -- public API -----------------------------------------------------------------

    def chat(self, client: Any, params: Mapping[str, Any]) -> Any:
        """Call ``client`` with ``params`` (OpenAI chat shape) and record the call.

        ``user_id``, ``feature`` and ``plan`` are taken out of ``params`` (falling
        back to the attribution context). Returns the provider's response unchanged,
        or, with ``stream=True``, its stream, recorded when the stream ends.
        """
        request = self._chat_request(client, params, False)
        call, endpoint, stream, method, args, kwargs = self._start_chat(request, None)
        return self._invoke(call, endpoint, stream, method, args, kwargs)

    async def achat(self, client: Any, params: Mapping[str, Any]) -> Any:
        """``chat`` for async clients (``AsyncOpenAI``, ``AsyncAnthropic``,
        google-genai's ``client.aio``)."""
        request = self._chat_request(client, params, True)
        decision = await self._areserve(
            request.user_id,
            request.plan,
            _model_name(request.params.get("model")),
            request.provider,
            request.params,
        )
        call, endpoint, stream, method, args, kwargs = self._start_chat(request, decision)
        return await self._ainvoke(call, endpoint, stream, method, args, kwargs)

    def wrap(self, client: C) -> C:
        """A drop-in proxy of ``client`` whose LLM calls are recorded through this
        client, attributed from the context. See ``weckr_core.wrap``."""
        return wrap_with(self, client)

    def track(
        self,
        *,
        model: str,
        provider: str = "unknown",
        user_id: Any = None,
        feature: str | None = None,
        plan: str | None = None,
        input_tokens: int = 0,
        output_tokens: int = 0,
        cached_input_tokens: int = 0,
        cache_creation_tokens: int = 0,
        reasoning_tokens: int = 0,
        latency_ms: int | None = None,
        status: Status = "ok",
        error_type: str | None = None,
        usage_reported: bool = True,
        tags: tuple[str, ...] | list[str] = (),
    ) -> str:
        """Record a call made outside any wrapped client; returns its event id.

        Token counts follow ``TokenUsage``: input includes cache reads, output
        includes reasoning, cache writes come on top of input.
        """
        counts = {
            "input_tokens": input_tokens,
            "output_tokens": output_tokens,
            "cached_input_tokens": cached_input_tokens,
            "cache_creation_tokens": cache_creation_tokens,
            "reasoning_tokens": reasoning_tokens,
        }
        for name, value in counts.items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"Weckr: track({name}=...) must be an int >= 0, got {value!r}.")
        if cached_input_tokens > input_tokens:
            raise ValueError("Weckr: cached_input_tokens cannot exceed input_tokens.")
        if reasoning_tokens > output_tokens:
            raise ValueError("Weckr: reasoning_tokens cannot exceed output_tokens.")
        if status not in ("ok", "error"):
            raise ValueError(f'Weckr: status must be "ok" or "error", got {status!r}.')
        if not model:
            raise ValueError("Weckr: track() needs the model name.")
        if latency_ms is not None and (not isinstance(latency_ms, int) or latency_ms < 0):
            raise ValueError(f"Weckr: latency_ms must be an int >= 0, got {latency_ms!r}.")
        attribution = current_attribution()
        user = _user(user_id) if user_id is not None else attribution.user_id
        plan = plan if plan is not None else attribution.plan
        record = UsageRecord(
            user_id=user,
            feature=feature if feature is not None else attribution.feature,
            plan=plan,
            plan_revenue_usd=self._plan_revenue(plan),
            provider=provider,
            model=_model_name(model),
            latency_ms=latency_ms,
            status=status,
            error_type=error_type,
            source="manual",
            tags=tuple(dict.fromkeys((*attribution.tags, *tags))),
        )
        record.apply_usage(TokenUsage(**counts, reported=usage_reported))
        self._last_event_id.set(record.event_id)
        try:
            self.backend.record(record)
        except Exception as error:
            self._refused(record.event_id, record.model, record.user_id, error)
        return record.event_id

    def flush(self, timeout_seconds: float = 5.0) -> bool:
        """Wait until every record so far is delivered; False if time ran out.
        Call before a short-lived script or serverless function exits."""
        return self.backend.flush(timeout_seconds)

    def __enter__(self) -> Weckr:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self, timeout_seconds: float = 5.0) -> None:
        """Flush, and stop the HTTP backend this client created (if it did)."""
        self.flush(timeout_seconds)
        if self._owns_backend and self._backend is not None:
            self._backend.close()

    # -- the call path (shared with wrap) -------------------------------------------

    def _start(
        self,
        source: Source,
        provider: str,
        model: str,
        user_id: str | None,
        plan: str | None,
        feature: str | None,
        tags: tuple[str, ...],
        params: Mapping[str, Any],
        stacklevel: int = 8,
        decision: CapDecision | None = None,
    ) -> _Call:
        """Resolve the plan and reserve the call against the user's cap (may raise
        before anything is spent, or move the call to a cheaper model).

        ``decision`` is the cap decision when the async path already has it;
        ``params`` is the request, read for the estimate of what the call can cost.
        ``stacklevel`` points a downgrade warning at the caller's own frame."""
        plan_revenue = self._plan_revenue(plan)
        backend = self.backend
        call = _Call(
            self, backend, source, provider, model, user_id, plan, plan_revenue, feature, tags
        )
        if user_id and not self.disable_cap_check:
            if decision is None:
                request = _cap_request(user_id, plan, model, provider, params)
                decision = caps.reserve(backend, request, self._report)
            call.reservation = decision.reservation
            if decision.action != "allow":
                alternative = self._enforce(decision, user_id, plan, model, stacklevel)
                if alternative is not None:
                    call.requested_model = model
                    call.model = alternative
        self._last_event_id.set(call.event_id)
        return call

    def _enforce(
        self,
        decision: CapDecision,
        user_id: str,
        plan: str | None,
        model: str,
        stacklevel: int,
    ) -> str | None:
        """For a decision other than allow: None to go ahead, a model name to use
        instead; raises to block."""
        alternative = decision.alternative_model
        if decision.action == "downgrade" and alternative:
            if alternative == model:
                return None
            self._notify_downgrade(user_id, model, alternative, stacklevel)
            return alternative
        raise caps.refusal(decision, user_id, plan)

    def _call(
        self, method: Any, endpoint: Endpoint, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        call, stream = self._start_wrapped(endpoint, kwargs)
        return self._invoke(call, endpoint, stream, method, args, kwargs)

    async def _acall(
        self, method: Any, endpoint: Endpoint, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        decision = await self._areserve_wrapped(endpoint, kwargs)
        call, stream = self._start_wrapped(endpoint, kwargs, decision=decision)
        return await self._ainvoke(call, endpoint, stream, method, args, kwargs)

    async def _areserve_wrapped(
        self, endpoint: Endpoint, kwargs: Mapping[str, Any]
    ) -> CapDecision | None:
        """``_areserve`` for a wrapped client's call, attributed from the context."""
        attribution = current_attribution()
        return await self._areserve(
            attribution.user_id,
            attribution.plan,
            _model_name(kwargs.get("model")),
            endpoint.provider,
            kwargs,
        )

    async def _areserve(
        self,
        user_id: str | None,
        plan: str | None,
        model: str,
        provider: str,
        params: Mapping[str, Any],
    ) -> CapDecision | None:
        """The cap decision from the backend's ``areserve``, which waits for an
        uncached answer off the event loop. None when no cap applies."""
        if not user_id or self.disable_cap_check:
            return None
        self._plan_revenue(plan)  # an unknown plan fails before anything is asked
        request = _cap_request(user_id, plan, model, provider, params)
        return await caps.areserve(self.backend, request, self._report)

    def _call_stream_helper(
        self,
        method: Any,
        endpoint: Endpoint,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        is_async: bool = False,
    ) -> Any:
        if is_async:
            return _AsyncStreamHelper(self, method, endpoint, args, kwargs)
        call, _ = self._start_wrapped(endpoint, kwargs, helper=True)
        assert endpoint.final_usage is not None
        try:
            manager = method(*args, **kwargs)
        except BaseException:
            call.release()
            raise
        # The helper sends nothing until its ``with`` block is entered.
        return RecordedStreamManager(manager, endpoint.final_usage, call.finish_stream)

    def _streaming_response(
        self,
        method: Any,
        endpoint: Endpoint,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        is_async: bool,
    ) -> Any:
        if is_async:
            return _AsyncStreamingResponse(self, method, endpoint, args, kwargs)
        return _StreamingResponse(self, method, endpoint, args, kwargs)

    def _start_wrapped(
        self,
        endpoint: Endpoint,
        kwargs: dict[str, Any],
        helper: bool = False,
        decision: CapDecision | None = None,
    ) -> tuple[_Call, bool]:
        attribution = current_attribution()
        call = self._start(
            "wrap",
            endpoint.provider,
            _model_name(kwargs.get("model")),
            attribution.user_id,
            attribution.plan,
            attribution.feature,
            attribution.tags,
            kwargs,
            decision=decision,
        )
        if call.requested_model is not None:
            kwargs["model"] = call.model
        stream = helper or endpoint.always_streams or kwargs.get("stream") is True
        if stream and endpoint.adds_include_usage:
            _ensure_include_usage(kwargs)
        return call, stream

    def _invoke(
        self,
        call: _Call,
        endpoint: Endpoint,
        stream: bool,
        method: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Any:
        call.started = time.perf_counter()
        try:
            result = method(*args, **kwargs)
        except BaseException as error:
            call.fail(error)
            raise
        stream_type = RecordedStream if stream else None
        if endpoint.raw:
            return self._record_raw(call, endpoint, raw=result, stream=stream_type)
        return call.finish_result(endpoint, result, stream_type)

    async def _ainvoke(
        self,
        call: _Call,
        endpoint: Endpoint,
        stream: bool,
        method: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Any:
        call.started = time.perf_counter()
        try:
            result = await method(*args, **kwargs)
        except BaseException as error:
            call.fail(error)
            raise
        stream_type = AsyncRecordedStream if stream else None
        if endpoint.raw:
            return self._record_raw(call, endpoint, raw=result, stream=stream_type)
        return call.finish_result(endpoint, result, stream_type)

    def _record_raw(
        self, call: _Call, endpoint: Endpoint, *, raw: Any, stream: _StreamType | None
    ) -> Any:
        """A ``with_raw_response`` call: records from the parsed result, which the SDK
        caches for the caller's own ``raw.parse()``; a stream is handed out recorded."""
        try:
            parsed = raw.parse()
        except Exception as error:  # the caller's own parse() will say what is wrong
            self._report(error)
            call.finish(NOT_REPORTED, None)  # the call was made: keep its row
            return raw
        if stream is not None:
            recorded = call.finish_result(endpoint, parsed, stream)
            parse = raw.parse

            def parse_recorded(*, to: Any = None) -> Any:
                return recorded if to is None else parse(to=to)

            raw.parse = parse_recorded
        else:
            call.finish_result(endpoint, parsed, None)
        return raw

    def _chat_request(self, client: Any, params: Mapping[str, Any], is_async: bool) -> _ChatRequest:
        """Who ``wk.chat`` calls for, and which provider method it calls."""
        client = unwrap(client)
        provider, client_is_async = _client_kind(client)
        params = dict(params)
        attribution = current_attribution()
        user_id = params.pop("user_id", None)
        feature = params.pop("feature", None)
        plan = params.pop("plan", None)
        if client_is_async and not is_async:
            raise TypeError("Weckr: this is an async client; use `await wk.achat(client, params)`.")
        if is_async and not client_is_async and provider in ("openai", "anthropic"):
            raise TypeError("Weckr: this is a sync client; use `wk.chat(client, params)`.")
        if provider == "gemini":
            target = _gemini_target(client, is_async)
        elif provider == "openai" or _has_chat_completions(client):
            provider = "openai" if provider == "unknown" else provider
            target = client.chat.completions
        elif provider == "anthropic":
            target = client.messages
        else:
            raise ValueError(
                "Weckr: could not detect the provider of this client. Pass an OpenAI, "
                "Anthropic or Gemini (google-genai or google-generativeai) client."
            )
        return _ChatRequest(
            provider,
            target,
            params,
            is_async,
            _user(user_id) if user_id is not None else attribution.user_id,
            plan if plan is not None else attribution.plan,
            feature if feature is not None else attribution.feature,
            attribution.tags,
        )

    def _start_chat(
        self, request: _ChatRequest, decision: CapDecision | None
    ) -> tuple[_Call, Endpoint, bool, Any, tuple[Any, ...], dict[str, Any]]:
        params = request.params
        call = self._start(
            "sdk",
            request.provider,
            _model_name(params.get("model")),
            request.user_id,
            request.plan,
            request.feature,
            request.tags,
            params,
            stacklevel=7,
            decision=decision,
        )
        if call.requested_model is not None:
            params["model"] = call.model
        target = request.target
        if request.provider == "gemini":
            stream = params.pop("stream", False) is True
            try:
                method, args, kwargs = _gemini_request(target, params, stream, request.is_async)
            except BaseException:
                call.release()
                raise
            return call, GEMINI_STREAM if stream else GEMINI, stream, method, args, kwargs
        stream = params.get("stream") is True
        if request.provider == "anthropic":
            return call, ANTHROPIC_MESSAGES, stream, target.create, (), params
        if stream:
            _ensure_include_usage(params)
        return call, OPENAI_CHAT, stream, target.create, (), params

    # -- helpers ----------------------------------------------------------------------

    def _plan_revenue(self, plan: str | None) -> Decimal | None:
        if plan is None or self.plans is None:
            return None
        revenue = self.plans.get(plan)
        if revenue is None:
            raise WeckrConfigError(
                "unknown_plan",
                f'Weckr: plan "{plan}" is not in the `plans` given to Weckr '
                f"({', '.join(sorted(self.plans)) or 'none'}). Add it, e.g. "
                f'plans={{"{plan}": <monthly price in USD>}}.',
            )
        return revenue

    def _notify_downgrade(
        self, user_id: str, from_model: str, to_model: str, stacklevel: int
    ) -> None:
        if self.on_downgrade is not None:
            try:
                self.on_downgrade({"userId": user_id, "from": from_model, "to": to_model})
                return
            except Exception as error:
                self._report(error)
        key = (user_id, from_model, to_model)
        if key in self._downgrades_seen:
            return
        if len(self._downgrades_seen) >= _MAX_DOWNGRADES_REMEMBERED:
            self._downgrades_seen.clear()
        self._downgrades_seen.add(key)
        warn_downgrade(user_id, from_model, to_model, stacklevel=stacklevel)

    def _refused(self, event_id: str, model: str, user_id: str | None, error: Exception) -> None:
        logger.error(
            "Weckr: the backend refused usage record %s (%s, %s)",
            event_id,
            model,
            user_id,
            exc_info=error,
        )
        self._report(error)

    def _report(self, error: BaseException) -> None:
        if self.on_error is None:
            logger.warning("Weckr: %r", error)
            return
        try:
            self.on_error(error)
        except Exception:
            logger.exception("Weckr: on_error raised")


def _plan_price(name: str, value: float | int | str | Decimal) -> Decimal:
    try:
        price = Decimal(str(value))
    except ArithmeticError:
        price = Decimal("NaN")
    if not price.is_finite() or price < 0:
        raise ValueError(
            f"Weckr: plans[{name!r}] must be a monthly price in USD >= 0, got {value!r}."
        )
    return price


def _user(user_id: Any) -> str | None:
    text = str(user_id)
    return text or None


def _has_chat_completions(client: Any) -> bool:
    completions = getattr(getattr(client, "chat", None), "completions", None)
    return callable(getattr(completions, "create", None))


def _ensure_include_usage(kwargs: dict[str, Any]) -> None:
    options = kwargs.get("stream_options")
    if options is None:
        kwargs["stream_options"] = {"include_usage": True}
    elif isinstance(options, Mapping) and "include_usage" not in options:
        kwargs["stream_options"] = {**options, "include_usage": True}


def _gemini_target(client: Any, is_async: bool) -> Any:
    """google-genai's ``client.models`` (or ``client.aio.models``), or the legacy
    google-generativeai module (something with ``GenerativeModel``)."""
    if callable(getattr(client, "GenerativeModel", None)):
        return client
    holder = getattr(client, "aio", None) if is_async else client
    models = getattr(holder, "models", None)
    if models is not None and callable(getattr(models, "generate_content", None)):
        return models
    raise ValueError(
        "Weckr: this Gemini client has neither .models.generate_content (google-genai) "
        "nor .GenerativeModel (google-generativeai)."
    )


def _gemini_contents(messages: Any) -> tuple[list[dict[str, Any]], Any]:
    """OpenAI-style messages as Gemini ``contents`` plus the system instruction."""
    contents: list[dict[str, Any]] = []
    system_instruction: Any = None
    for message in messages or ():
        if not isinstance(message, Mapping):
            raise TypeError(
                f"Weckr: a Gemini message must be a dict, got {type(message).__name__}."
            )
        role = message.get("role", "user")
        content = message.get("content", "")
        if role == "system":
            system_instruction = content
            continue
        text = content if isinstance(content, str) else str(content)
        contents.append(
            {"role": "model" if role == "assistant" else "user", "parts": [{"text": text}]}
        )
    return contents, system_instruction


def _gemini_request(
    target: Any, params: dict[str, Any], stream: bool, is_async: bool
) -> tuple[Any, tuple[Any, ...], dict[str, Any]]:
    model = params.pop("model", None) or "gemini-2.5-flash"
    system_instruction = None
    if "messages" in params:
        contents, system_instruction = _gemini_contents(params.pop("messages"))
    else:
        contents = params.pop("contents", None)
    if callable(getattr(target, "GenerativeModel", None)):
        extra = {} if system_instruction is None else {"system_instruction": system_instruction}
        generative_model = target.GenerativeModel(model, **extra)
        if stream:
            params["stream"] = True
        method = (
            generative_model.generate_content_async
            if is_async
            else generative_model.generate_content
        )
        return method, (contents,), params
    if system_instruction is not None:
        params["config"] = _with_system_instruction(params.get("config"), system_instruction)
    method = target.generate_content_stream if stream else target.generate_content
    return method, (), {"model": model, "contents": contents, **params}


def _with_system_instruction(config: Any, system_instruction: Any) -> Any:
    if config is None:
        return {"system_instruction": system_instruction}
    if isinstance(config, Mapping):
        return {"system_instruction": system_instruction, **config}
    if getattr(config, "system_instruction", None) is None and hasattr(config, "model_copy"):
        return config.model_copy(update={"system_instruction": system_instruction})
    return config
