"""The seam between the code that makes LLM calls and where caps and usage live.

Every intercepted call goes through it in this order::

    decision = backend.reserve(CapRequest(...))   # may block or downgrade the call
    ... the provider is called ...
    backend.settle(decision.reservation, record)  # the real cost replaces the estimate
    backend.record(record)                        # delivered off the caller's thread

``Backend`` holds do-nothing defaults for every part but ``record``, so a backend
implements what it has and the callers never probe it.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any, Literal

from weckr_core import estimate
from weckr_core.errors import CapKind, WeckrLoopError
from weckr_core.pricing import ensure_priced, price_usage
from weckr_core.records import Source, UsageRecord, utc_now

logger = logging.getLogger("weckr")

CapAction = Literal["allow", "block", "downgrade"]
_ZERO = Decimal(0)


@dataclass(slots=True)
class CapRequest:
    """The call about to be made, as far as a cap needs to know it.

    ``prompt`` is the request's input (messages, system prompt, tools, ...), read
    only when a capped plan needs the estimate, and never kept or sent: only its
    token count is. ``input_tokens`` may be given instead, when the caller counted.
    ``max_output_tokens`` is the request's output limit; None leaves the backend's
    default.
    """

    user_id: str | None
    plan: str | None
    model: str
    provider: str | None = None
    prompt: Any = None
    input_tokens: int | None = None
    max_output_tokens: int | None = None
    account_id: str | None = None

    @property
    def capped(self) -> bool:
        """Whether a cap can apply: the call names a user or an account."""
        return bool(self.user_id or self.account_id)

    def prompt_tokens(self) -> int:
        if self.input_tokens is None:
            self.input_tokens = estimate.prompt_tokens(self.prompt)
            self.prompt = None
        return self.input_tokens

    def output_tokens(self, default: int = estimate.DEFAULT_OUTPUT_TOKENS) -> int:
        return self.max_output_tokens if self.max_output_tokens is not None else default

    def estimated_cost(
        self, model: str | None = None, default_output_tokens: int = estimate.DEFAULT_OUTPUT_TOKENS
    ) -> Decimal:
        """The worst-case cost of the call on ``model`` (default: the requested one),
        priced like its record will be."""
        return price_usage(
            model or self.model,
            input_tokens=self.prompt_tokens(),
            output_tokens=self.output_tokens(default_output_tokens),
            provider=self.provider,
        ).usd


@dataclass(frozen=True, slots=True)
class Reservation:
    """Spend held against caps for one call, from ``reserve`` until ``settle``:
    ``amount_usd`` of the call's estimate on ``model``, for ``user_id`` and (against
    the account's budget too) ``account_id``."""

    id: str
    amount_usd: Decimal
    model: str
    user_id: str | None = None
    account_id: str | None = None

    def cost_of(self, record: UsageRecord) -> Decimal:
        """What the call cost, for the cap: its priced usage; nothing for a call
        that failed; the reserved estimate when the provider reported no usage (the
        spend is unknown, so the cap keeps counting the worst case)."""
        if record.status == "error":
            return _ZERO
        if not record.usage_reported:
            return self.amount_usd
        return ensure_priced(record).cost_usd or _ZERO


@dataclass(frozen=True, slots=True)
class CapDecision:
    """What to do with a call: go ahead, refuse it, or use a cheaper model.

    ``current_spend`` is what counts against the cap this month, before this call:
    recorded spend plus ``in_flight``, what other calls in progress (or not yet
    recorded) hold. The cap is the user's, or, when ``account_id`` is set, that
    account's (all its users together): the budget that refused the call, or for an
    allowed call the one with the least left. ``reservation`` is this call's own
    hold, to be settled. ``plan`` is the plan the cap came from (after
    ``DEFAULT_PLAN`` and case matching); ``reason`` says why a call was not simply
    allowed (``"cap"``, ``"unknown_plan"``, ``"cap_store_unavailable"``).
    """

    action: CapAction = "allow"
    alternative_model: str | None = None
    current_spend: Decimal | None = None
    cap: Decimal | None = None
    reservation: Reservation | None = None
    in_flight: Decimal | None = None
    plan: str | None = None
    reason: CapKind | None = None
    account_id: str | None = None

    @property
    def allowed(self) -> bool:
        return self.action == "allow"

    @property
    def remaining_budget(self) -> Decimal | None:
        if self.cap is None or self.current_spend is None:
            return None
        return max(_ZERO, self.cap - self.current_spend)


ALLOW = CapDecision()


class Backend(ABC):
    """Where cap decisions come from and usage records go.

    ``reserve`` runs on the caller's thread before the provider is called: it
    decides, and for a capped user holds the call's worst-case cost. ``settle``
    replaces the hold with the real cost as soon as the call ends. ``record`` must
    not block on the network or the database: it hands the record to a queue or a
    task. ``flush`` waits until everything recorded so far is delivered, and
    returns False when the timeout ran out first.
    """

    def reserve(self, request: CapRequest) -> CapDecision:
        """Decide the call, holding its estimated cost when a cap applies. The
        default reads ``check``, holding nothing."""
        if request.account_id is None:
            # The call of a backend written before accounts: ``check`` takes three.
            return self.check(request.user_id, request.plan, request.model)
        return self.check(request.user_id, request.plan, request.model, request.account_id)

    async def areserve(self, request: CapRequest) -> CapDecision:
        """``reserve`` for the async paths; a backend whose reserve waits on I/O
        runs it off the event loop."""
        return self.reserve(request)

    def settle(self, reservation: Reservation, record: UsageRecord) -> None:
        """The call of ``reservation`` ended as ``record``: its real cost replaces
        the estimate (``Reservation.cost_of``)."""

    def release(self, reservation: Reservation) -> None:
        """The call of ``reservation`` was never made: drop the hold."""

    def check(
        self, user_id: str | None, plan: str | None, model: str, account_id: str | None = None
    ) -> CapDecision:
        """A decision for the next call of the user (in the account), without
        holding anything."""
        return ALLOW

    @abstractmethod
    def record(self, record: UsageRecord) -> None: ...

    def flush(self, timeout: float = 5.0) -> bool:
        return True

    def close(self) -> None:
        """Release threads and connections; the default has none."""

    def health(self) -> dict[str, Any]:
        """Where delivery stands, for monitoring: ``queued`` (events in memory),
        ``spooled`` (on disk, None without a spool), ``oldest_spooled_seconds``,
        ``retries``, ``dropped`` and ``last_error``. The default knows nothing."""
        return {}

    def record_run_stop(self, stop: RunStop) -> None:
        """A loop guard stopped a run; backends that keep alerts keep it."""


#: The base class under the name the architecture gives it.
BaseBackend = Backend


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
    """Hand ``stop`` to the backend. Never raises."""
    try:
        backend.record_run_stop(stop)
    except Exception:
        logger.exception("Weckr: could not record the stop of run %s", stop.run_id)
