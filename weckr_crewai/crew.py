"""Cost per agent and per task, caps and loop guards for CrewAI crews.

How it hooks in (CrewAI 1.15):

- ``attach`` puts a marker on ``crew.before_kickoff_callbacks`` (so copies made by
  ``kickoff_for_each`` stay attached) and installs, once per process, an
  ``execution_start`` / ``execution_end`` interception hook pair that does nothing
  for crews without the marker.
- At ``execution_start`` of an attached crew a ``Kickoff`` is created (new run id,
  new ``RunGuard``, attribution resolved) and its model-call and tool-call hooks are
  registered in CrewAI's *execution-scoped* hook registry, a context variable, so
  they see only this kickoff's calls, including those on threads CrewAI starts with
  a copy of the context. ``execution_end`` (success or failure) removes them.
- Usage comes from ``LLMCallCompletedEvent.usage``: one event per provider call,
  with that call's own counts. The handler runs on CrewAI's event thread pool with
  a copy of the emitting context, which is how it finds the kickoff and the call.
  ``crew.usage_metrics`` is not used: it sums each agent's LLM lifetime counters.
"""

from __future__ import annotations

import contextvars
import logging
import sys
import threading
import time
import uuid
from collections.abc import Iterable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from crewai.events.base_events import BaseEvent
from crewai.events.event_bus import crewai_event_bus
from crewai.events.types.llm_events import LLMCallCompletedEvent, LLMCallFailedEvent
from crewai.hooks.dispatch import (
    HookAborted,
    InterceptionPoint,
    get_hooks,
    get_scoped_hooks,
    register,
    scoped_hooks,
)

from weckr_core import caps, estimate
from weckr_core.backends import (
    Backend,
    CapRequest,
    Reservation,
    RunStop,
    get_backend,
    report_run_stop,
)
from weckr_core.context import EMPTY, Attribution, current_attribution
from weckr_core.errors import WeckrConfigError, WeckrLoopError
from weckr_core.guards import RunGuard, RunLimits
from weckr_core.records import UsageRecord, utc_now
from weckr_crewai.errors import CrewCapError, CrewConfigError, CrewLoopError
from weckr_crewai.usage import usage_from_crewai

if TYPE_CHECKING:
    from crewai import Crew

logger = logging.getLogger("weckr_crewai")

# How long the next call of a kickoff with a token or cost limit waits for the
# previous call's usage, which arrives on CrewAI's event thread pool.
RECORD_WAIT_SECONDS = 5.0
_TASK_LABEL_LENGTH = 80
_PROVIDER_PREFIXES = frozenset(
    {
        "openai",
        "anthropic",
        "gemini",
        "google",
        "vertex_ai",
        "azure",
        "bedrock",
        "groq",
        "mistral",
        "deepseek",
        "xai",
        "cohere",
        "together_ai",
        "fireworks_ai",
        "openrouter",
        "ollama",
        "watsonx",
        "huggingface",
    }
)

_current_kickoff: contextvars.ContextVar[Kickoff | None] = contextvars.ContextVar(
    "weckr_crewai_kickoff", default=None
)
_current_call: contextvars.ContextVar[LLMCall | None] = contextvars.ContextVar(
    "weckr_crewai_call", default=None
)


class WeckrCrew:
    """Per-kickoff cost tracking, cap checks and loop guards for a CrewAI crew::

        WeckrCrew(feature="research", max_cost_usd=2).attach(crew)
        crew.kickoff(inputs={...})  # may raise WeckrCapError / WeckrLoopError

    Arguments given here win; those left out come from the attribution context
    (``weckr_core.attribute`` or the Django middleware) at kickoff time, or at
    attach time when the kickoff runs where that context is not set. The limits are
    "at most N" and count per kickoff.
    """

    def __init__(
        self,
        *,
        feature: str | None = None,
        user_id: object = None,
        plan: str | None = None,
        tags: Iterable[str] = (),
        backend: Backend | None = None,
        max_llm_calls: int | None = None,
        max_tokens: int | None = None,
        max_cost_usd: Decimal | float | str | None = None,
        max_repeated_tool_calls: int | None = None,
    ) -> None:
        if isinstance(tags, str):
            raise TypeError("tags must be an iterable of strings, not a string")
        self.feature = feature
        self.user_id = None if user_id is None else str(user_id)
        self.plan = plan
        self.tags = tuple(tags)
        self.backend = backend
        self.limits = RunLimits.of(
            max_llm_calls=max_llm_calls,
            max_tokens=max_tokens,
            max_cost_usd=max_cost_usd,
            max_repeated_tool_calls=max_repeated_tool_calls,
        )
        self._lock = threading.Lock()
        self._last_run: Kickoff | None = None

    def attach(self, crew: Crew) -> Crew:
        """Track every kickoff of ``crew`` from now on; returns the crew.

        Attaching again (this or another ``WeckrCrew``) replaces the previous one.
        """
        _install()
        marker = _Attachment(self, current_attribution())
        crew.before_kickoff_callbacks = [
            *(cb for cb in crew.before_kickoff_callbacks if not isinstance(cb, _Attachment)),
            marker,
        ]
        return crew

    @staticmethod
    def detach(crew: Crew) -> None:
        crew.before_kickoff_callbacks = [
            cb for cb in crew.before_kickoff_callbacks if not isinstance(cb, _Attachment)
        ]

    @property
    def last_run(self) -> RunGuard | None:
        """Counters of the most recently started kickoff (``run_id``, ``llm_calls``,
        ``tokens``, ``cost``, ``stopped``)."""
        with self._lock:
            return None if self._last_run is None else self._last_run.guard

    def _start(self, crew: Crew, attached_attribution: Attribution) -> Kickoff:
        context = current_attribution()
        if context == EMPTY:
            context = attached_attribution
        attribution = Attribution(
            user_id=self.user_id if self.user_id is not None else context.user_id,
            plan=self.plan if self.plan is not None else context.plan,
            feature=self.feature if self.feature is not None else context.feature,
            tags=tuple(dict.fromkeys((*context.tags, *self.tags))),
        )
        kickoff = Kickoff(
            crew=crew,
            attribution=attribution,
            backend=self.backend if self.backend is not None else get_backend(),
            limits=self.limits,
        )
        with self._lock:
            self._last_run = kickoff
        return kickoff


class _Attachment:
    """The marker ``attach`` leaves on a crew; a no-op ``before_kickoff`` callback."""

    def __init__(self, weckr: WeckrCrew, attribution: Attribution) -> None:
        self.weckr = weckr
        self.attribution = attribution

    def __call__(self, inputs: dict[str, Any]) -> dict[str, Any]:
        kickoff = _current_kickoff.get()
        if kickoff is None or kickoff.ended:
            # CrewAI calls this right after execution_start: our hook did not run.
            logger.warning(
                "Weckr: this kickoff is not tracked: the execution hooks were removed "
                "(crewai.hooks.clear_all_hooks?). Later kickoffs are tracked again."
            )
            _install()
        return inputs

    def __repr__(self) -> str:
        return f"<weckr_crewai attachment feature={self.weckr.feature!r}>"


@dataclass(eq=False)
class LLMCall:
    """One LLM call of a kickoff, from its before-call hook to its usage record."""

    step: int
    agent: str | None
    task: str | None
    model: str
    provider: str
    started_at: datetime = field(default_factory=utc_now)
    done: threading.Event = field(default_factory=threading.Event)
    recorded: bool = False
    reservation: Reservation | None = None


class Kickoff:
    """The state of one kickoff: guard, attribution, the calls made so far."""

    def __init__(
        self,
        *,
        crew: Crew,
        attribution: Attribution,
        backend: Backend,
        limits: RunLimits,
    ) -> None:
        self.crew = crew
        self.run_id = str(uuid.uuid4())
        self.attribution = attribution
        self.backend = backend
        self.guard = RunGuard(
            limits, run_id=self.run_id, user_id=attribution.user_id, plan=attribution.plan
        )
        self.stopped: HookAborted | None = None
        self.ended = False
        self._thread = threading.get_ident()
        self._waits_for_usage = limits.max_tokens is not None or limits.max_cost_usd is not None
        self._lock = threading.Lock()
        self._calls: list[LLMCall] = []
        self._task_labels = {str(task.id): _task_label(task) for task in crew.tasks}
        self._scope: AbstractContextManager[Any] | None = None
        self._tokens: list[contextvars.Token[Any]] = []

    # Lifecycle, on the kickoff's own thread.

    def enter(self) -> None:
        hooks: dict[InterceptionPoint, list[Any]] = {}
        for point in InterceptionPoint:
            # Keep other execution-scoped hooks; drop an enclosing kickoff's.
            kept = [hook for hook in get_scoped_hooks(point) if not _is_ours(hook)]
            if kept:
                hooks[point] = kept
        hooks.setdefault(InterceptionPoint.PRE_MODEL_CALL, []).append(_mark(self.before_llm_call))
        hooks.setdefault(InterceptionPoint.PRE_TOOL_CALL, []).append(_mark(self.before_tool_call))
        self._scope = scoped_hooks(hooks)
        self._scope.__enter__()
        self._tokens = [_current_kickoff.set(self), _current_call.set(None)]

    def exit(self) -> None:
        self.ended = True
        try:
            self._record_missing_usage()
        finally:
            try:
                _current_call.reset(self._tokens[1])
                _current_kickoff.reset(self._tokens[0])
                if self._scope is not None:
                    self._scope.__exit__(None, None, None)
            except ValueError:
                # Ended in another context than it started (not seen in CrewAI 1.15):
                # at least stop this context from treating later calls as ours.
                _current_kickoff.set(None)
                _current_call.set(None)
                logger.warning("Weckr: run %s ended in a different context", self.run_id)

    # Hooks, on whichever thread makes the call.

    def before_llm_call(self, context: Any) -> None:
        if self.ended:
            return
        previous = _current_call.get()
        if self._waits_for_usage and previous is not None and not previous.done.is_set():
            self._wait(previous)
        # Until this call passes, nothing in this context is an open call of ours.
        _current_call.set(None)
        if self.stopped is not None:
            raise self.stopped
        llm = getattr(context, "llm", None)
        model, provider = _model_of(llm)
        attribution = self.attribution
        reservation = None
        if attribution.user_id:
            request = CapRequest(
                attribution.user_id,
                attribution.plan,
                model,
                provider,
                prompt=getattr(context, "messages", None),
                max_output_tokens=_output_limit(llm),
            )
            try:
                decision = caps.reserve(self.backend, request, _report)
            except WeckrConfigError as error:
                raise CrewConfigError.from_error(error) from error
            if threading.get_ident() != self._thread:
                # A thread CrewAI started for this kickoff (async task, timeout).
                _close_foreign_connections()
            reservation = decision.reservation
            if decision.action != "allow":
                # A CrewAI LLM object is shared by agents and threads, so a downgrade
                # cannot be applied to one call: a capped user is stopped either way.
                caps.release(self.backend, reservation, _report)
                refusal = caps.refusal(decision, attribution.user_id, attribution.plan)
                self.stopped = CrewCapError.from_error(refusal)
                raise self.stopped
        try:
            self.guard.before_llm_call()
        except WeckrLoopError as error:
            caps.release(self.backend, reservation, _report)
            self.stopped = self._loop_stop(error, getattr(context, "agent", None))
            raise self.stopped from error
        with self._lock:
            call = LLMCall(
                step=len(self._calls) + 1,
                agent=_agent_role(getattr(context, "agent", None)),
                task=_task_label(getattr(context, "task", None)),
                model=model,
                provider=provider,
                reservation=reservation,
            )
            self._calls.append(call)
        _current_call.set(call)

    def before_tool_call(self, context: Any) -> None:
        if self.ended:
            return
        try:
            self.guard.on_tool_call(str(context.tool_name), context.tool_input)
        except WeckrLoopError as error:
            # CrewAI turns a tool hook's abort into a "blocked" observation for the
            # model, so the stop is raised again before the next model call.
            self.stopped = self._loop_stop(error, getattr(context, "agent", None))
            raise self.stopped from error

    def _loop_stop(self, error: WeckrLoopError, agent: Any) -> CrewLoopError:
        """The error that stops the kickoff; the stop is also handed to the backend."""
        stop = RunStop.from_error(
            error, source="crewai", feature=self.attribution.feature, agent=_agent_role(agent)
        )
        report_run_stop(self.backend, stop)
        return CrewLoopError.from_error(error)

    def _wait(self, call: LLMCall) -> None:
        if not call.done.wait(RECORD_WAIT_SECONDS):
            self._waits_for_usage = False
            logger.warning(
                "Weckr: no usage for LLM call %s of run %s after %ss; does the LLM emit "
                "LLMCallCompletedEvent? max_tokens and max_cost_usd cannot see it.",
                call.step,
                self.run_id,
                RECORD_WAIT_SECONDS,
            )

    # Events, on CrewAI's event thread pool.

    def on_completed(self, event: LLMCallCompletedEvent) -> None:
        call = self._claim(_current_call.get(), event)
        record = self._record_for(call, event)
        try:
            record.apply_usage(usage_from_crewai(event.usage))
        except TypeError:
            logger.exception("Weckr: unreadable usage on run %s step %s", self.run_id, call.step)
            record.usage_reported = False
        self._deliver(call, record)

    def on_failed(self, event: LLMCallFailedEvent) -> None:
        if event.error.startswith("LLM call denied"):
            # A hook stopped it before the provider was called: nothing was spent.
            denied = _current_call.get()
            with self._lock:
                if denied is None or denied.recorded or denied not in self._calls:
                    return
                denied.recorded = True
            # Another hook denied it after ours reserved: the call was never made.
            caps.release(self.backend, denied.reservation, _report)
            denied.done.set()
            return
        call = self._claim(_current_call.get(), event)
        record = self._record_for(call, event)
        record.status = "error"
        record.error_type = "LLMCallFailedEvent"
        record.usage_reported = False
        self._deliver(call, record)

    def _claim(self, call: LLMCall | None, event: Any) -> LLMCall:
        with self._lock:
            if call is None or call.recorded or call not in self._calls:
                # The context holds a later call: one made while this one was still
                # open (an LLM call inside a tool run by the provider call itself).
                role = getattr(event, "agent_role", None)
                call = next(
                    (c for c in reversed(self._calls) if not c.recorded and c.agent == role),
                    None,
                )
            if call is not None:
                call.recorded = True
                return call
            # A call that reached the provider without passing our hook.
            model, provider = _split_model(str(event.model or "unknown"), None)
            task_id = getattr(event, "task_id", None)
            untracked = LLMCall(
                step=len(self._calls) + 1,
                agent=getattr(event, "agent_role", None),
                task=self._task_labels.get(str(task_id)) if task_id else None,
                model=model,
                provider=provider,
                recorded=True,
            )
            self._calls.append(untracked)
            return untracked

    def _record_for(self, call: LLMCall, event: Any | None) -> UsageRecord:
        attribution = self.attribution
        latency = None
        finished = getattr(event, "timestamp", None)
        if isinstance(finished, datetime) and finished.tzinfo is not None:
            # The event is stamped when the provider answered, not when we see it.
            latency = max(0, int((finished - call.started_at).total_seconds() * 1000))
        return UsageRecord(
            timestamp=call.started_at,
            user_id=attribution.user_id,
            feature=attribution.feature,
            plan=attribution.plan,
            provider=call.provider,
            model=call.model,
            latency_ms=latency,
            source="crewai",
            run_id=self.run_id,
            agent=call.agent,
            task=call.task,
            step=str(call.step),
            tags=attribution.tags,
        )

    def _deliver(self, call: LLMCall, record: UsageRecord) -> None:
        try:
            record.ensure_priced()
            if not record.priced and self.guard.limits.max_cost_usd is not None:
                logger.warning(
                    "Weckr: no price known for %s: max_cost_usd cannot count its calls "
                    "(add a price override).",
                    record.model,
                )
            self.guard.after_llm_call(record.total_tokens, record.cost_usd)
            caps.finish(self.backend, call.reservation, record, _report)
        finally:
            call.done.set()

    def _record_missing_usage(self) -> None:
        """One row per call whose usage never arrived, so no call goes unrecorded."""
        deadline = time.monotonic() + RECORD_WAIT_SECONDS
        with self._lock:
            calls = list(self._calls)
        for call in calls:
            call.done.wait(max(0.0, deadline - time.monotonic()))
        with self._lock:
            missing = [call for call in calls if not call.recorded]
            for call in missing:
                call.recorded = True
        for call in missing:
            record = self._record_for(call, None)
            record.usage_reported = False
            try:
                self._deliver(call, record)
            except Exception:
                logger.exception(
                    "Weckr: could not record call %s of run %s", call.step, self.run_id
                )


# Process-wide wiring: a no-op for crews that are not attached.


def _on_execution_start(context: Any) -> None:
    crew = getattr(context, "crew", None)
    if crew is None:
        return
    attachment = next(
        (cb for cb in crew.before_kickoff_callbacks if isinstance(cb, _Attachment)), None
    )
    if attachment is None:
        return
    try:
        attachment.weckr._start(crew, attachment.attribution).enter()
    except Exception:
        # CrewAI would swallow it too; say why the kickoff goes untracked.
        logger.exception("Weckr: could not start tracking a kickoff")


def _on_execution_end(context: Any) -> None:
    kickoff = _current_kickoff.get()
    if kickoff is not None and kickoff.crew is getattr(context, "crew", None):
        try:
            kickoff.exit()
        except Exception:
            logger.exception("Weckr: could not finish tracking run %s", kickoff.run_id)


def _on_llm_completed(source: Any, event: BaseEvent) -> None:
    kickoff = _current_kickoff.get()
    if kickoff is None or not isinstance(event, LLMCallCompletedEvent):
        return
    try:
        kickoff.on_completed(event)
    except Exception:
        logger.exception("Weckr: could not record a CrewAI LLM call")
    finally:
        _close_foreign_connections()


def _on_llm_failed(source: Any, event: BaseEvent) -> None:
    kickoff = _current_kickoff.get()
    if kickoff is None or not isinstance(event, LLMCallFailedEvent):
        return
    try:
        kickoff.on_failed(event)
    except Exception:
        logger.exception("Weckr: could not record a failed CrewAI LLM call")
    finally:
        _close_foreign_connections()


_install_lock = threading.Lock()


def _install() -> None:
    """Register the process-wide hooks and handlers, again if something cleared them."""
    with _install_lock:
        for point, hook in (
            (InterceptionPoint.EXECUTION_START, _on_execution_start),
            (InterceptionPoint.EXECUTION_END, _on_execution_end),
        ):
            if hook not in get_hooks(point):
                register(point, hook)
        # Handlers are kept in a set: registering again is a no-op.
        crewai_event_bus.register_handler(LLMCallCompletedEvent, _on_llm_completed)
        crewai_event_bus.register_handler(LLMCallFailedEvent, _on_llm_failed)


def _close_foreign_connections() -> None:
    """What Django's request signals do, for threads CrewAI owns: close this thread's
    connections that are broken or past ``CONN_MAX_AGE``. Never one in a transaction."""
    if "django" not in sys.modules:
        return
    from django.conf import settings

    if not settings.configured:
        return
    from django.db import connections

    for connection in connections.all(initialized_only=True):
        if not connection.in_atomic_block:
            connection.close_if_unusable_or_obsolete()


# Helpers.


def _mark(hook: Any) -> Any:
    def weckr_hook(context: Any) -> Any:
        return hook(context)

    weckr_hook.weckr_crewai = True  # type: ignore[attr-defined]
    return weckr_hook


def _is_ours(hook: Any) -> bool:
    return getattr(hook, "weckr_crewai", False) is True


def _agent_role(agent: Any) -> str | None:
    role = getattr(agent, "role", None)
    return None if role is None else str(role)


def _task_label(task: Any) -> str | None:
    """The task's name, else the first line of its description *template*: inputs
    are interpolated into the description, and no user text goes in the ledger."""
    if task is None:
        return None
    name = getattr(task, "name", None)
    if name:
        return str(name)
    template = getattr(task, "_original_description", None) or getattr(task, "description", "")
    line = " ".join(str(template).split())
    if len(line) > _TASK_LABEL_LENGTH:
        line = line[: _TASK_LABEL_LENGTH - 1].rstrip() + "…"
    return line or None


def _report(error: BaseException) -> None:
    logger.warning("Weckr: %r", error)


def _output_limit(llm: Any) -> int | None:
    """The LLM's own output limit (``max_tokens`` / ``max_completion_tokens``)."""
    if llm is None or isinstance(llm, str):
        return None
    return estimate.max_output_tokens(
        {
            "max_tokens": getattr(llm, "max_tokens", None),
            "max_completion_tokens": getattr(llm, "max_completion_tokens", None),
        }
    )


def _model_of(llm: Any) -> tuple[str, str]:
    if llm is None:
        return "unknown", "unknown"
    if isinstance(llm, str):
        return _split_model(llm, None)
    model = str(getattr(llm, "model", None) or "unknown")
    # CrewAI's native providers live in crewai.llms.providers.<name>; their
    # ``provider`` field defaults to "openai" whatever the class.
    module = type(llm).__module__.split(".")
    if module[:3] == ["crewai", "llms", "providers"] and len(module) > 3:
        name, _ = _split_model(model, None)
        return name, module[3]
    provider = getattr(llm, "provider", None)
    return _split_model(model, provider if isinstance(provider, str) else None)


def _split_model(model: str, provider: str | None) -> tuple[str, str]:
    """("openai/gpt-4o", None) -> ("gpt-4o", "openai"), LiteLLM style."""
    prefix, _, rest = model.partition("/")
    if rest and prefix.lower() in _PROVIDER_PREFIXES:
        return rest, prefix.lower()
    return model, (provider or "unknown").lower()
