"""How an attached crew's kickoffs get tracked (CrewAI 1.15).

- ``WeckrCrew.attach`` puts an ``Attachment`` on ``crew.before_kickoff_callbacks``
  (so copies made by ``kickoff_for_each`` stay attached) and calls ``install``,
  which registers, once per process, an ``execution_start`` / ``execution_end``
  interception hook pair and two LLM event handlers that do nothing for crews
  without the marker.
- At ``execution_start`` of an attached crew a ``Kickoff`` is created (new run id,
  new ``RunGuard``, attribution resolved) and its model-call and tool-call hooks are
  registered in CrewAI's *execution-scoped* hook registry, a context variable, so
  they see only this kickoff's calls, including those on threads CrewAI starts with
  a copy of the context. ``execution_end`` (success or failure) removes them.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from crewai.events.base_events import BaseEvent
from crewai.events.event_bus import crewai_event_bus
from crewai.events.types.llm_events import LLMCallCompletedEvent, LLMCallFailedEvent
from crewai.hooks.dispatch import InterceptionPoint, get_hooks, register

from weckr_crewai import hooks
from weckr_crewai.kickoff import Kickoff, current_kickoff

logger = logging.getLogger("weckr_crewai")


class Attachment:
    """The marker ``attach`` leaves on a crew; a no-op ``before_kickoff`` callback.
    ``start`` begins tracking one kickoff of the crew (``WeckrCrew``'s)."""

    def __init__(self, start: Callable[[Any], Kickoff], feature: str | None) -> None:
        self.start = start
        self.feature = feature

    def __call__(self, inputs: dict[str, Any]) -> dict[str, Any]:
        kickoff = current_kickoff.get()
        if kickoff is None or kickoff.ended:
            # CrewAI calls this right after execution_start: our hook did not run.
            logger.warning(
                "Weckr: this kickoff is not tracked: the execution hooks were removed "
                "(crewai.hooks.clear_all_hooks?). Later kickoffs are tracked again."
            )
            install()
        return inputs

    def __repr__(self) -> str:
        return f"<weckr_crewai attachment feature={self.feature!r}>"


_install_lock = threading.Lock()


def install() -> None:
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


def _on_execution_start(context: Any) -> None:
    crew = getattr(context, "crew", None)
    if crew is None:
        return
    attachment = next(
        (cb for cb in crew.before_kickoff_callbacks if isinstance(cb, Attachment)), None
    )
    if attachment is None:
        return
    try:
        kickoff = attachment.start(crew)
        kickoff.enter(hooks.scoped_hooks_for(kickoff))
    except Exception:
        # CrewAI would swallow it too; say why the kickoff goes untracked.
        logger.exception("Weckr: could not start tracking a kickoff")


def _on_execution_end(context: Any) -> None:
    kickoff = current_kickoff.get()
    if kickoff is not None and kickoff.crew is getattr(context, "crew", None):
        try:
            _finish(kickoff)
        except Exception:
            logger.exception("Weckr: could not finish tracking run %s", kickoff.run_id)


def _finish(kickoff: Kickoff) -> None:
    """Record the calls whose usage never arrived, then undo ``Kickoff.enter``."""
    try:
        hooks.record_missing_usage(kickoff, kickoff.end())
    finally:
        kickoff.exit()


def _on_llm_completed(source: Any, event: BaseEvent) -> None:
    kickoff = current_kickoff.get()
    if kickoff is None or not isinstance(event, LLMCallCompletedEvent):
        return
    try:
        hooks.llm_call_completed(kickoff, event)
    except Exception:
        logger.exception("Weckr: could not record a CrewAI LLM call")


def _on_llm_failed(source: Any, event: BaseEvent) -> None:
    kickoff = current_kickoff.get()
    if kickoff is None or not isinstance(event, LLMCallFailedEvent):
        return
    try:
        hooks.llm_call_failed(kickoff, event)
    except Exception:
        logger.exception("Weckr: could not record a failed CrewAI LLM call")
