from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal
from typing import Literal

from weckr_core.backends.base import ALLOW, CapDecision, RunStop
from weckr_core.pricing import cheaper_alternative
from weckr_core.records import UsageRecord


@dataclass(frozen=True, slots=True)
class MemoryCap:
    limit_usd: Decimal
    action: Literal["block", "downgrade"] = "block"


class MemoryBackend:
    """Keeps records in memory and decides caps from them: for tests and scripts.

    ``records`` holds every record (priced on arrival), ``run_stops`` every run a
    loop guard stopped. Caps are set per plan with
    ``set_cap``; spend per user is the sum of their recorded costs plus anything set
    with ``set_spend``. ``max_records`` bounds memory for long-running processes.
    """

    def __init__(self, max_records: int | None = None) -> None:
        self._lock = threading.Lock()
        self._records: deque[UsageRecord] = deque(maxlen=max_records)
        self._spend: dict[str, Decimal] = {}
        self._caps: dict[str, MemoryCap] = {}
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
            return self._spend.get(user_id, Decimal(0))

    def check(self, user_id: str | None, plan: str | None, model: str) -> CapDecision:
        with self._lock:
            self.check_calls += 1
            cap = self._caps.get(plan) if plan else None
            if user_id is None or cap is None:
                return ALLOW
            spend = self._spend.get(user_id, Decimal(0))
        if spend < cap.limit_usd:
            return CapDecision("allow", None, spend, cap.limit_usd)
        alternative = cheaper_alternative(model) if cap.action == "downgrade" else None
        if alternative:
            return CapDecision("downgrade", alternative, spend, cap.limit_usd)
        return CapDecision("block", None, spend, cap.limit_usd)

    def record(self, record: UsageRecord) -> None:
        record.ensure_priced()
        with self._lock:
            self._records.append(record)
            if record.user_id is not None and record.cost_usd:
                self._spend[record.user_id] = (
                    self._spend.get(record.user_id, Decimal(0)) + record.cost_usd
                )

    def record_many(self, records: Iterable[UsageRecord]) -> None:
        for record in records:
            self.record(record)

    def record_run_stop(self, stop: RunStop) -> None:
        with self._lock:
            self.run_stops.append(stop)

    def flush(self, timeout: float = 5.0) -> bool:
        return True

    def clear(self) -> None:
        with self._lock:
            self._records.clear()
            self._spend.clear()
