"""``WeckrCrew``: cost per agent and per task, caps and loop guards for CrewAI crews.

How a kickoff is tracked is ``weckr_crewai.wiring``; what happens around each call,
``weckr_crewai.hooks``; the state of one kickoff, ``weckr_crewai.kickoff``.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from decimal import Decimal
from typing import TYPE_CHECKING

from weckr_core.backends import Backend, get_backend
from weckr_core.context import EMPTY, Attribution, current_attribution
from weckr_core.guards import RunGuard, RunLimits
from weckr_crewai.kickoff import Kickoff
from weckr_crewai.wiring import Attachment, install

if TYPE_CHECKING:
    from crewai import Crew

# How long the next call of a kickoff with a token or cost limit waits for the
# previous call's usage, which arrives on CrewAI's event thread pool, and how long
# the end of a kickoff waits for its calls' usage. Read when a kickoff starts.
RECORD_WAIT_SECONDS = 5.0


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
        account_id: object = None,
    ) -> None:
        if isinstance(tags, str):
            raise TypeError("tags must be an iterable of strings, not a string")
        self.feature = feature
        self.user_id = None if user_id is None else str(user_id)
        self.account_id = None if account_id is None else str(account_id)
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
        install()
        attached = current_attribution()
        marker = Attachment(lambda crew: self._start_kickoff(crew, attached), self.feature)
        crew.before_kickoff_callbacks = [
            *(cb for cb in crew.before_kickoff_callbacks if not isinstance(cb, Attachment)),
            marker,
        ]
        return crew

    @staticmethod
    def detach(crew: Crew) -> None:
        crew.before_kickoff_callbacks = [
            cb for cb in crew.before_kickoff_callbacks if not isinstance(cb, Attachment)
        ]

    @property
    def last_run(self) -> RunGuard | None:
        """Counters of the most recently started kickoff (``run_id``, ``llm_calls``,
        ``tokens``, ``cost``, ``stopped``)."""
        with self._lock:
            return None if self._last_run is None else self._last_run.guard

    def _start_kickoff(self, crew: Crew, attached_attribution: Attribution) -> Kickoff:
        """A new ``Kickoff`` of ``crew``, attributed to this object's arguments, then
        the current context, else the one ``attach`` saw."""
        context = current_attribution()
        if context == EMPTY:
            context = attached_attribution
        attribution = Attribution(
            user_id=self.user_id if self.user_id is not None else context.user_id,
            plan=self.plan if self.plan is not None else context.plan,
            feature=self.feature if self.feature is not None else context.feature,
            tags=tuple(dict.fromkeys((*context.tags, *self.tags))),
            agent=context.agent,
            account_id=self.account_id if self.account_id is not None else context.account_id,
        )
        kickoff = Kickoff(
            crew=crew,
            attribution=attribution,
            backend=self.backend if self.backend is not None else get_backend(),
            limits=self.limits,
            record_wait_seconds=RECORD_WAIT_SECONDS,
        )
        with self._lock:
            self._last_run = kickoff
        return kickoff
