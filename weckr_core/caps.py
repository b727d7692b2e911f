"""Reserve before a call, settle after it: the steps every integration shares.

The client, the LangChain handler and agent middleware and the CrewAI hooks all
go through these, so a cap behaves the same whichever way a call is made.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from decimal import Decimal

from weckr_core.backends.base import ALLOW, Backend, CapDecision, CapRequest, Reservation
from weckr_core.errors import WeckrCapError, WeckrConfigError
from weckr_core.records import UsageRecord

ErrorReport = Callable[[BaseException], None]


def refuses(cap: Decimal | None, spent: Decimal, amount: Decimal | None = None) -> bool:
    """Whether a budget refuses a call: with no ``amount`` (a check), when it is spent;
    with the call's estimate (a reservation), when that does not fit. No cap: never."""
    if cap is None:
        return False
    return spent >= cap if amount is None else spent + amount > cap


def budget_to_report(
    caps: Sequence[Decimal | None], spent: Sequence[Decimal], amount: Decimal | None = None
) -> tuple[int, bool]:
    """Which of a call's budgets (its user's, then its account's) a decision reports,
    and whether the call is refused: the last budget that refuses it (the account's
    when both do: it stops every user of the account), else the capped budget with
    the least left. At least one budget has a cap."""
    refusing = [at for at, cap in enumerate(caps) if refuses(cap, spent[at], amount)]
    if refusing:
        return refusing[-1], True
    capped = [at for at, cap in enumerate(caps) if cap is not None]
    return min(capped, key=lambda at: (caps[at] or Decimal(0)) - spent[at]), False


def reserve(backend: Backend, request: CapRequest, report: ErrorReport) -> CapDecision:
    """``backend.reserve(request)``; a broken backend allows the call, loudly (the
    caller's LLM call must not fail because of us), a cap or config error goes on."""
    try:
        return backend.reserve(request)
    except (WeckrCapError, WeckrConfigError):
        raise
    except Exception as error:
        report(error)
        return ALLOW


async def areserve(backend: Backend, request: CapRequest, report: ErrorReport) -> CapDecision:
    try:
        return await backend.areserve(request)
    except (WeckrCapError, WeckrConfigError):
        raise
    except Exception as error:
        report(error)
        return ALLOW


def refusal(decision: CapDecision, user_id: str | None, plan: str | None) -> WeckrCapError:
    """The error that refuses a call the decision blocks."""
    return WeckrCapError(
        user_id=user_id,
        plan_name=decision.plan or plan,
        current_spend=decision.current_spend,
        cap=decision.cap,
        kind=decision.reason or "cap",
        account_id=decision.account_id,
    )


def finish(
    backend: Backend,
    reservation: Reservation | None,
    record: UsageRecord,
    report: ErrorReport,
) -> None:
    """Settle the call's reservation with its real cost, then hand the record on.
    A failed settle is reported (the reservation expires, the record still goes);
    a refused record raises, for the caller to report with the event id."""
    if reservation is not None:
        record.reservation_id = reservation.id
        try:
            backend.settle(reservation, record)
        except Exception as error:
            report(error)
    backend.record(record)


def release(backend: Backend, reservation: Reservation | None, report: ErrorReport) -> None:
    """Drop the hold of a call that was never made."""
    if reservation is None:
        return
    try:
        backend.release(reservation)
    except Exception as error:
        report(error)


class KnownRefusals:
    """Users and accounts the cap refused lately, per plan. While decisions cannot be
    read (the database, the cap store or the server away), a user or account already
    known to be over its cap stays refused instead of failing open with everyone
    else."""

    def __init__(self, remember_seconds: float = 600.0, max_users: int = 10_000) -> None:
        self._remember = remember_seconds
        self._max_users = max_users
        self._refusals: dict[tuple[str, str | None, str | None], tuple[CapDecision, float]] = {}
        self._lock = threading.Lock()

    def note(
        self,
        user_id: str | None,
        account_id: str | None,
        plan: str | None,
        decision: CapDecision,
    ) -> None:
        """Remember a refusal by a cap (the user's, or the account's); forget both
        once a call of theirs is allowed."""
        with self._lock:
            if decision.action == "block" and decision.reason in (None, "cap"):
                if len(self._refusals) >= self._max_users:
                    self._refusals.clear()
                key = (
                    ("user", user_id, plan)
                    if decision.account_id is None
                    else ("account", decision.account_id, plan)
                )
                self._refusals[key] = (decision, time.monotonic() + self._remember)
            elif decision.allowed and decision.reason is None:
                self._refusals.pop(("user", user_id, plan), None)
                self._refusals.pop(("account", account_id, plan), None)

    def recall(
        self, user_id: str | None, account_id: str | None, plan: str | None
    ) -> CapDecision | None:
        now = time.monotonic()
        with self._lock:
            for key in (("user", user_id, plan), ("account", account_id, plan)):
                known = self._refusals.get(key)
                if known is not None and known[1] > now and key[1] is not None:
                    return known[0]
        return None
