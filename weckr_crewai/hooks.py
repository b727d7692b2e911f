"""What a kickoff does around each of its LLM and tool calls.

- Before a model call (an execution-scoped ``PRE_MODEL_CALL`` hook): reserve the
  call's estimated cost against the user's cap, count it against the loop guards,
  and release the reservation when either refuses the call, which stops the kickoff.
- Before a tool call (``PRE_TOOL_CALL``): the repeated-tool-call guard.
- After a model call: usage comes from ``LLMCallCompletedEvent.usage``, one event
  per provider call with that call's own counts, handled on CrewAI's event thread
  pool with a copy of the emitting context, which is how it finds the kickoff and
  the call. It settles the reservation and records the call. ``crew.usage_metrics``
  is not used: it sums each agent's LLM lifetime counters.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime
from typing import Any

from crewai.events.types.llm_events import LLMCallCompletedEvent, LLMCallFailedEvent
from crewai.hooks.dispatch import InterceptionPoint, get_scoped_hooks

from weckr_core import caps
from weckr_core.backends import CapRequest, Reservation, RunStop, report_run_stop
from weckr_core.errors import WeckrConfigError, WeckrLoopError
from weckr_core.pricing import ensure_priced
from weckr_core.records import UsageRecord
from weckr_crewai.errors import CrewCapError, CrewConfigError, CrewLoopError
from weckr_crewai.kickoff import Kickoff, LLMCall, current_call
from weckr_crewai.readers import agent_role, model_of, output_limit, task_label
from weckr_crewai.usage import usage_from_crewai

logger = logging.getLogger("weckr_crewai")


def scoped_hooks_for(kickoff: Kickoff) -> dict[InterceptionPoint, list[Any]]:
    """CrewAI's execution-scoped hooks with ``kickoff``'s model-call and tool-call
    hooks added: other execution-scoped hooks are kept, an enclosing kickoff's dropped."""
    hooks: dict[InterceptionPoint, list[Any]] = {}
    for point in InterceptionPoint:
        kept = [hook for hook in get_scoped_hooks(point) if not _is_ours(hook)]
        if kept:
            hooks[point] = kept
    hooks.setdefault(InterceptionPoint.PRE_MODEL_CALL, []).append(_ours(kickoff, before_llm_call))
    hooks.setdefault(InterceptionPoint.PRE_TOOL_CALL, []).append(_ours(kickoff, before_tool_call))
    return hooks


# Before a call, on whichever thread makes it.


def before_llm_call(kickoff: Kickoff, context: Any) -> None:
    """Reserve, then guard; raise the kickoff's stop instead when it is refused."""
    if kickoff.ended:
        return
    kickoff.wait_for_usage(current_call.get())
    # Until this call passes, nothing in this context is an open call of ours.
    current_call.set(None)
    if kickoff.stopped is not None:
        raise kickoff.stopped
    llm = getattr(context, "llm", None)
    model, provider = model_of(llm)
    attribution = kickoff.attribution
    reservation = None
    if attribution.user_id or attribution.account_id:
        request = CapRequest(
            attribution.user_id,
            attribution.plan,
            model,
            provider,
            prompt=getattr(context, "messages", None),
            max_output_tokens=output_limit(llm),
            account_id=attribution.account_id,
        )
        reservation = _reserve(kickoff, request)
    try:
        kickoff.guard.before_llm_call()
    except WeckrLoopError as error:
        caps.release(kickoff.backend, reservation, _report)
        kickoff.stopped = _loop_stop(kickoff, error, getattr(context, "agent", None))
        raise kickoff.stopped from error
    call = kickoff.add_call(
        agent=agent_role(getattr(context, "agent", None)),
        task=task_label(getattr(context, "task", None)),
        model=model,
        provider=provider,
        reservation=reservation,
    )
    current_call.set(call)


def _reserve(kickoff: Kickoff, request: CapRequest) -> Reservation | None:
    """Hold the call's estimated cost against the user's cap; a refusal releases
    the hold and stops the kickoff."""
    try:
        decision = caps.reserve(kickoff.backend, request, _report)
    except WeckrConfigError as error:
        raise CrewConfigError.from_error(error) from error
    if decision.action != "allow":
        # A CrewAI LLM object is shared by agents and threads, so a downgrade
        # cannot be applied to one call: a capped user is stopped either way.
        caps.release(kickoff.backend, decision.reservation, _report)
        refusal = caps.refusal(decision, request.user_id, request.plan)
        kickoff.stopped = CrewCapError.from_error(refusal)
        raise kickoff.stopped
    return decision.reservation


def before_tool_call(kickoff: Kickoff, context: Any) -> None:
    """The repeated-tool-call guard; its stop stops the kickoff."""
    if kickoff.ended:
        return
    try:
        kickoff.guard.on_tool_call(str(context.tool_name), context.tool_input)
    except WeckrLoopError as error:
        # CrewAI turns a tool hook's abort into a "blocked" observation for the
        # model, so the stop is raised again before the next model call.
        kickoff.stopped = _loop_stop(kickoff, error, getattr(context, "agent", None))
        raise kickoff.stopped from error


def _loop_stop(kickoff: Kickoff, error: WeckrLoopError, agent: Any) -> CrewLoopError:
    """The error that stops the kickoff; the stop is also handed to the backend."""
    stop = RunStop.from_error(
        error, source="crewai", feature=kickoff.attribution.feature, agent=agent_role(agent)
    )
    report_run_stop(kickoff.backend, stop)
    return CrewLoopError.from_error(error)


# After a call, on CrewAI's event thread pool.


def llm_call_completed(kickoff: Kickoff, event: LLMCallCompletedEvent) -> None:
    """Settle and record the call with its usage."""
    call = kickoff.claim_for(event, current_call.get())
    record = _record_for(kickoff, call, event)
    try:
        record.apply_usage(usage_from_crewai(event.usage))
    except TypeError:
        logger.exception("Weckr: unreadable usage on run %s step %s", kickoff.run_id, call.step)
        record.usage_reported = False
    _deliver(kickoff, call, record)


def llm_call_failed(kickoff: Kickoff, event: LLMCallFailedEvent) -> None:
    """Record a failed call as an error; release a call a hook denied."""
    if event.error.startswith("LLM call denied"):
        # A hook stopped it before the provider was called: nothing was spent.
        denied = kickoff.claim(current_call.get())
        if denied is None:
            return
        # Another hook denied it after ours reserved: the call was never made.
        caps.release(kickoff.backend, denied.reservation, _report)
        denied.done.set()
        return
    call = kickoff.claim_for(event, current_call.get())
    record = _record_for(kickoff, call, event)
    record.status = "error"
    record.error_type = "LLMCallFailedEvent"
    record.usage_reported = False
    _deliver(kickoff, call, record)


def record_missing_usage(kickoff: Kickoff, calls: list[LLMCall]) -> None:
    """One row per call whose usage never arrived, so no call goes unrecorded."""
    for call in calls:
        record = _record_for(kickoff, call, None)
        record.usage_reported = False
        try:
            _deliver(kickoff, call, record)
        except Exception:
            logger.exception("Weckr: could not record call %s of run %s", call.step, kickoff.run_id)


def _record_for(kickoff: Kickoff, call: LLMCall, event: Any | None) -> UsageRecord:
    attribution = kickoff.attribution
    latency = None
    finished = getattr(event, "timestamp", None)
    if isinstance(finished, datetime) and finished.tzinfo is not None:
        # The event is stamped when the provider answered, not when we see it.
        latency = max(0, int((finished - call.started_at).total_seconds() * 1000))
    return UsageRecord(
        timestamp=call.started_at,
        user_id=attribution.user_id,
        account_id=attribution.account_id,
        feature=attribution.feature,
        plan=attribution.plan,
        provider=call.provider,
        model=call.model,
        latency_ms=latency,
        source="crewai",
        run_id=kickoff.run_id,
        agent=call.agent,
        task=call.task,
        step=str(call.step),
        tags=attribution.tags,
    )


def _deliver(kickoff: Kickoff, call: LLMCall, record: UsageRecord) -> None:
    """Price the record, count it against the guard, settle the call's reservation
    and record it; the call is done whatever happens."""
    try:
        ensure_priced(record)
        if not record.priced and kickoff.guard.limits.max_cost_usd is not None:
            logger.warning(
                "Weckr: no price known for %s: max_cost_usd cannot count its calls "
                "(add a price override).",
                record.model,
            )
        kickoff.guard.after_llm_call(record.total_tokens, record.cost_usd)
        caps.finish(kickoff.backend, call.reservation, record, _report)
    finally:
        call.done.set()


def _report(error: BaseException) -> None:
    logger.warning("Weckr: %r", error)


def _ours(kickoff: Kickoff, hook: Callable[[Kickoff, Any], None]) -> Callable[[Any], None]:
    """``hook`` bound to ``kickoff``, marked as Weckr's."""

    def weckr_hook(context: Any) -> None:
        hook(kickoff, context)

    weckr_hook.weckr_crewai = True  # type: ignore[attr-defined]
    return weckr_hook


def _is_ours(hook: Any) -> bool:
    return getattr(hook, "weckr_crewai", False) is True
