from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from decimal import Decimal

from langchain_core.tracers.context import register_configure_hook

from weckr_core.backends import Backend
from weckr_langchain.handler import WeckrHandler
from weckr_langchain.totals import UsageTotals

# One context variable, registered with LangChain once: every run configured while
# it holds a handler gets that handler, inherited by all of its child runs.
_current_handler: ContextVar[WeckrHandler | None] = ContextVar(
    "weckr_langchain_handler", default=None
)
_registered = False
_register_lock = threading.Lock()


def _register_hook() -> None:
    global _registered
    if _registered:
        return
    with _register_lock:
        if not _registered:
            register_configure_hook(_current_handler, inheritable=True)
            _registered = True


@contextmanager
def weckr_callback(
    *,
    feature: str | None = None,
    user_id: str | int | None = None,
    plan: str | None = None,
    tags: Iterable[str] = (),
    backend: Backend | None = None,
    account_id: str | int | None = None,
    max_llm_calls: int | None = None,
    max_tokens: int | None = None,
    max_cost_usd: Decimal | float | str | None = None,
    max_repeated_tool_calls: int | None = None,
    downgrade_as_block: bool = False,
) -> Iterator[UsageTotals]:
    """Track every LangChain run started inside the block, with no handler passed.

    Yields running totals (calls, tokens by kind, cost, ``by_model``). Options are
    ``WeckrHandler``'s. Blocks nest: an inner block's handler replaces the outer
    one for runs started inside it, and its totals also count in the outer block's.
    """
    _register_hook()
    outer = _current_handler.get()
    totals = UsageTotals(parent=outer.totals if outer is not None else None)
    handler = WeckrHandler(
        feature=feature,
        user_id=user_id,
        plan=plan,
        tags=tags,
        backend=backend,
        account_id=account_id,
        max_llm_calls=max_llm_calls,
        max_tokens=max_tokens,
        max_cost_usd=max_cost_usd,
        max_repeated_tool_calls=max_repeated_tool_calls,
        downgrade_as_block=downgrade_as_block,
        totals=totals,
    )
    token = _current_handler.set(handler)
    try:
        yield totals
    finally:
        _current_handler.reset(token)
