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
    CapAction,
    CapDecision,
    CapRequest,
    Reservation,
    RunStop,
)
from weckr_core.caps import budget_to_report
from weckr_core.pricing import cheaper_alternative, ensure_priced
from weckr_core.records import UsageRecord

_ZERO = Decimal(0)


@dataclass(frozen=True, slots=True)
class MemoryCap:
    """A plan's caps: per user (``limit_usd``) and per account, all its users
    together (``account_limit_usd``); None caps nothing."""

    limit_usd: Decimal | None
    action: Literal["block", "downgrade"] = "block"
    account_limit_usd: Decimal | None = None


#: A budget: ("user", user id) or ("account", account id).
_Budget = tuple[str, str]


@dataclass(slots=True)
class _Hold:
    budgets: tuple[_Budget, ...]
    amount_usd: Decimal
    expires_at: float  # time.monotonic()


class MemoryBackend(Backend):
    """Keeps records in memory and decides caps from them: for tests and scripts.

    ``records`` holds every record (priced on arrival), ``run_stops`` every run a
    loop guard stopped. Caps are set per plan with ``set_cap`` (a plan without one
    is not capped), per user and per account; spend per user and per account is the
    sum of their recorded costs plus anything set with ``set_spend``. Reservations
    work as in the Django backend: a call's estimate is held against its user and
    its account until it is settled, and a hold whose caller never settles expires
    after ``reservation_ttl_seconds``. ``max_records`` bounds memory for
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
        self._spend: dict[_Budget, Decimal] = {}
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
        *,
        account_limit_usd: Decimal | float | str | None = None,
    ) -> None:
        with self._lock:
            if limit_usd is None and account_limit_usd is None:
                self._caps.pop(plan, None)
            else:
                self._caps[plan] = MemoryCap(_usd(limit_usd), action, _usd(account_limit_usd))

    def set_spend(
        self,
        user_id: str | None,
        spend_usd: Decimal | float | str,
        *,
        account_id: str | None = None,
    ) -> None:
        """Set the recorded spend of ``user_id``, or of ``account_id`` when given."""
        with self._lock:
            self._spend[_budget_named(user_id, account_id)] = Decimal(str(spend_usd))

    def spend(self, user_id: str | None, *, account_id: str | None = None) -> Decimal:
        """The recorded spend of ``user_id``, or of ``account_id`` when given."""
        with self._lock:
            return self._spend.get(_budget_named(user_id, account_id), _ZERO)

    def in_flight(self, user_id: str | None, *, account_id: str | None = None) -> Decimal:
        """What calls in progress (or settled, not yet recorded) hold against
        ``user_id``, or ``account_id`` when given."""
        with self._lock:
            return self._held(_budget_named(user_id, account_id), time.monotonic())

    # -- caps --------------------------------------------------------------------

    def check(
        self, user_id: str | None, plan: str | None, model: str, account_id: str | None = None
    ) -> CapDecision:
        with self._lock:
            self.check_calls += 1
        return self._decide(CapRequest(user_id, plan, model, account_id=account_id), None)

    def reserve(self, request: CapRequest) -> CapDecision:
        cap = self._caps.get(request.plan) if request.plan else None
        if not _budgets(cap, request.user_id, request.account_id):
            return ALLOW
        with self._lock:
            self.check_calls += 1
        return self._decide(request, request.estimated_cost(None, self.default_output_tokens))

    def _decide(self, request: CapRequest, amount: Decimal | None) -> CapDecision:
        """The decision on ``request``; with an ``amount``, a reservation that holds it
        (and, past a cap on a downgrade plan, the cheaper model's estimate)."""
        plan = request.plan
        cap = self._caps.get(plan) if plan else None
        budgets = _budgets(cap, request.user_id, request.account_id)
        if cap is None or not budgets:
            return ALLOW
        now = time.monotonic()
        with self._lock:
            spends = [(self._spend.get(b, _ZERO), self._held(b, now)) for b, _ in budgets]
            # A check asks whether a budget is spent; a reservation whether the call's
            # estimate still fits.
            at, refused = budget_to_report(
                [limit for _, limit in budgets],
                [recorded + held for recorded, held in spends],
                amount,
            )
            if not refused:
                reservation = None
                if amount is not None:
                    reservation = self._hold(request, budgets, amount, request.model, now)
                return _decision("allow", None, budgets[at], spends[at], reservation, plan)
            alternative = cheaper_alternative(request.model) if cap.action == "downgrade" else None
            if not alternative or alternative == request.model:
                return _decision("block", None, budgets[at], spends[at], None, plan)
            reservation = None
            if amount is not None:
                # The cheaper model, held at its own estimate.
                cheaper = request.estimated_cost(alternative, self.default_output_tokens)
                reservation = self._hold(request, budgets, cheaper, alternative, now)
        return _decision("downgrade", alternative, budgets[at], spends[at], reservation, plan)

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

    def _hold(
        self,
        request: CapRequest,
        budgets: list[tuple[_Budget, Decimal]],
        amount: Decimal,
        model: str,
        now: float,
    ) -> Reservation:
        # Called with the lock held.
        reservation = Reservation(
            uuid.uuid4().hex, amount, model, request.user_id, request.account_id
        )
        held = tuple(budget for budget, _ in budgets)
        self._holds[reservation.id] = _Hold(held, amount, now + self.reservation_ttl_seconds)
        return reservation

    def _held(self, budget: _Budget, now: float) -> Decimal:
        # Called with the lock held; forgets expired holds on the way.
        total = _ZERO
        for key, hold in list(self._holds.items()):
            if hold.expires_at <= now:
                del self._holds[key]
            elif budget in hold.budgets:
                total += hold.amount_usd
        return total

    # -- records -----------------------------------------------------------------

    def record(self, record: UsageRecord) -> None:
        ensure_priced(record)
        with self._lock:
            self._records.append(record)
            if record.reservation_id is not None:
                self._holds.pop(record.reservation_id, None)
            if record.cost_usd:
                for budget in _budgets_of(record.user_id, record.account_id):
                    self._spend[budget] = self._spend.get(budget, _ZERO) + record.cost_usd

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


def _usd(value: Decimal | float | str | None) -> Decimal | None:
    return None if value is None else Decimal(str(value))


def _budget_named(user_id: str | None, account_id: str | None) -> _Budget:
    return ("user", user_id or "") if account_id is None else ("account", account_id)


def _budgets_of(user_id: str | None, account_id: str | None) -> list[_Budget]:
    """The budgets a call counts against: its user's, then its account's."""
    budgets: list[_Budget] = [("user", user_id)] if user_id else []
    return [*budgets, ("account", account_id)] if account_id else budgets


def _budgets(
    cap: MemoryCap | None, user_id: str | None, account_id: str | None
) -> list[tuple[_Budget, Decimal]]:
    """The capped budgets of a call, each with its cap."""
    if cap is None:
        return []
    limits = {"user": cap.limit_usd, "account": cap.account_limit_usd}
    return [
        (budget, limit)
        for budget in _budgets_of(user_id, account_id)
        if (limit := limits[budget[0]]) is not None
    ]


def _decision(
    action: CapAction,
    alternative: str | None,
    budget: tuple[_Budget, Decimal],
    spend: tuple[Decimal, Decimal],
    reservation: Reservation | None,
    plan: str | None,
) -> CapDecision:
    """A decision reporting ``budget``'s spend (recorded, held) and cap."""
    (scope, name), limit = budget
    recorded, held = spend
    return CapDecision(
        action,
        alternative,
        recorded + held,
        limit,
        reservation,
        held,
        plan,
        None if action == "allow" else "cap",
        name if scope == "account" else None,
    )
