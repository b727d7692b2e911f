"""LangChain and LangGraph integration: ``callbacks=[WeckrHandler()]``, and
``create_agent(..., middleware=[WeckrAgentMiddleware()])`` for LangChain 1.x agents."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from weckr_langchain.callback import weckr_callback
from weckr_langchain.handler import AsyncWeckrHandler, WeckrHandler
from weckr_langchain.totals import UsageTally, UsageTotals
from weckr_langchain.tracker import DOWNGRADE_SKIPPED_TAG

if TYPE_CHECKING:
    from weckr_langchain.middleware import WeckrAgentMiddleware

__all__ = [
    "DOWNGRADE_SKIPPED_TAG",
    "AsyncWeckrHandler",
    "UsageTally",
    "UsageTotals",
    "WeckrAgentMiddleware",
    "WeckrHandler",
    "weckr_callback",
]


def __getattr__(name: str) -> Any:
    # The middleware needs the ``langchain`` package; the handlers only langchain-core.
    if name == "WeckrAgentMiddleware":
        from weckr_langchain.middleware import WeckrAgentMiddleware

        return WeckrAgentMiddleware
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
