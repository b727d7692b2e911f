"""The state machine behind both LangChain handlers.

LangChain reports runs as a tree: a root run (an agent, a chain, or a bare model
call) and its children. The tracker maps every run it sees to its root, keeps one
``RunGuard`` per root, reserves each LLM call against the user's cap when its run
starts (after the guards), and turns each finished LLM run into exactly one
``UsageRecord``, which settles the reservation. A run whose parent this handler
never saw is a root: a handler attached to a single model (and not passed in the
run's config) therefore guards each model call on its own.

Who holds the cap and the record of an LLM call, when several Weckr components
see it: ``WeckrAgentMiddleware``, when the call runs inside its ``wrap_model_call``
(``middleware_owns_call``); else the first Weckr handler whose start event lets it
through. The others keep their loop guards, tool tags and totals for the call.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Concatenate, ParamSpec, TypeVar
from uuid import UUID

from langchain_core.outputs import LLMResult

from weckr_core import caps, estimate
from weckr_core.backends import (
    Backend,
    CapDecision,
    CapRequest,
    Reservation,
    RunStop,
    get_backend,
    report_run_stop,
)
from weckr_core.context import EMPTY, Attribution, current_attribution
from weckr_core.errors import (
    WeckrDowngradeWarning,
    WeckrLoopError,
    is_weckr_cap_error,
    is_weckr_config_error,
    warn_at_caller,
)
from weckr_core.guards import RunGuard, RunLimits
from weckr_core.pricing import ensure_priced
from weckr_core.records import UsageRecord, utc_now
from weckr_langchain.readers import (
    agent_of,
    metadata_str,
    record_result,
    requested_model,
    step_of,
)
from weckr_langchain.totals import UsageTotals

logger = logging.getLogger("weckr_langchain")

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")

# Tag on records of calls that ran on the requested model although the cap said
# "downgrade": a handler cannot swap a model once its run has started, and the agent
# middleware could not make the cheaper model.
DOWNGRADE_SKIPPED_TAG = "cap:downgrade-skipped"

#: True while ``WeckrAgentMiddleware`` runs a model call: the middleware reserves,
#: settles and records that call, so a handler on the same run neither reserves nor
#: records the LLM runs started meanwhile (it still guards and counts them).
middleware_owns_call: ContextVar[bool] = ContextVar("weckr_middleware_owns_call", default=False)


def _propagates(error: BaseException) -> bool:
    return is_weckr_cap_error(error) or is_weckr_config_error(error)


def guarded(method: Callable[Concatenate[T, P], R]) -> Callable[Concatenate[T, P], R | None]:
    """Log and swallow a bug in a callback body; let cap, loop and config errors out.
    (The LLM callbacks inline the same ``try`` instead.)"""

    @functools.wraps(method)
    def wrapper(self: T, /, *args: P.args, **kwargs: P.kwargs) -> R | None:
        try:
            return method(self, *args, **kwargs)
        except Exception as error:
            if _propagates(error):
                raise
            _log_bug(method.__name__)
            return None

    return wrapper


def _log_bug(callback: str) -> None:
    # Called from an ``except`` block: logs the exception being handled.
    logger.exception("Weckr: error in LangChain callback %s, ignored", callback)


def cap_check_failed(error: BaseException) -> None:
    # Fail open: an unreachable backend must not take the product down.
    logger.warning("Weckr: cap check failed (%r); allowing the call", error)


def hold_not_dropped(error: BaseException) -> None:
    # The backend lets an unsettled reservation expire on its own.
    logger.warning("Weckr: could not settle or release a cap reservation (%r)", error)


class _ClaimedRuns:
    """LLM run ids whose cap and record a Weckr handler in this process has taken,
    so that two handlers attached to the same run (an explicit one and
    ``weckr_callback()``'s) reserve and record it once. Bounded: ids are forgotten
    oldest first."""

    def __init__(self, size: int = 65_536) -> None:
        self._ids: OrderedDict[int, None] = OrderedDict()
        self._size = size
        self._lock = threading.Lock()

    def claim(self, key: int) -> bool:
        """``key`` is the run id's ``UUID.int``."""
        with self._lock:
            if key in self._ids:
                return False
            self._ids[key] = None
            if len(self._ids) > self._size:
                self._ids.popitem(last=False)
            return True


_claimed = _ClaimedRuns()
_warned_downgrades: set[tuple[str | None, str]] = set()
_warned_lock = threading.Lock()


def _owns(key: int) -> bool:
    """Whether this handler holds the cap and the record of LLM run ``key``."""
    return not middleware_owns_call.get() and _claimed.claim(key)


@dataclass(slots=True, eq=False)
class _Root:
    key: int  # run_id.int
    id: str  # str(run_id)
    context: Attribution
    guard: RunGuard | None
    tools: tuple[str, ...] = ()
    # Keys of the runs below the root, made on the first one (a bare model call has none).
    runs: set[int] | None = None


@dataclass(slots=True, eq=False)
class _Run:
    root: _Root
    name: str | None
    parent_name: str | None
    call: _LlmCall | None = None


@dataclass(slots=True, eq=False)
class _LlmCall:
    root: _Root
    parent_run_id: UUID | None
    started: float  # time.perf_counter(), for the latency
    started_at: datetime
    model: str
    provider: str
    user_id: str | None
    plan: str | None
    feature: str | None
    step: str | None
    agent: str | None
    tags: tuple[str, ...]
    backend: Backend
    account_id: str | None = None
    # Whether this handler reserves, settles and records the call (see the module doc).
    owner: bool = True
    reservation: Reservation | None = None


class RunTracker:
    """Per-run state of one handler, keyed by ``UUID.int`` (hashing a UUID runs
    Python code, hashing an int does not) and guarded by one lock."""

    def __init__(
        self,
        *,
        user_id: str | int | None,
        plan: str | None,
        feature: str | None,
        tags: tuple[str, ...],
        backend: Backend | None,
        limits: RunLimits,
        downgrade_as_block: bool,
        totals: UsageTotals | None,
        account_id: str | int | None = None,
    ) -> None:
        self.user_id = None if user_id is None else str(user_id)
        self.account_id = None if account_id is None else str(account_id)
        self.plan = plan
        self.feature = feature
        self.tags = tags
        self.backend = backend
        self.limits = limits
        self._guards_on = limits.any
        self.downgrade_as_block = downgrade_as_block
        self.totals = totals
        self._lock = threading.Lock()
        self._runs: dict[int, _Run] = {}
        self._roots: dict[int, _Root] = {}

    # Run tree bookkeeping.

    def _enter(self, run_id: UUID, parent_run_id: UUID | None, name: str | None) -> _Run:
        key = run_id.int
        with self._lock:
            parent = self._runs.get(parent_run_id.int) if parent_run_id is not None else None
            if parent is None:
                root = self._roots.get(key)
                if root is None:
                    id_ = str(run_id)
                    guard = RunGuard(self.limits, run_id=id_) if self._guards_on else None
                    root = self._roots[key] = _Root(key, id_, current_attribution(), guard)
                run = self._runs[key] = _Run(root, name, None)
            else:
                root = parent.root
                run = self._runs[key] = _Run(root, name, parent.name)
                if root.runs is None:
                    root.runs = {key}
                else:
                    root.runs.add(key)
        return run

    def _exit(self, run_id: UUID) -> list[_LlmCall]:
        """Forget the run; returns the calls of its tree that still hold a
        reservation when it is a root (their LLM runs never ended)."""
        abandoned: list[_LlmCall] = []
        with self._lock:
            self._forget(run_id.int, abandoned)
        return abandoned

    def _forget(self, key: int, abandoned: list[_LlmCall] | None = None) -> _Run | None:
        # Called with the lock held.
        run = self._runs.pop(key, None)
        if run is None:
            return None
        root = run.root
        if root.key == key:
            # The root ended (or failed): forget whatever of its tree is left.
            self._roots.pop(key, None)
            if root.runs:
                for child in root.runs:
                    left = self._runs.pop(child, None)
                    call = left.call if left is not None else None
                    if abandoned is not None and call is not None and call.reservation:
                        abandoned.append(call)
                root.runs.clear()
        elif root.runs is not None:
            root.runs.discard(key)
        return run

    @staticmethod
    def _release(calls: list[_LlmCall]) -> None:
        # A start event of another handler refused the call after ours reserved it.
        for call in calls:
            caps.release(call.backend, call.reservation, hold_not_dropped)

    @guarded
    def run_started(self, run_id: UUID, parent_run_id: UUID | None, name: str | None) -> None:
        self._enter(run_id, parent_run_id, name)

    @guarded
    def run_ended(self, run_id: UUID) -> None:
        abandoned = self._exit(run_id)
        if abandoned:
            self._release(abandoned)

    async def arun_ended(self, run_id: UUID) -> None:
        """``run_ended`` on the event loop: only a release goes to a worker thread."""
        try:
            abandoned = self._exit(run_id)
            if abandoned:
                await asyncio.to_thread(self._release, abandoned)
        except Exception:
            _log_bug("run_ended")

    @property
    def open_runs(self) -> int:
        """Runs being tracked: zero once every root run has ended."""
        with self._lock:
            return len(self._runs) + len(self._roots)

    # LLM runs.

    def llm_started(
        self,
        run_id: UUID,
        parent_run_id: UUID | None,
        serialized: Mapping[str, Any] | None,
        metadata: Mapping[str, Any] | None,
        invocation_params: Mapping[str, Any] | None,
        prompt: Any = None,
    ) -> None:
        """An LLM run starts: loop guards, then the cap's reservation (``prompt``, the
        run's messages or prompts, sizes the estimate). Raises to refuse the call."""
        try:
            call, request = self._begin(
                run_id, parent_run_id, serialized, metadata, invocation_params, prompt
            )
            if request is not None:
                try:
                    self._decide(call, caps.reserve(call.backend, request, cap_check_failed))
                except BaseException:
                    self._refused(run_id, call)
                    raise
        except Exception as error:
            if _propagates(error):
                raise
            _log_bug("llm_started")

    async def allm_started(
        self,
        run_id: UUID,
        parent_run_id: UUID | None,
        serialized: Mapping[str, Any] | None,
        metadata: Mapping[str, Any] | None,
        invocation_params: Mapping[str, Any] | None,
        prompt: Any = None,
    ) -> None:
        """``llm_started`` for async runs: the reservation through the backend's
        ``areserve``, everything else that may touch a database on a worker thread."""
        try:
            call, request = await asyncio.to_thread(
                self._begin, run_id, parent_run_id, serialized, metadata, invocation_params, prompt
            )
            if request is not None:
                try:
                    decision = await caps.areserve(call.backend, request, cap_check_failed)
                    self._decide(call, decision)
                except BaseException:
                    await asyncio.to_thread(self._refused, run_id, call)
                    raise
        except Exception as error:
            if _propagates(error):
                raise
            _log_bug("llm_started")

    def _begin(
        self,
        run_id: UUID,
        parent_run_id: UUID | None,
        serialized: Mapping[str, Any] | None,
        metadata: Mapping[str, Any] | None,
        invocation_params: Mapping[str, Any] | None,
        prompt: Any,
    ) -> tuple[_LlmCall, CapRequest | None]:
        """Enter the LLM run and pass it through the loop guards. Returns the call
        and, when this handler holds its cap, what to reserve."""
        run = self._enter(run_id, parent_run_id, None)
        try:
            call = run.call = self._admit(
                run, parent_run_id, serialized, metadata, invocation_params
            )
        except BaseException:
            # Refused before the provider was called: LangChain sends no end event.
            self._exit(run_id)
            raise
        # Claimed once the guards let the call through.
        call.owner = _owns(run_id.int)
        if not call.owner:
            return call, None
        tools = invocation_params.get("tools") if invocation_params else None
        return call, CapRequest(
            user_id=call.user_id,
            plan=call.plan,
            model=call.model,
            provider=None if call.provider == "unknown" else call.provider,
            prompt=(prompt, tools) if tools else prompt,
            max_output_tokens=estimate.max_output_tokens(invocation_params),
            account_id=call.account_id,
        )

    def _admit(
        self,
        run: _Run,
        parent_run_id: UUID | None,
        serialized: Mapping[str, Any] | None,
        metadata: Mapping[str, Any] | None,
        invocation_params: Mapping[str, Any] | None,
    ) -> _LlmCall:
        root = run.root
        model, provider = requested_model(serialized, metadata, invocation_params)
        context = root.context
        if context is EMPTY:
            context = current_attribution()
        user_id = self.user_id or metadata_str(metadata, "user_id") or context.user_id
        plan = self.plan or metadata_str(metadata, "plan") or context.plan
        feature = self.feature or metadata_str(metadata, "feature") or context.feature
        account_id = self.account_id or metadata_str(metadata, "account_id") or context.account_id
        tags = self.tags + context.tags if context.tags else self.tags
        if metadata and (
            "langgraph_node" in metadata
            or "langgraph_step" in metadata
            or "lc_agent_name" in metadata
        ):
            step, agent = step_of(metadata), agent_of(metadata, run.parent_name)
        else:
            step, agent = None, run.parent_name

        guard = root.guard
        if guard is not None:
            if guard.user_id is None:
                guard.user_id, guard.plan = user_id, plan
            if guard.stopped is not None:
                # The stop was swallowed (say by a ToolNode's handle_tool_errors=True):
                # refuse every further call of this run.
                raise WeckrLoopError(
                    f"run already stopped: {guard.stopped}",
                    llm_calls=guard.llm_calls,
                    tokens=guard.tokens,
                    cost=guard.cost,
                    user_id=user_id,
                    plan_name=plan,
                    run_id=root.id,
                )
            try:
                guard.before_llm_call()
            except WeckrLoopError as error:
                self._report_stop(error, feature, agent)
                raise
        return _LlmCall(
            root=root,
            parent_run_id=parent_run_id,
            started=time.perf_counter(),
            started_at=utc_now(),
            model=model,
            provider=provider,
            user_id=user_id,
            plan=plan,
            feature=feature,
            step=step,
            agent=agent,
            tags=tags,
            backend=self.backend or get_backend(),
            account_id=account_id,
        )

    def _decide(self, call: _LlmCall, decision: CapDecision) -> None:
        """Apply the cap's decision to a call; raises to refuse it."""
        call.reservation = decision.reservation
        if decision.action == "allow":
            return
        alternative = decision.alternative_model
        if decision.action == "downgrade" and alternative:
            if alternative == call.model:
                return
            if not self.downgrade_as_block:
                _warn_downgrade_skipped(call.user_id, call.plan, call.model, alternative)
                call.tags = (*call.tags, DOWNGRADE_SKIPPED_TAG)
                return
        raise caps.refusal(decision, call.user_id, call.plan)

    def _refused(self, run_id: UUID, call: _LlmCall) -> None:
        """The cap refused the call (or reserving failed): LangChain sends no end
        event, so the run is forgotten here and its hold, if any, dropped."""
        self._exit(run_id)
        caps.release(call.backend, call.reservation, hold_not_dropped)

    def _report_stop(self, error: WeckrLoopError, feature: str | None, agent: str | None) -> None:
        stop = RunStop.from_error(error, source="langchain", feature=feature, agent=agent)
        report_run_stop(self.backend or get_backend(), stop)

    def llm_ended(
        self,
        run_id: UUID,
        parent_run_id: UUID | None,
        response: LLMResult | None,
        error: BaseException | None = None,
    ) -> None:
        """The LLM run finished, or failed with ``error``: its record, which settles
        the call's reservation."""
        try:
            key = run_id.int
            with self._lock:
                run = self._forget(key)
            call = run.call if run is not None else None
            if call is None:
                # No (usable) start event: record what is known rather than drop the row.
                call = self._orphan_call(run_id, run, parent_run_id)
            root = call.root
            tags = call.tags
            if root.tools:
                tags = tuple(dict.fromkeys((*tags, *(f"tool:{name}" for name in root.tools))))
            record = UsageRecord(
                # The LLM run's id: a retried delivery or a second handler cannot add a row.
                event_id=root.id if root.key == key else str(run_id),
                timestamp=call.started_at,
                user_id=call.user_id,
                account_id=call.account_id,
                feature=call.feature,
                plan=call.plan,
                provider=call.provider,
                model=call.model,
                latency_ms=int((time.perf_counter() - call.started) * 1000),
                status="ok" if error is None else "error",
                error_type=None if error is None else type(error).__name__,
                source="langchain",
                run_id=root.id,
                parent_run_id=None if call.parent_run_id is None else str(call.parent_run_id),
                agent=call.agent,
                step=call.step,
                tags=tags,
            )
            record_result(record, response)
            guard = root.guard
            if guard is not None:
                if guard.limits.max_cost_usd is not None:
                    ensure_priced(record)
                guard.after_llm_call(record.total_tokens, record.cost_usd)
            if self.totals is not None:
                self.totals.add(ensure_priced(record))
            if call.owner:
                caps.finish(call.backend, call.reservation, record, hold_not_dropped)
        except Exception as bug:
            if _propagates(bug):
                raise
            _log_bug("llm_ended" if error is None else "llm_failed")

    def _orphan_call(self, run_id: UUID, run: _Run | None, parent_run_id: UUID | None) -> _LlmCall:
        context = current_attribution()
        root = run.root if run is not None else _Root(run_id.int, str(run_id), context, None)
        return _LlmCall(
            root=root,
            parent_run_id=parent_run_id,
            started=time.perf_counter(),
            started_at=utc_now(),
            model="unknown",
            provider="unknown",
            user_id=self.user_id or context.user_id,
            plan=self.plan or context.plan,
            feature=self.feature or context.feature,
            step=None,
            agent=run.parent_name if run is not None else None,
            tags=(*self.tags, *context.tags),
            backend=self.backend or get_backend(),
            owner=_owns(run_id.int),
            account_id=self.account_id or context.account_id,
        )

    # Tool runs.

    @guarded
    def tool_started(
        self,
        run_id: UUID,
        parent_run_id: UUID | None,
        name: str | None,
        arguments: Any,
    ) -> None:
        run = self._enter(run_id, parent_run_id, name)
        tool = name or "unknown"
        guard = run.root.guard
        if guard is not None:
            try:
                guard.on_tool_call(tool, arguments)
            except WeckrLoopError as error:
                self._report_stop(error, self.feature, run.parent_name)
                self._exit(run_id)
                raise
            except BaseException:
                self._exit(run_id)
                raise
        with self._lock:
            if tool not in run.root.tools:
                run.root.tools += (tool,)


def _warn_downgrade_skipped(
    user_id: str | None, plan: str | None, model: str, alternative: str | None
) -> None:
    key = (user_id, model)
    with _warned_lock:
        if key in _warned_downgrades:
            return
        if len(_warned_downgrades) > 10_000:
            _warned_downgrades.clear()
        _warned_downgrades.add(key)
    warn_at_caller(
        f"Weckr: user {user_id} is over the cap of plan {plan} and the cap says "
        f"downgrade to {alternative}, but a LangChain model cannot be swapped once its "
        f"run has started: the call runs on {model}. Pass downgrade_as_block=True to "
        "refuse such calls instead. Later occurrences for this user and model are silent.",
        WeckrDowngradeWarning,
    )
