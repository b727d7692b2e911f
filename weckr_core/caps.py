"""Reserve before a call, settle after it: the steps every integration shares.

The client, the LangChain handler and agent middleware and the CrewAI hooks all
go through these, so a cap behaves the same whichever way a call is made.
"""

from __future__ import annotations

from collections.abc import Callable

from weckr_core.backends.base import ALLOW, Backend, CapDecision, CapRequest, Reservation
from weckr_core.errors import WeckrCapError, WeckrConfigError
from weckr_core.records import UsageRecord

ErrorReport = Callable[[BaseException], None]


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
