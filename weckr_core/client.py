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
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, TypeVar

from weckr_core.backends import Backend, CapDecision
from weckr_core.backends.http import DEFAULT_CHECK_ENDPOINT, DEFAULT_LOG_ENDPOINT, HttpBackend
from weckr_core.calls import (
    Call,
    CallRecorder,
    OnDowngrade,
    OnError,
    ensure_include_usage,
    model_name,
)
from weckr_core.context import current_attribution
from weckr_core.endpoints import ANTHROPIC_MESSAGES, GEMINI, GEMINI_STREAM, OPENAI_CHAT, Endpoint
from weckr_core.errors import WeckrConfigError
from weckr_core.pricing import preload_prices
from weckr_core.records import Status, TokenUsage, UsageRecord
from weckr_core.usage import detect_provider
from weckr_core.wrap import unwrap, wrap_with

__all__ = ["DEFAULT_CHECK_ENDPOINT", "DEFAULT_LOG_ENDPOINT", "Weckr"]


logger = logging.getLogger("weckr")

C = TypeVar("C")
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
    agent: str | None
    account_id: str | None


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
        plan_prices = (
            None if plans is None else {name: _plan_price(name, v) for name, v in plans.items()}
        )
        # Before any backend thread prices a record (see pricing.preload_prices).
        preload_prices()
        self._owns_backend = False
        if backend is None and api_key is not None:
            backend = HttpBackend(api_key, endpoint, check_endpoint, on_error=on_error)
            self._owns_backend = True
        self._calls = CallRecorder(backend, plan_prices, disable_cap_check, on_error, on_downgrade)

    @property
    def backend(self) -> Backend:
        return self._calls.backend

    @property
    def last_event_id(self) -> str | None:
        """The event id of the latest call made by this client in the current
        thread or asyncio task (the id of its usage record)."""
        return self._calls.last_event_id.get()

    # -- public API -----------------------------------------------------------------

    def chat(self, client: Any, params: Mapping[str, Any]) -> Any:
        """Call ``client`` with ``params`` (OpenAI chat shape) and record the call.

        ``user_id``, ``feature`` and ``plan`` are taken out of ``params`` (falling
        back to the attribution context). Returns the provider's response unchanged,
        or, with ``stream=True``, its stream, recorded when the stream ends.
        """
        request = self._chat_request(client, params, False)
        call, endpoint, stream, method, args, kwargs = self._start_chat(request, None)
        return self._calls.invoke(call, endpoint, stream, method, args, kwargs)

    async def achat(self, client: Any, params: Mapping[str, Any]) -> Any:
        """``chat`` for async clients (``AsyncOpenAI``, ``AsyncAnthropic``,
        google-genai's ``client.aio``)."""
        request = self._chat_request(client, params, True)
        decision = await self._calls.areserve(
            request.user_id,
            request.plan,
            model_name(request.params.get("model")),
            request.provider,
            request.params,
            request.account_id,
        )
        call, endpoint, stream, method, args, kwargs = self._start_chat(request, decision)
        return await self._calls.ainvoke(call, endpoint, stream, method, args, kwargs)

    def wrap(self, client: C) -> C:
        """A drop-in proxy of ``client`` whose LLM calls are recorded through this
        client, attributed from the context. See ``weckr_core.wrap``."""
        return wrap_with(self._calls, client)

    def instrument(self) -> list[str]:
        """``weckr_core.instrument()``, recording through this client (its backend,
        ``plans``, ``on_error``): every OpenAI, Anthropic and google-genai call in the
        process, whatever client makes it. Returns the methods patched."""
        from weckr_core.instrument import instrument

        return instrument(recorder=self._calls)

    def track(
        self,
        *,
        model: str,
        provider: str = "unknown",
        user_id: Any = None,
        feature: str | None = None,
        plan: str | None = None,
        account_id: Any = None,
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
        user = _id_text(user_id) if user_id is not None else attribution.user_id
        plan = plan if plan is not None else attribution.plan
        record = UsageRecord(
            user_id=user,
            feature=feature if feature is not None else attribution.feature,
            plan=plan,
            plan_revenue_usd=self._calls.plan_revenue(plan),
            provider=provider,
            model=model_name(model),
            latency_ms=latency_ms,
            status=status,
            error_type=error_type,
            source="manual",
            tags=tuple(dict.fromkeys((*attribution.tags, *tags))),
            agent=attribution.agent,
            account_id=_id_text(account_id) if account_id is not None else attribution.account_id,
        )
        record.apply_usage(TokenUsage(**counts, reported=usage_reported))
        self._calls.last_event_id.set(record.event_id)
        try:
            self.backend.record(record)
        except Exception as error:
            self._calls.refused(record.event_id, record.model, record.user_id, error)
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
        if self._owns_backend:
            self._calls.backend.close()

    def _chat_request(self, client: Any, params: Mapping[str, Any], is_async: bool) -> _ChatRequest:
        """Who ``wk.chat`` calls for, and which provider method it calls."""
        client = unwrap(client)
        provider, client_is_async = _client_kind(client)
        params = dict(params)
        attribution = current_attribution()
        user_id = params.pop("user_id", None)
        account_id = params.pop("account_id", None)
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
            _id_text(user_id) if user_id is not None else attribution.user_id,
            plan if plan is not None else attribution.plan,
            feature if feature is not None else attribution.feature,
            attribution.tags,
            attribution.agent,
            _id_text(account_id) if account_id is not None else attribution.account_id,
        )

    def _start_chat(
        self, request: _ChatRequest, decision: CapDecision | None
    ) -> tuple[Call, Endpoint, bool, Any, tuple[Any, ...], dict[str, Any]]:
        params = request.params
        call = self._calls.start(
            "sdk",
            request.provider,
            model_name(params.get("model")),
            request.user_id,
            request.plan,
            request.feature,
            request.tags,
            params,
            decision=decision,
            agent=request.agent,
            account_id=request.account_id,
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
            ensure_include_usage(params)
        return call, OPENAI_CHAT, stream, target.create, (), params


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


def _id_text(value: Any) -> str | None:
    text = str(value)
    return text or None


def _has_chat_completions(client: Any) -> bool:
    completions = getattr(getattr(client, "chat", None), "completions", None)
    return callable(getattr(completions, "create", None))


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
