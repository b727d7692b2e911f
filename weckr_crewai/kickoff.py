"""The state of one kickoff: its guard and attribution, and the LLM calls it made.

Hooks and event handlers find the kickoff and the call in ``current_kickoff`` and
``current_call``: CrewAI runs them with (a copy of) the context of the call.
"""

from __future__ import annotations

import contextvars
import logging
import threading
import time
import uuid
from collections.abc import Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeGuard

from crewai.hooks.dispatch import HookAborted, InterceptionPoint, scoped_hooks

from weckr_core.backends import Backend, Reservation
from weckr_core.context import Attribution
from weckr_core.guards import RunGuard, RunLimits
from weckr_core.records import utc_now
from weckr_crewai.readers import split_model, task_label

if TYPE_CHECKING:
    from crewai import Crew

logger = logging.getLogger("weckr_crewai")

current_kickoff: contextvars.ContextVar[Kickoff | None] = contextvars.ContextVar(
    "weckr_crewai_kickoff", default=None
)
current_call: contextvars.ContextVar[LLMCall | None] = contextvars.ContextVar(
    "weckr_crewai_call", default=None
)


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
    """The state of one kickoff: guard, attribution, the calls made so far.

    ``record_wait_seconds`` bounds how long the next call of a kickoff with a token
    or cost limit waits for the previous call's usage, and how long the kickoff's
    end waits for the usage of its calls.
    """

    def __init__(
        self,
        *,
        crew: Crew,
        attribution: Attribution,
        backend: Backend,
        limits: RunLimits,
        record_wait_seconds: float,
    ) -> None:
        self.crew = crew
        self.run_id = str(uuid.uuid4())
        self.attribution = attribution
        self.backend = backend
        self.guard = RunGuard(
            limits, run_id=self.run_id, user_id=attribution.user_id, plan=attribution.plan
        )
        self.record_wait_seconds = record_wait_seconds
        self.stopped: HookAborted | None = None
        self.ended = False
        self._waits_for_usage = limits.max_tokens is not None or limits.max_cost_usd is not None
        self._lock = threading.Lock()
        self._calls: list[LLMCall] = []
        self._task_labels = {str(task.id): task_label(task) for task in crew.tasks}
        self._scope: AbstractContextManager[Any] | None = None
        self._tokens: list[contextvars.Token[Any]] = []

    # Lifecycle, on the kickoff's own thread.

    def enter(self, hooks: Mapping[InterceptionPoint, list[Any]]) -> None:
        """Make ``hooks`` CrewAI's execution-scoped hooks and this the current kickoff."""
        self._scope = scoped_hooks(dict(hooks))
        self._scope.__enter__()
        self._tokens = [current_kickoff.set(self), current_call.set(None)]

    def end(self) -> list[LLMCall]:
        """Stop taking calls; wait up to ``record_wait_seconds`` for the usage of the
        calls made, and claim those whose usage never arrived."""
        self.ended = True
        deadline = time.monotonic() + self.record_wait_seconds
        with self._lock:
            calls = list(self._calls)
        for call in calls:
            call.done.wait(max(0.0, deadline - time.monotonic()))
        with self._lock:
            missing = [call for call in calls if not call.recorded]
            for call in missing:
                call.recorded = True
        return missing

    def exit(self) -> None:
        """Undo ``enter``."""
        try:
            current_call.reset(self._tokens[1])
            current_kickoff.reset(self._tokens[0])
            if self._scope is not None:
                self._scope.__exit__(None, None, None)
        except ValueError:
            # Ended in another context than it started (not seen in CrewAI 1.15):
            # at least stop this context from treating later calls as ours.
            current_kickoff.set(None)
            current_call.set(None)
            logger.warning("Weckr: run %s ended in a different context", self.run_id)

    # Calls, on whichever thread makes or reports them.

    def wait_for_usage(self, previous: LLMCall | None) -> None:
        """With a token or cost limit, wait for the previous call's usage before the
        next call, so the guard counts it; give up waiting for good after a timeout."""
        if not self._waits_for_usage or previous is None or previous.done.is_set():
            return
        if not previous.done.wait(self.record_wait_seconds):
            self._waits_for_usage = False
            logger.warning(
                "Weckr: no usage for LLM call %s of run %s after %ss; does the LLM emit "
                "LLMCallCompletedEvent? max_tokens and max_cost_usd cannot see it.",
                previous.step,
                self.run_id,
                self.record_wait_seconds,
            )

    def add_call(
        self,
        *,
        agent: str | None,
        task: str | None,
        model: str,
        provider: str,
        reservation: Reservation | None,
    ) -> LLMCall:
        """A call that passed the before-call hook, numbered in order."""
        with self._lock:
            call = LLMCall(
                step=len(self._calls) + 1,
                agent=agent,
                task=task,
                model=model,
                provider=provider,
                reservation=reservation,
            )
            self._calls.append(call)
        return call

    def claim(self, call: LLMCall | None) -> LLMCall | None:
        """``call``, marked recorded; None when it is not an open call of this kickoff."""
        with self._lock:
            if not self._is_open(call):
                return None
            call.recorded = True
            return call

    def claim_for(self, event: Any, call: LLMCall | None) -> LLMCall:
        """The call a completed or failed ``event`` ends, marked recorded: ``call``
        (the context's), else the agent's latest open call, else a new one."""
        with self._lock:
            if not self._is_open(call):
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
            model, provider = split_model(str(event.model or "unknown"), None)
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

    def _is_open(self, call: LLMCall | None) -> TypeGuard[LLMCall]:
        # Called with the lock held.
        return call is not None and not call.recorded and call in self._calls
