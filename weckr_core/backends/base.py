from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Literal, Protocol, runtime_checkable

from weckr_core.errors import WeckrLoopError
from weckr_core.records import Source, UsageRecord, utc_now

logger = logging.getLogger("weckr")

CapAction = Literal["allow", "block", "downgrade"]


@dataclass(frozen=True, slots=True)
class CapDecision:
    """What to do with the next call of a user: go ahead, refuse, or use a cheaper model."""

    action: CapAction = "allow"
    alternative_model: str | None = None
    current_spend: Decimal | None = None
    cap: Decimal | None = None

    @property
    def allowed(self) -> bool:
        return self.action == "allow"

    @property
    def remaining_budget(self) -> Decimal | None:
        if self.cap is None or self.current_spend is None:
            return None
        return max(Decimal(0), self.cap - self.current_spend)


ALLOW = CapDecision()


@runtime_checkable
class Backend(Protocol):
    """Where cap decisions come from and usage records go.

    ``check`` runs on the caller's thread before the provider is called and must be
    fast (cached). ``record`` must not block on the network or the database: it
    hands the record to a queue or a task. ``flush`` waits until everything recorded
    so far is delivered, and returns False when the timeout ran out first.

    A backend whose uncached ``check`` does I/O may also have ``async def
    acheck(user_id, plan, model)``: the async client paths (``achat``, wrapped async
    clients) await it instead, so that check never blocks an event loop.

    A backend that queues records may also have ``record_pending(pending)``, taking
    a ``PendingRecord``: the client then hands it each call it intercepts unbuilt,
    and the backend builds the record (``pending.build()``) when it processes its
    queue. Without it, the client builds the record and calls ``record``.
    """

    def check(self, user_id: str | None, plan: str | None, model: str) -> CapDecision: ...

    def record(self, record: UsageRecord) -> None: ...

    def flush(self, timeout: float = 5.0) -> bool: ...


@dataclass(frozen=True, slots=True)
class RunStop:
    """A loop guard stopped an agent run. The refused call never reached the provider,
    so it has no usage record; this says the run was stopped, and why."""

    run_id: str | None
    reason: str
    source: Source
    llm_calls: int
    tokens: int
    cost_usd: Decimal
    user_id: str | None = None
    plan: str | None = None
    feature: str | None = None
    agent: str | None = None
    timestamp: datetime = field(default_factory=utc_now)

    @classmethod
    def from_error(
        cls,
        error: WeckrLoopError,
        *,
        source: Source,
        feature: str | None = None,
        agent: str | None = None,
    ) -> RunStop:
        return cls(
            run_id=error.run_id,
            reason=error.reason,
            source=source,
            llm_calls=error.llm_calls,
            tokens=error.tokens,
            cost_usd=error.cost,
            user_id=error.user_id,
            plan=error.plan_name,
            feature=feature,
            agent=agent,
        )


def report_run_stop(backend: Backend, stop: RunStop) -> None:
    """Hand ``stop`` to a backend that keeps run stops (``record_run_stop``: the
    Django and memory backends); others have nowhere to put it. Never raises."""
    keep = getattr(backend, "record_run_stop", None)
    if keep is None:
        return
    try:
        keep(stop)
    except Exception:
        logger.exception("Weckr: could not record the stop of run %s", stop.run_id)
