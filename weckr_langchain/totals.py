from __future__ import annotations

import threading
from dataclasses import dataclass, field
from decimal import Decimal

from weckr_core.records import UsageRecord


@dataclass(slots=True)
class UsageTally:
    """Running counts of LLM calls: tokens in our convention (see ``TokenUsage``)
    and their cost. ``unpriced_calls`` and ``unreported_calls`` say how much of
    ``cost_usd`` is missing: calls of models with no known price, and calls whose
    provider reported no usage."""

    calls: int = 0
    errors: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cached_input_tokens: int = 0
    cache_creation_tokens: int = 0
    reasoning_tokens: int = 0
    cost_usd: Decimal = field(default_factory=Decimal)
    unpriced_calls: int = 0
    unreported_calls: int = 0

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.cache_creation_tokens + self.output_tokens

    def _add(self, record: UsageRecord) -> None:
        self.calls += 1
        self.errors += record.status == "error"
        self.input_tokens += record.input_tokens
        self.output_tokens += record.output_tokens
        self.cached_input_tokens += record.cached_input_tokens
        self.cache_creation_tokens += record.cache_creation_tokens
        self.reasoning_tokens += record.reasoning_tokens
        self.cost_usd += record.cost_usd or 0
        self.unpriced_calls += not record.priced
        self.unreported_calls += not record.usage_reported


@dataclass(slots=True)
class UsageTotals(UsageTally):
    """What ``weckr_callback()`` yields: overall counts plus ``by_model`` (keyed by
    the model that served the call). Totals of a nested block also count in the
    enclosing block's."""

    by_model: dict[str, UsageTally] = field(default_factory=dict)
    parent: UsageTotals | None = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, record: UsageRecord) -> None:
        """Count one priced record (``pricing.ensure_priced(record)`` first)."""
        totals: UsageTotals | None = self
        while totals is not None:
            with totals._lock:
                totals._add(record)
                per_model = totals.by_model.get(record.model)
                if per_model is None:
                    per_model = totals.by_model[record.model] = UsageTally()
                per_model._add(record)
            totals = totals.parent
