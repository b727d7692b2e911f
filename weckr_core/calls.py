"""The path of one recorded LLM call, shared by ``Weckr.chat``, ``wrap()`` and
``Weckr.track``: reserve against the cap, call the provider, settle and record.

``CallRecorder`` starts a ``Call`` (who, which model, its reservation), runs the
provider method, and finishes the call with the usage read from the response or,
for streams, when the stream ends. The ``with``-block shapes of the SDKs (stream
helpers, ``with_streaming_response``) are the ``_Deferred*`` classes below.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from contextvars import ContextVar
from decimal import Decimal
from typing import Any

from weckr_core import caps, estimate
from weckr_core.backends import Backend, CapDecision, CapRequest, Reservation, get_backend
from weckr_core.context import Attribution, current_attribution, recording_call
from weckr_core.endpoints import Endpoint
from weckr_core.errors import WeckrConfigError, warn_downgrade
from weckr_core.records import Source, TokenUsage, UsageRecord, new_event_id, utc_now
from weckr_core.streaming import (
    AsyncRecordedStream,
    RecordedStream,
    RecordedStreamManager,
    StreamUsage,
)
from weckr_core.usage import NOT_REPORTED

logger = logging.getLogger("weckr")

OnError = Callable[[BaseException], None]
OnDowngrade = Callable[[dict[str, str]], None]

_MAX_DOWNGRADES_REMEMBERED = 10_000
# The stream class a recorded call hands back, of the client's kind (sync or async).
_StreamType = type[RecordedStream[Any]] | type[AsyncRecordedStream[Any]]


def model_name(model: Any) -> str:
    if not model:
        return "unknown"
    name = str(model)
    # google-genai and google-generativeai accept "models/gemini-2.5-flash".
    return name[7:] if name.startswith("models/") else name


def cap_request(
    user_id: str | None,
    plan: str | None,
    model: str,
    provider: str,
    params: Mapping[str, Any],
    account_id: str | None = None,
) -> CapRequest:
    """What a cap needs of a request: who (the user, the account), which model, and
    what it may cost."""
    return CapRequest(
        user_id,
        plan,
        model,
        provider,
        prompt=params,
        max_output_tokens=estimate.max_output_tokens(params),
        account_id=account_id,
    )


class Call:
    """One intercepted LLM call, from its cap decision to its usage record."""

    __slots__ = (
        "account_id",
        "agent",
        "backend",
        "event_id",
        "feature",
        "model",
        "plan",
        "plan_revenue",
        "provider",
        "recorder",
        "requested_model",
        "reservation",
        "source",
        "started",
        "started_at",
        "tags",
        "user_id",
    )

    def __init__(
        self,
        recorder: CallRecorder,
        backend: Backend,
        source: Source,
        provider: str,
        model: str,
        user_id: str | None,
        plan: str | None,
        plan_revenue: Decimal | None,
        feature: str | None,
        tags: tuple[str, ...],
        agent: str | None,
        account_id: str | None,
    ) -> None:
        self.recorder = recorder
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
        self.agent = agent
        self.account_id = account_id
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
            agent=self.agent,
            account_id=self.account_id,
        )
        record.apply_usage(usage)
        try:
            caps.finish(self.backend, self.reservation, record, self.recorder.report)
        except Exception as refusal:
            self.recorder.refused(self.event_id, self.model, self.user_id, refusal)

    def release(self) -> None:
        """The call was never made: drop its reservation."""
        caps.release(self.backend, self.reservation, self.recorder.report)

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
            self.recorder.report(error)
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
        recorder: CallRecorder,
        method: Any,
        endpoint: Endpoint,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        attribution: Attribution,
    ) -> None:
        self._recorder = recorder
        self._method = method
        self._endpoint = endpoint
        self._args = args
        self._kwargs = kwargs
        self._attribution = attribution


class _StreamingResponse(_DeferredCall):
    """A ``with_streaming_response`` call: the cap check and the request happen on
    entry, as the SDK's own manager sends the request then; the call is recorded
    when the caller parses the response (a stream when it ends), and with its usage
    unreported when the block ends without a parse."""

    _manager: Any = None
    _call: Call | None = None
    _recorded = False

    def _request(self, decision: CapDecision | None) -> tuple[Call, bool]:
        call, stream = self._recorder.start_wrapped(
            self._endpoint, self._kwargs, self._attribution, decision=decision
        )
        try:
            with recording_call():
                self._manager = self._method(*self._args, **self._kwargs)
        except BaseException:
            call.release()
            raise
        self.call = call
        call.started = time.perf_counter()
        return call, stream

    def _parsed(self, call: Call, result: Any, stream: _StreamType | None) -> Any:
        """Record the first parse; a stream is handed on recorded."""
        if self._recorded:
            return result
        self._recorded = True
        return call.finish_result(self._endpoint, result, stream)

    def _finish_unparsed(self) -> None:
        if self.call is not None and not self._recorded:
            self._recorded = True
            self.call.finish(NOT_REPORTED, None)  # read some other way: usage unknown

    def __enter__(self) -> Any:
        call, stream = self._request(None)
        try:
            with recording_call():  # the SDK's manager sends the request here
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
        decision = await self._recorder.areserve_wrapped(
            self._endpoint, self._kwargs, self._attribution
        )
        call, stream = self._request(decision)
        try:
            with recording_call():
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
        decision = await self._recorder.areserve_wrapped(
            self._endpoint, self._kwargs, self._attribution
        )
        call, _ = self._recorder.start_wrapped(
            self._endpoint, self._kwargs, self._attribution, helper=True, decision=decision
        )
        assert self._endpoint.final_usage is not None
        try:
            with recording_call():
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


class CallRecorder:
    """What every recorded LLM call goes through, whether made by ``wk.chat``, a
    ``wrap()``-ped client or ``track()``: the plan's price, the reservation against
    the user's cap (which may refuse the call or move it to a cheaper model), the
    provider call, and the usage record handed to the backend.

    ``backend`` None means the process default backend, looked up at each call.
    """

    def __init__(
        self,
        backend: Backend | None = None,
        plans: Mapping[str, Decimal] | None = None,
        disable_cap_check: bool = False,
        on_error: OnError | None = None,
        on_downgrade: OnDowngrade | None = None,
    ) -> None:
        self.plans = None if plans is None else dict(plans)
        self.disable_cap_check = disable_cap_check
        self.on_error = on_error
        self.on_downgrade = on_downgrade
        self._backend = backend
        self._downgrades_seen: set[tuple[str | None, str, str]] = set()
        self.last_event_id: ContextVar[str | None] = ContextVar("weckr_last_event_id", default=None)

    @property
    def backend(self) -> Backend:
        return self._backend if self._backend is not None else get_backend()

    def start(
        self,
        source: Source,
        provider: str,
        model: str,
        user_id: str | None,
        plan: str | None,
        feature: str | None,
        tags: tuple[str, ...],
        params: Mapping[str, Any],
        decision: CapDecision | None = None,
        agent: str | None = None,
        account_id: str | None = None,
    ) -> Call:
        """Resolve the plan and reserve the call against the user's cap (may raise
        before anything is spent, or move the call to a cheaper model).

        ``decision`` is the cap decision when the async path already has it;
        ``params`` is the request, read for the estimate of what the call can cost."""
        plan_revenue = self.plan_revenue(plan)
        backend = self.backend
        call = Call(
            self,
            backend,
            source,
            provider,
            model,
            user_id,
            plan,
            plan_revenue,
            feature,
            tags,
            agent,
            account_id,
        )
        if (user_id or account_id) and not self.disable_cap_check:
            if decision is None:
                request = cap_request(user_id, plan, model, provider, params, account_id)
                decision = caps.reserve(backend, request, self.report)
            call.reservation = decision.reservation
            if decision.action != "allow":
                alternative = self._enforce(decision, user_id, plan, model)
                if alternative is not None:
                    call.requested_model = model
                    call.model = alternative
        self.last_event_id.set(call.event_id)
        return call

    def _enforce(
        self,
        decision: CapDecision,
        user_id: str | None,
        plan: str | None,
        model: str,
    ) -> str | None:
        """For a decision other than allow: None to go ahead, a model name to use
        instead; raises to block."""
        alternative = decision.alternative_model
        if decision.action == "downgrade" and alternative:
            if alternative == model:
                return None
            self._notify_downgrade(user_id, model, alternative)
            return alternative
        raise caps.refusal(decision, user_id, plan)

    def call(
        self, method: Any, endpoint: Endpoint, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        call, stream = self.start_wrapped(endpoint, kwargs, request_attribution(kwargs))
        return self.invoke(call, endpoint, stream, method, args, kwargs)

    async def acall(
        self, method: Any, endpoint: Endpoint, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        attribution = request_attribution(kwargs)
        decision = await self.areserve_wrapped(endpoint, kwargs, attribution)
        call, stream = self.start_wrapped(endpoint, kwargs, attribution, decision=decision)
        return await self.ainvoke(call, endpoint, stream, method, args, kwargs)

    async def areserve_wrapped(
        self, endpoint: Endpoint, kwargs: Mapping[str, Any], attribution: Attribution
    ) -> CapDecision | None:
        """``_areserve`` for a wrapped client's call."""
        return await self.areserve(
            attribution.user_id,
            attribution.plan,
            model_name(kwargs.get("model")),
            endpoint.provider,
            kwargs,
            attribution.account_id,
        )

    async def areserve(
        self,
        user_id: str | None,
        plan: str | None,
        model: str,
        provider: str,
        params: Mapping[str, Any],
        account_id: str | None = None,
    ) -> CapDecision | None:
        """The cap decision from the backend's ``areserve``, which waits for an
        uncached answer off the event loop. None when no cap applies."""
        if not (user_id or account_id) or self.disable_cap_check:
            return None
        self.plan_revenue(plan)  # an unknown plan fails before anything is asked
        request = cap_request(user_id, plan, model, provider, params, account_id)
        return await caps.areserve(self.backend, request, self.report)

    def call_stream_helper(
        self,
        method: Any,
        endpoint: Endpoint,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        is_async: bool = False,
    ) -> Any:
        attribution = request_attribution(kwargs)
        if is_async:
            return _AsyncStreamHelper(self, method, endpoint, args, kwargs, attribution)
        call, _ = self.start_wrapped(endpoint, kwargs, attribution, helper=True)
        assert endpoint.final_usage is not None
        try:
            with recording_call():
                manager = method(*args, **kwargs)
        except BaseException:
            call.release()
            raise
        # The helper sends nothing until its ``with`` block is entered.
        return RecordedStreamManager(manager, endpoint.final_usage, call.finish_stream)

    def streaming_response(
        self,
        method: Any,
        endpoint: Endpoint,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        is_async: bool,
    ) -> Any:
        attribution = request_attribution(kwargs)
        if is_async:
            return _AsyncStreamingResponse(self, method, endpoint, args, kwargs, attribution)
        return _StreamingResponse(self, method, endpoint, args, kwargs, attribution)

    def start_wrapped(
        self,
        endpoint: Endpoint,
        kwargs: dict[str, Any],
        attribution: Attribution,
        helper: bool = False,
        decision: CapDecision | None = None,
    ) -> tuple[Call, bool]:
        call = self.start(
            "wrap",
            endpoint.provider,
            model_name(kwargs.get("model")),
            attribution.user_id,
            attribution.plan,
            attribution.feature,
            attribution.tags,
            kwargs,
            decision=decision,
            agent=attribution.agent,
            account_id=attribution.account_id,
        )
        if call.requested_model is not None:
            kwargs["model"] = call.model
        stream = helper or endpoint.always_streams or kwargs.get("stream") is True
        if stream and endpoint.adds_include_usage:
            ensure_include_usage(kwargs)
        return call, stream

    def invoke(
        self,
        call: Call,
        endpoint: Endpoint,
        stream: bool,
        method: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Any:
        call.started = time.perf_counter()
        try:
            with recording_call():
                result = method(*args, **kwargs)
        except BaseException as error:
            call.fail(error)
            raise
        stream_type = RecordedStream if stream else None
        if endpoint.raw:
            return self._record_raw(call, endpoint, raw=result, stream=stream_type)
        return call.finish_result(endpoint, result, stream_type)

    async def ainvoke(
        self,
        call: Call,
        endpoint: Endpoint,
        stream: bool,
        method: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Any:
        call.started = time.perf_counter()
        try:
            with recording_call():
                result = await method(*args, **kwargs)
        except BaseException as error:
            call.fail(error)
            raise
        stream_type = AsyncRecordedStream if stream else None
        if endpoint.raw:
            return self._record_raw(call, endpoint, raw=result, stream=stream_type)
        return call.finish_result(endpoint, result, stream_type)

    def _record_raw(
        self, call: Call, endpoint: Endpoint, *, raw: Any, stream: _StreamType | None
    ) -> Any:
        """A ``with_raw_response`` call: records from the parsed result, which the SDK
        caches for the caller's own ``raw.parse()``; a stream is handed out recorded."""
        try:
            parsed = raw.parse()
        except Exception as error:  # the caller's own parse() will say what is wrong
            self.report(error)
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

    # -- helpers ----------------------------------------------------------------------

    def plan_revenue(self, plan: str | None) -> Decimal | None:
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

    def _notify_downgrade(self, user_id: str | None, from_model: str, to_model: str) -> None:
        if self.on_downgrade is not None:
            try:
                # weckr-sdk's shape; a call of an account with no user has "".
                self.on_downgrade({"userId": user_id or "", "from": from_model, "to": to_model})
                return
            except Exception as error:
                self.report(error)
        key = (user_id, from_model, to_model)
        if key in self._downgrades_seen:
            return
        if len(self._downgrades_seen) >= _MAX_DOWNGRADES_REMEMBERED:
            self._downgrades_seen.clear()
        self._downgrades_seen.add(key)
        warn_downgrade(user_id, from_model, to_model)

    def refused(self, event_id: str, model: str, user_id: str | None, error: Exception) -> None:
        logger.error(
            "Weckr: the backend refused usage record %s (%s, %s)",
            event_id,
            model,
            user_id,
            exc_info=error,
        )
        self.report(error)

    def report(self, error: BaseException) -> None:
        if self.on_error is None:
            logger.warning("Weckr: %r", error)
            return
        try:
            self.on_error(error)
        except Exception:
            logger.exception("Weckr: on_error raised")


_default_recorder: CallRecorder | None = None


def default_recorder() -> CallRecorder:
    """The recorder of ``wrap()`` and ``instrument()`` without a ``Weckr``: records go
    to the process default backend."""
    global _default_recorder
    if _default_recorder is None:
        _default_recorder = CallRecorder()
    return _default_recorder


def ensure_include_usage(kwargs: dict[str, Any]) -> None:
    """Ask OpenAI chat completions for the usage chunk of a stream."""
    options = kwargs.get("stream_options")
    if options is None:
        kwargs["stream_options"] = {"include_usage": True}
    elif isinstance(options, Mapping) and "include_usage" not in options:
        kwargs["stream_options"] = {**options, "include_usage": True}


# Keyword arguments that attribute one call, taken out before the provider sees the
# request; Tokenr's names too, for a one-line move. Ours first: they win.
_REQUEST_ATTRIBUTION: Mapping[str, str] = {
    "weckr_user_id": "user_id",
    "weckr_account_id": "account_id",
    "weckr_plan": "plan",
    "weckr_feature": "feature",
    "weckr_agent": "agent",
    "weckr_tags": "tags",
    "tokenr_team_id": "account_id",  # the team that pays
    "tokenr_feature": "feature",
    "tokenr_agent_id": "agent",
    "tokenr_tags": "tags",
}


def request_attribution(kwargs: dict[str, Any]) -> Attribution:
    """The context's attribution, with what the request's ``weckr_*`` (or Tokenr's
    ``tokenr_*``) keyword arguments say instead; those are taken out of ``kwargs``."""
    attribution = current_attribution()
    if _REQUEST_ATTRIBUTION.keys().isdisjoint(kwargs):
        return attribution
    given: dict[str, Any] = {}
    for key, name in _REQUEST_ATTRIBUTION.items():
        value = kwargs.pop(key, None)
        if value is not None:
            given.setdefault(name, value)
    tags = attribution.tags
    if "tags" in given:
        tags = tuple(dict.fromkeys((*tags, *_tag_texts(given["tags"]))))
    return attribution._replace(
        user_id=str(given["user_id"]) if "user_id" in given else attribution.user_id,
        plan=str(given["plan"]) if "plan" in given else attribution.plan,
        feature=str(given["feature"]) if "feature" in given else attribution.feature,
        agent=str(given["agent"]) if "agent" in given else attribution.agent,
        account_id=str(given["account_id"]) if "account_id" in given else attribution.account_id,
        tags=tags,
    )


def _tag_texts(tags: Any) -> list[str]:
    """Tags as given: a string, strings, or (Tokenr's) a mapping, as ``key:value``."""
    if isinstance(tags, str):
        return [tags]
    if isinstance(tags, Mapping):
        return [f"{key}:{value}" for key, value in tags.items()]
    return [str(tag) for tag in tags]
