"""Loop guards for one agent run: a kill switch for runaway agents.

Shared by the LangChain and CrewAI integrations. Every limit is "at most N": with
``max_llm_calls=5`` five model calls run and the sixth is refused before the
provider is called; with ``max_repeated_tool_calls=3`` the same tool with the same
arguments runs three times in a row and the fourth is refused.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from weckr_core.errors import WeckrLoopError


@dataclass(frozen=True, slots=True)
class RunLimits:
    max_llm_calls: int | None = None
    max_tokens: int | None = None
    max_cost_usd: Decimal | None = None
    max_repeated_tool_calls: int | None = None

    @classmethod
    def of(
        cls,
        max_llm_calls: int | None = None,
        max_tokens: int | None = None,
        max_cost_usd: Decimal | float | str | None = None,
        max_repeated_tool_calls: int | None = None,
    ) -> RunLimits:
        for name, value in (
            ("max_llm_calls", max_llm_calls),
            ("max_tokens", max_tokens),
            ("max_repeated_tool_calls", max_repeated_tool_calls),
        ):
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be a positive whole number, not {value!r}")
        cost = None if max_cost_usd is None else Decimal(str(max_cost_usd))
        if cost is not None and cost <= 0:
            raise ValueError(f"max_cost_usd must be positive, not {max_cost_usd!r}")
        return cls(max_llm_calls, max_tokens, cost, max_repeated_tool_calls)

    @property
    def any(self) -> bool:
        return any(
            value is not None
            for value in (
                self.max_llm_calls,
                self.max_tokens,
                self.max_cost_usd,
                self.max_repeated_tool_calls,
            )
        )


def tool_fingerprint(name: str, arguments: Any) -> str:
    """Tool name plus its arguments in a canonical form (key order ignored)."""
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except ValueError:
            return f"{name}:{arguments.strip()}"
    try:
        canonical = json.dumps(arguments, sort_keys=True, default=str, separators=(",", ":"))
    except (TypeError, ValueError):
        canonical = repr(arguments)
    return f"{name}:{canonical}"


class RunGuard:
    """Counters of one root run, checked before each LLM call and tool call."""

    def __init__(
        self,
        limits: RunLimits,
        *,
        run_id: str | None = None,
        user_id: str | None = None,
        plan: str | None = None,
    ) -> None:
        self.limits = limits
        self.run_id = run_id
        self.user_id = user_id
        self.plan = plan
        self.llm_calls = 0
        self.tokens = 0
        self.cost = Decimal(0)
        self.tool_calls: list[str] = []
        self.stopped: str | None = None
        self._last_tool: str | None = None
        self._repeats = 0
        self._lock = threading.Lock()

    def _stop(self, reason: str) -> WeckrLoopError:
        self.stopped = reason
        return WeckrLoopError(
            reason,
            llm_calls=self.llm_calls,
            tokens=self.tokens,
            cost=self.cost,
            user_id=self.user_id,
            plan_name=self.plan,
            run_id=self.run_id,
        )

    def before_llm_call(self) -> None:
        """Raise ``WeckrLoopError`` if one more LLM call would break a limit."""
        limits = self.limits
        with self._lock:
            if limits.max_llm_calls is not None and self.llm_calls >= limits.max_llm_calls:
                raise self._stop(f"max_llm_calls={limits.max_llm_calls} reached")
            if limits.max_tokens is not None and self.tokens >= limits.max_tokens:
                raise self._stop(f"max_tokens={limits.max_tokens} reached")
            if limits.max_cost_usd is not None and self.cost >= limits.max_cost_usd:
                raise self._stop(f"max_cost_usd={limits.max_cost_usd} reached")
            # Counted at the start, so calls running in parallel cannot all slip in.
            self.llm_calls += 1

    def after_llm_call(self, tokens: int, cost: Decimal | None) -> None:
        with self._lock:
            self.tokens += tokens
            if cost:
                self.cost += cost

    def on_tool_call(self, name: str, arguments: Any) -> None:
        """Raise ``WeckrLoopError`` when the same tool call repeats too often in a row."""
        fingerprint = tool_fingerprint(name, arguments)
        with self._lock:
            self.tool_calls.append(name)
            if fingerprint == self._last_tool:
                self._repeats += 1
            else:
                self._last_tool, self._repeats = fingerprint, 1
            limit = self.limits.max_repeated_tool_calls
            if limit is not None and self._repeats > limit:
                raise self._stop(
                    f"max_repeated_tool_calls={limit} reached: {name} called "
                    f"{self._repeats} times in a row with the same arguments"
                )
