"""LangChain and LangGraph integration: ``callbacks=[WeckrHandler()]``."""

from __future__ import annotations

from weckr_langchain.callback import weckr_callback
from weckr_langchain.handler import AsyncWeckrHandler, WeckrHandler
from weckr_langchain.totals import UsageTally, UsageTotals
from weckr_langchain.tracker import DOWNGRADE_SKIPPED_TAG

__all__ = [
    "DOWNGRADE_SKIPPED_TAG",
    "AsyncWeckrHandler",
    "UsageTally",
    "UsageTotals",
    "WeckrHandler",
    "weckr_callback",
]
