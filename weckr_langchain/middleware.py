"""``create_agent(..., middleware=[WeckrAgentMiddleware()])``: caps around each model
call of a LangChain 1.x agent, which can move a call to a cheaper model.

A callback handler sees a model call once its run has started, too late to swap the
model; ``wrap_model_call`` runs before, with the model in hand. Needs the
``langchain`` package (``create_agent``), not only ``langchain-core``.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from langchain.agents.middleware import AgentMiddleware, ModelRequest, ModelResponse
from langchain_core.language_models import BaseChatModel
from langchain_core.tools import BaseTool
from langgraph.config import get_config

from weckr_core import caps, estimate
from weckr_core.backends import Backend, CapDecision, CapRequest, Reservation, get_backend
from weckr_core.context import current_attribution
from weckr_core.errors import (
    WeckrDowngradeWarning,
    is_weckr_cap_error,
    is_weckr_config_error,
    warn_at_caller,
    warn_downgrade,
)
from weckr_core.records import UsageRecord, utc_now
from weckr_core.usage import NOT_REPORTED
from weckr_langchain.readers import (
    agent_of,
    metadata_str,
    record_messages,
    requested_model,
    step_of,
)
from weckr_langchain.tracker import (
    DOWNGRADE_SKIPPED_TAG,
    cap_check_failed,
    hold_not_dropped,
    middleware_owns_call,
)

logger = logging.getLogger("weckr_langchain")

# Pydantic fields that name the model in chat model classes (ChatOpenAI's
# ``model_name``, alias ``model``; ChatAnthropic's ``model``, alias ``model_name``;
# Bedrock's ``model_id``), and fields that route a call to a deployment regardless
# of that name (Azure OpenAI).
_NAME_FIELDS = frozenset({"model_name", "model", "model_id"})
_DEPLOYMENT_FIELDS = frozenset({"deployment_name", "azure_deployment"})
_MAX_WARNINGS_REMEMBERED = 10_000


@dataclass(slots=True, eq=False)
class _ModelCall:
    """One model call of the agent, from its cap decision to its usage record."""

    backend: Backend
    request: CapRequest
    started: float  # time.perf_counter(), for the latency
    started_at: datetime
    model: str
    provider: str
    user_id: str | None
    plan: str | None
    feature: str | None
    tags: tuple[str, ...]
    run_id: str | None
    parent_run_id: str | None
    step: str | None
    agent: str | None
    account_id: str | None = None
    requested_model: str | None = None  # set when the call moved to a cheaper model
    reservation: Reservation | None = None


class WeckrAgentMiddleware(AgentMiddleware):  # type: ignore[misc]
    """Caps, downgrades and one ``UsageRecord`` per model call of a ``create_agent`` agent.

    Before each model call the user's cap is reserved: a "block" decision raises
    ``WeckrCapError`` before the provider is called; a "downgrade" decision runs this
    one call on the cheaper model, the agent's model copied with only its model name
    changed, or ``models[<requested model>]`` when given (for models whose name
    alone does not pick what serves the call, such as Azure deployments). The record
    says so: ``requested_model`` is the agent's model, ``model`` the one that served
    the call. ``downgrade_as_block=True`` refuses instead of downgrading.

    Attribution, most specific first: the arguments here, the run's config metadata
    (``user_id``, ``plan``, ``feature``, ``account_id``), then the attribution context.

    Loop guards (``max_llm_calls`` and the rest) stay with ``WeckrHandler``: pass both,
    and each model call is still reserved and recorded once, by the middleware (see
    ``middleware_owns_call``). List this middleware last, so that it wraps each
    attempt of a retry or fallback middleware as its own call.
    """

    def __init__(
        self,
        *,
        feature: str | None = None,
        user_id: str | int | None = None,
        plan: str | None = None,
        tags: Iterable[str] = (),
        backend: Backend | None = None,
        models: Mapping[str, BaseChatModel] | None = None,
        downgrade_as_block: bool = False,
        account_id: str | int | None = None,
    ) -> None:
        """``backend`` defaults to ``weckr_core.get_backend()``, read at call time.
        ``models`` maps a model name to the model to use when the cap moves a call off
        it."""
        super().__init__()
        self.feature = feature
        self.user_id = None if user_id is None else str(user_id)
        self.account_id = None if account_id is None else str(account_id)
        self.plan = plan
        self.tags = tuple(tags)
        self.backend = backend
        self.models = dict(models or {})
        self.downgrade_as_block = downgrade_as_block
        self._warned: set[tuple[str | None, str, str]] = set()
        self._warned_lock = threading.Lock()

    def wrap_model_call(
        self,
        request: ModelRequest,
        handler: Callable[[ModelRequest], ModelResponse],
    ) -> ModelResponse:
        call = self._start(request)
        if call is None:
            return handler(request)
        decision = caps.reserve(call.backend, call.request, cap_check_failed)
        try:
            request = self._decide(call, request, decision)
        except BaseException:
            self._release(call)
            raise
        token = middleware_owns_call.set(True)
        try:
            response = handler(request)
        except BaseException as error:
            if _stopped_before_the_provider(error):
                self._release(call)
            else:
                self._finish(call, None, error)
            raise
        finally:
            middleware_owns_call.reset(token)
        self._finish(call, response, None)
        return response

    async def awrap_model_call(
        self,
        request: ModelRequest,
        handler: Callable[[ModelRequest], Awaitable[ModelResponse]],
    ) -> ModelResponse:
        call = self._start(request)
        if call is None:
            return await handler(request)
        decision = await caps.areserve(call.backend, call.request, cap_check_failed)
        try:
            request = self._decide(call, request, decision)
        except BaseException:
            await asyncio.to_thread(self._release, call)
            raise
        token = middleware_owns_call.set(True)
        try:
            response = await handler(request)
        except BaseException as error:
            # Settling may touch a database: off the event loop.
            if _stopped_before_the_provider(error):
                await asyncio.to_thread(self._release, call)
            else:
                await asyncio.to_thread(self._finish, call, None, error)
            raise
        finally:
            middleware_owns_call.reset(token)
        await asyncio.to_thread(self._finish, call, response, None)
        return response

    # -- the call -------------------------------------------------------------------

    def _start(self, request: ModelRequest) -> _ModelCall | None:
        """Who the call is for and what it may cost; None (the call goes ahead
        untracked) if reading the request fails."""
        try:
            return self._describe_call(request)
        except Exception:
            logger.exception("Weckr: could not read the agent's model request; not tracked")
            return None

    def _describe_call(self, request: ModelRequest) -> _ModelCall:
        config = _current_config() or {}
        metadata = config.get("metadata")
        context = current_attribution()
        user_id = self.user_id or metadata_str(metadata, "user_id") or context.user_id
        plan = self.plan or metadata_str(metadata, "plan") or context.plan
        feature = self.feature or metadata_str(metadata, "feature") or context.feature
        account_id = self.account_id or metadata_str(metadata, "account_id") or context.account_id
        model, provider, max_output_tokens = _describe(request.model, request.model_settings)
        info = getattr(request.runtime, "execution_info", None)
        # The model node's run: the parent of the model's own run.
        parent = getattr(config.get("callbacks"), "parent_run_id", None)
        return _ModelCall(
            backend=self.backend or get_backend(),
            request=CapRequest(
                user_id=user_id,
                plan=plan,
                model=model,
                provider=None if provider == "unknown" else provider,
                prompt=(request.system_message, request.messages, _tool_specs(request.tools)),
                max_output_tokens=max_output_tokens,
                account_id=account_id,
            ),
            started=time.perf_counter(),
            started_at=utc_now(),
            model=model,
            provider=provider,
            user_id=user_id,
            plan=plan,
            feature=feature,
            tags=self.tags + context.tags if context.tags else self.tags,
            run_id=getattr(info, "run_id", None),
            parent_run_id=None if parent is None else str(parent),
            step=step_of(metadata),
            agent=agent_of(metadata, None),
            account_id=account_id,
        )

    def _decide(
        self, call: _ModelCall, request: ModelRequest, decision: CapDecision
    ) -> ModelRequest:
        """The request to run: as it came, or on a cheaper model. Raises to refuse."""
        call.reservation = decision.reservation
        if decision.action == "allow":
            return request
        alternative = decision.alternative_model
        if decision.action == "downgrade" and alternative:
            if alternative == call.model:
                return request
            if not self.downgrade_as_block:
                return self._downgrade(call, request, alternative)
        raise caps.refusal(decision, call.user_id, call.plan)

    def _downgrade(self, call: _ModelCall, request: ModelRequest, alternative: str) -> ModelRequest:
        cheaper = self.models.get(call.model)
        if cheaper is None:
            try:
                cheaper = _with_model_name(
                    request.model, request.model_settings, call.model, alternative
                )
            except Exception:
                logger.exception("Weckr: could not copy %s for a downgrade", call.model)
        if cheaper is None:
            self._warn_once(
                (call.user_id, call.model, ""),
                f"Weckr: user {call.user_id} is over the cap of plan {call.plan} and the cap "
                f"says downgrade to {alternative}, but no such model could be made from "
                f"{type(request.model).__name__}: the call runs on {call.model}. Pass "
                f"models={{{call.model!r}: <the model to use>}} to WeckrAgentMiddleware, or "
                "downgrade_as_block=True to refuse such calls. Later occurrences for this "
                "user and model are silent.",
            )
            call.tags = (*call.tags, DOWNGRADE_SKIPPED_TAG)
            return request
        settings = request.model_settings
        name, provider, _ = _describe(cheaper, _without_model(settings))
        call.requested_model, call.model = call.model, name
        if provider != "unknown":
            call.provider = provider
        key = (call.user_id, call.requested_model, name)
        if self._first_time(key):
            warn_downgrade(call.user_id, call.requested_model, name)
        if isinstance(settings.get("model"), str):
            return request.override(model=cheaper, model_settings={**settings, "model": name})
        return request.override(model=cheaper)

    def _finish(
        self, call: _ModelCall, response: ModelResponse | None, error: BaseException | None
    ) -> None:
        """Settle the call's reservation with its record and hand the record on."""
        try:
            record = UsageRecord(
                timestamp=call.started_at,
                user_id=call.user_id,
                account_id=call.account_id,
                feature=call.feature,
                plan=call.plan,
                provider=call.provider,
                model=call.model,
                requested_model=call.requested_model,
                latency_ms=int((time.perf_counter() - call.started) * 1000),
                status="ok" if error is None else "error",
                error_type=None if error is None else type(error).__name__,
                source="langchain",
                run_id=call.run_id,
                parent_run_id=call.parent_run_id,
                agent=call.agent,
                step=call.step,
                tags=call.tags,
            )
            if response is None:
                record.apply_usage(NOT_REPORTED)
            else:
                record_messages(record, response.result)
            caps.finish(call.backend, call.reservation, record, hold_not_dropped)
        except Exception:
            logger.exception("Weckr: could not record the agent's model call (%s)", call.model)

    @staticmethod
    def _release(call: _ModelCall) -> None:
        caps.release(call.backend, call.reservation, hold_not_dropped)

    def _first_time(self, key: tuple[str | None, str, str]) -> bool:
        with self._warned_lock:
            if key in self._warned:
                return False
            if len(self._warned) >= _MAX_WARNINGS_REMEMBERED:
                self._warned.clear()
            self._warned.add(key)
            return True

    def _warn_once(self, key: tuple[str | None, str, str], message: str) -> None:
        if self._first_time(key):
            warn_at_caller(message, WeckrDowngradeWarning)


def _stopped_before_the_provider(error: BaseException) -> bool:
    """A cap, loop or config error from inside the call (a handler's loop guard, say):
    refused before the provider, so its hold is dropped and no row is written."""
    return is_weckr_cap_error(error) or is_weckr_config_error(error)


def _current_config() -> Mapping[str, Any] | None:
    """The run's config, inside a graph node (where ``wrap_model_call`` runs)."""
    try:
        return get_config()
    except RuntimeError:
        return None


def _describe(model: Any, settings: Mapping[str, Any]) -> tuple[str, str, int | None]:
    """``(model name, provider, output limit)`` of a chat model with the request's
    ``model_settings``, as the handler reads them from the callback payloads."""
    ls_params: dict[str, Any] = {}
    invocation_params: dict[str, Any] = dict(settings)
    try:
        ls_params = dict(model._get_ls_params(**settings))
        invocation_params = model._get_invocation_params(**settings)
    except Exception:
        pass
    name, provider = requested_model(None, ls_params, invocation_params)
    if name == "unknown":
        for field in ("model_name", "model", "model_id"):
            value = getattr(model, field, None)
            if isinstance(value, str) and value:
                name = value
                break
    limit = estimate.max_output_tokens(invocation_params) or estimate.max_output_tokens(
        {"max_tokens": ls_params.get("ls_max_tokens")}
    )
    return name, provider, limit


def _with_model_name(
    model: Any, settings: Mapping[str, Any], name: str, alternative: str
) -> BaseChatModel | None:
    """A copy of ``model`` with every setting kept but the model name, which becomes
    ``alternative``; None when the name is not a plain field of the model (or a
    deployment, not the name, picks what serves the call)."""
    fields = getattr(type(model), "model_fields", None)
    copy = getattr(model, "model_copy", None)
    if not isinstance(fields, Mapping) or not callable(copy):
        return None
    name_field = None
    for field, info in fields.items():
        names = {field, getattr(info, "alias", None)}
        if names & _DEPLOYMENT_FIELDS and getattr(model, field, None):
            return None
        if name_field is None and names & _NAME_FIELDS and getattr(model, field, None) == name:
            name_field = field
    if name_field is None:
        return None
    cheaper = copy(update={name_field: alternative})
    if _describe(cheaper, _without_model(settings))[0] != alternative:
        return None
    return cheaper if isinstance(cheaper, BaseChatModel) else None


def _without_model(settings: Mapping[str, Any]) -> dict[str, Any]:
    """``model_settings`` without a per-call ``model`` override."""
    return {key: value for key, value in settings.items() if key != "model"}


def _tool_specs(tools: Iterable[BaseTool | dict[str, Any]]) -> list[Any]:
    """What of the tools goes into the prompt: names, descriptions and arguments."""
    specs: list[Any] = []
    for tool in tools:
        if isinstance(tool, BaseTool):
            specs.append({"name": tool.name, "description": tool.description, "args": tool.args})
        else:
            specs.append(tool)
    return specs
