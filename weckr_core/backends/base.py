from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Literal, Protocol, runtime_checkable

from weckr_core.records import UsageRecord

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
    """

    def check(self, user_id: str | None, plan: str | None, model: str) -> CapDecision: ...

    def record(self, record: UsageRecord) -> None: ...

    def flush(self, timeout: float = 5.0) -> bool: ...
