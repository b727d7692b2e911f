from __future__ import annotations

import threading
import time
import uuid
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal
from typing import Literal

from weckr_core import estimate
from weckr_core.backends.base import (
    ALLOW,
    Backend,
    CapDecision,
    CapRequest,
    Reservation,
    RunStop,
)
from weckr_core.pricing import cheaper_alternative, ensure_priced
from weckr_core.records import UsageRecord

_ZERO = Decimal(0)


@dataclass(frozen=True, slots=True)
class MemoryCap:
    limit_usd: Decimal
    action: Literal["block", "downgrade"] = "block"


@dataclass(slots=True)
class _Hold:
    user_id: str
    amount_usd: Decimal
    expires_at: float  # time.monotonic()


class MemoryBackend(Backend):
    """Keeps records in memory and decides caps from them: for tests and scripts.

    ``records`` holds every record (priced on arrival), ``run_stops`` every run a
    loop guard stopped. Caps are set per plan with ``set_cap`` (a plan without one
    is not capped); spend per user is the sum of their recorded costs plus anything
    set with ``set_spend``. Reservations work as in the Django backend: a call's
    estimate is held until it is settled, and a hold whose caller never settles
    expires after ``reservation_ttl_seconds``. ``max_records`` bounds memory for
    long-running processes.
    """

    def __init__(
        self,
        max_records: int | None = None,
        *,
        default_output_tokens: int = estimate.DEFAULT_OUTPUT_TOKENS,
        reservation_ttl_seconds: float = 900.0,
    ) -> None:
        self._lock = threading.Lock()
        self._records: deque[UsageRecord] = deque(maxlen=max_records)
        self._spend: dict[str, Decimal] = {}
        self._caps: dict[str, MemoryCap] = {}
        self._holds: dict[str, _Hold] = {}
        self.default_output_tokens = default_output_tokens
        self.reservation_ttl_seconds = reservation_ttl_seconds
        self.check_calls = 0
        self.run_stops: list[RunStop] = []

    @property
    def records(self) -> list[UsageRecord]:
        with self._lock:
            return list(self._records)

    def set_cap(
        self,
        plan: str,
        limit_usd: Decimal | float | str | None,
        action: Literal["block", "downgrade"] = "block",
    ) -> None:
        with self._lock:
            if limit_usd is None:
                self._caps.pop(plan, None)
            else:
                self._caps[plan] = MemoryCap(Decimal(str(limit_usd)), action)

    def set_spend(self, user_id: str, spend_usd: Decimal | float | str) -> None:
        with self._lock:
            self._spend[user_id] = Decimal(str(spend_usd))

    def spend(self, user_id: str) -> Decimal:
        with self._lock:
            return self._spend.get(user_id, _ZERO)

    def in_flight(self, user_id: str) -> Decimal:
        """What calls of ``user_id`` in progress (or settled, not yet recorded) hold."""
        with self._lock:
            return self._held(user_id, time.monotonic())

    # -- caps --------------------------------------------------------------------

    def check(self, user_id: str | None, plan: str | None, model: str) -> CapDecision:
        with self._lock:
            self.check_calls += 1
            cap = self._caps.get(plan) if plan else None
            if user_id is None or cap is None:
                return ALLOW
            spend = self._spend.get(user_id, _ZERO)
            held = self._held(user_id, time.monotonic())
        if spend + held < cap.limit_usd:
            return CapDecision("allow", None, spend + held, cap.limit_usd, None, held, plan)
        return self._over_cap(cap, model, spend + held, held, plan)

    def reserve(self, request: CapRequest) -> CapDecision:
        user_id, plan = request.user_id, request.plan
        cap = self._caps.get(plan) if plan else None
        if user_id is None or cap is None:
            return ALLOW
        amount = request.estimated_cost(None, self.default_output_tokens)
        alternative = cheaper_alternative(request.model) if cap.action == "downgrade" else None
        now = time.monotonic()
        with self._lock:
            self.check_calls += 1
            spend = self._spend.get(user_id, _ZERO)
            held = self._held(user_id, now)
            total = spend + held
            if total + amount <= cap.limit_usd:
                reservation = self._hold(user_id, amount, request.model, now)
                return CapDecision(
                    "allow", None, total, cap.limit_usd, reservation, held, plan, None
                )
            if alternative is None or alternative == request.model:
                return CapDecision("block", None, total, cap.limit_usd, None, held, plan, "cap")
            # Past the cap on a downgrade plan: the cheaper model, held at its own estimate.
            cheaper = request.estimated_cost(alternative, self.default_output_tokens)
            reservation = self._hold(user_id, cheaper, alternative, now)
        return CapDecision(
            "downgrade", alternative, total, cap.limit_usd, reservation, held, plan, "cap"
        )

    def _over_cap(
        self, cap: MemoryCap, model: str, spend: Decimal, held: Decimal, plan: str | None
    ) -> CapDecision:
        alternative = cheaper_alternative(model) if cap.action == "downgrade" else None
        if alternative and alternative != model:
            return CapDecision(
                "downgrade", alternative, spend, cap.limit_usd, None, held, plan, "cap"
            )
        return CapDecision("block", None, spend, cap.limit_usd, None, held, plan, "cap")

    def settle(self, reservation: Reservation, record: UsageRecord) -> None:
        cost = reservation.cost_of(record)
        with self._lock:
            hold = self._holds.get(reservation.id)
            if hold is not None:
                hold.amount_usd = cost
                hold.expires_at = float("inf")  # until its record arrives

    def release(self, reservation: Reservation) -> None:
        with self._lock:
            self._holds.pop(reservation.id, None)

    def _hold(self, user_id: str, amount: Decimal, model: str, now: float) -> Reservation:
        # Called with the lock held.
        reservation = Reservation(uuid.uuid4().hex, amount, model, user_id)
        self._holds[reservation.id] = _Hold(user_id, amount, now + self.reservation_ttl_seconds)
        return reservation

    def _held(self, user_id: str, now: float) -> Decimal:
        # Called with the lock held; forgets expired holds on the way.
        total = _ZERO
        for key, hold in list(self._holds.items()):
            if hold.expires_at <= now:
                del self._holds[key]
            elif hold.user_id == user_id:
                total += hold.amount_usd
        return total

    # -- records -----------------------------------------------------------------

    def record(self, record: UsageRecord) -> None:
        ensure_priced(record)
        with self._lock:
            self._records.append(record)
            if record.reservation_id is not None:
                self._holds.pop(record.reservation_id, None)
            if record.user_id is not None and record.cost_usd:
                self._spend[record.user_id] = (
                    self._spend.get(record.user_id, _ZERO) + record.cost_usd
                )

    def record_many(self, records: Iterable[UsageRecord]) -> None:
        for record in records:
            self.record(record)

    def record_run_stop(self, stop: RunStop) -> None:
        with self._lock:
            self.run_stops.append(stop)

    def clear(self) -> None:
        with self._lock:
            self._records.clear()
            self._spend.clear()
            self._holds.clear()
