"""``callbacks=[WeckrHandler()]``: cost, caps and loop guards for LangChain and LangGraph.

Both handlers are thin adapters over one ``RunTracker``. They set ``raise_error``
so that the cap and loop errors raised from start events reach the caller (a bug
in the handler itself is logged and swallowed by the tracker, never raised).
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Iterable, Sequence
from decimal import Decimal
from typing import Any
from uuid import UUID

from langchain_core.callbacks import AsyncCallbackHandler, BaseCallbackHandler
from langchain_core.documents import Document
from langchain_core.messages import BaseMessage
from langchain_core.outputs import LLMResult

from weckr_core.backends import Backend
from weckr_core.errors import is_weckr_cap_error
from weckr_core.guards import RunLimits
from weckr_langchain.readers import run_name
from weckr_langchain.totals import UsageTotals
from weckr_langchain.tracker import RunTracker


class _StopsAreNotCrashes(logging.Filter):
    """LangChain logs ``Error in WeckrHandler.on_chat_model_start callback: ...`` at
    WARNING for every exception a handler raises, ``raise_error`` or not. A cap or
    loop stop is raised on purpose and reaches the caller, so that line is dropped for
    Weckr's handlers; any other error of theirs (a config error) is still logged."""

    handlers: set[str] = set()  # class names of the handlers created so far

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if (
            record.msg != "Error in %s.%s callback: %s"
            or not isinstance(args, tuple)
            or not args
            or args[0] not in self.handlers
        ):
            return True
        # LangChain logs from the ``except`` block that caught the handler's error.
        return not is_weckr_cap_error(sys.exc_info()[1])


_stops_are_not_crashes = _StopsAreNotCrashes()


class _WeckrOptions:
    """Constructor shared by the sync and async handlers."""

    raise_error: bool = True

    def __init__(
        self,
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
        totals: UsageTotals | None = None,
    ) -> None:
        """Attribution given here wins over run metadata and the attribution context.

        ``backend`` defaults to ``weckr_core.get_backend()``, read at call time. The
        ``max_*`` limits apply per root run (one ``agent.invoke``). ``totals``, when
        given, accumulates every recorded call (priced on the spot).
        """
        super().__init__()
        self.tracker = RunTracker(
            user_id=user_id,
            plan=plan,
            feature=feature,
            tags=tuple(tags),
            backend=backend,
            limits=RunLimits.of(
                max_llm_calls=max_llm_calls,
                max_tokens=max_tokens,
                max_cost_usd=max_cost_usd,
                max_repeated_tool_calls=max_repeated_tool_calls,
            ),
            downgrade_as_block=downgrade_as_block,
            totals=totals,
            account_id=account_id,
        )
        _StopsAreNotCrashes.handlers.add(type(self).__name__)
        logging.getLogger("langchain_core.callbacks.manager").addFilter(_stops_are_not_crashes)

    @property
    def totals(self) -> UsageTotals | None:
        return self.tracker.totals


class WeckrHandler(_WeckrOptions, BaseCallbackHandler):
    """Caps, loop guards and one ``UsageRecord`` per LLM call of every run it is passed to.

    Before each model call: the root run's loop guards, then the user's cap, which
    reserves the call's worst-case cost (its messages and output limit, priced); the
    call's record settles the reservation with the real cost as soon as it ends.
    ``WeckrCapError`` / ``WeckrLoopError`` propagate out of ``invoke`` before the
    provider is called. A "downgrade" decision cannot swap a LangChain model once its
    run started: the call runs on the requested model, a ``WeckrDowngradeWarning`` is
    issued once per user and model and the record is tagged ``cap:downgrade-skipped``
    (``downgrade_as_block=True`` refuses instead; ``WeckrAgentMiddleware`` can swap).
    Inside ``WeckrAgentMiddleware``'s model calls the middleware reserves and records;
    the handler keeps its loop guards, tool tags and totals.

    Each record carries ``run_id`` (the root run), ``parent_run_id``, ``step``
    (LangGraph's ``"<langgraph_step>:<langgraph_node>"``), ``agent`` (the
    ``create_agent(name=...)``, else the LangGraph node, else the calling chain's
    name) and the tools the root run called so far as ``tool:<name>`` tags. Its
    ``event_id`` is the LLM run's id.

    Works in sync and async runs (LangChain calls a sync handler on a worker thread
    in async runs, so a database-backed backend never runs on the event loop).
    """

    def on_chat_model_start(
        self,
        serialized: dict[str, Any],
        messages: list[list[BaseMessage]],
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        tags: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        self.tracker.llm_started(
            run_id, parent_run_id, serialized, metadata, kwargs.get("invocation_params"), messages
        )

    def on_llm_start(
        self,
        serialized: dict[str, Any],
        prompts: list[str],
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        tags: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        self.tracker.llm_started(
            run_id, parent_run_id, serialized, metadata, kwargs.get("invocation_params"), prompts
        )

    def on_llm_end(
        self,
        response: LLMResult,
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        **kwargs: Any,
    ) -> None:
        self.tracker.llm_ended(run_id, parent_run_id, response)

    def on_llm_error(
        self,
        error: BaseException,
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        **kwargs: Any,
    ) -> None:
        self.tracker.llm_ended(run_id, parent_run_id, kwargs.get("response"), error)

    def on_chain_start(
        self,
        serialized: dict[str, Any],
        inputs: dict[str, Any],
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        **kwargs: Any,
    ) -> None:
        self.tracker.run_started(run_id, parent_run_id, run_name(serialized, kwargs))

    def on_chain_end(self, outputs: dict[str, Any], *, run_id: UUID, **kwargs: Any) -> None:
        self.tracker.run_ended(run_id)

    def on_chain_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        self.tracker.run_ended(run_id)

    def on_tool_start(
        self,
        serialized: dict[str, Any],
        input_str: str,
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        inputs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        self.tracker.tool_started(
            run_id,
            parent_run_id,
            run_name(serialized, kwargs),
            input_str if inputs is None else inputs,
        )

    def on_tool_end(self, output: Any, *, run_id: UUID, **kwargs: Any) -> None:
        self.tracker.run_ended(run_id)

    def on_tool_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        self.tracker.run_ended(run_id)

    def on_retriever_start(
        self,
        serialized: dict[str, Any],
        query: str,
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        **kwargs: Any,
    ) -> None:
        self.tracker.run_started(run_id, parent_run_id, run_name(serialized, kwargs))

    def on_retriever_end(
        self, documents: Sequence[Document], *, run_id: UUID, **kwargs: Any
    ) -> None:
        self.tracker.run_ended(run_id)

    def on_retriever_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        self.tracker.run_ended(run_id)


class AsyncWeckrHandler(_WeckrOptions, AsyncCallbackHandler):
    """Async handler for ``ainvoke`` / ``astream`` / ``abatch``.

    The cap is reserved through the backend's ``areserve``; the rest of the LLM
    events runs on a worker thread (``asyncio.to_thread``, which carries the
    attribution context): settling and recording may touch a database, which Django
    forbids on the event loop. Use ``WeckrHandler`` for sync runs:
    LangChain swallows errors of async handlers called from sync code, so caps and
    loop guards could not stop a sync run.
    """

    async def on_chat_model_start(
        self,
        serialized: dict[str, Any],
        messages: list[list[BaseMessage]],
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        tags: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        await self.tracker.allm_started(
            run_id, parent_run_id, serialized, metadata, kwargs.get("invocation_params"), messages
        )

    async def on_llm_start(
        self,
        serialized: dict[str, Any],
        prompts: list[str],
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        tags: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        await self.tracker.allm_started(
            run_id, parent_run_id, serialized, metadata, kwargs.get("invocation_params"), prompts
        )

    async def on_llm_end(
        self,
        response: LLMResult,
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        **kwargs: Any,
    ) -> None:
        await asyncio.to_thread(self.tracker.llm_ended, run_id, parent_run_id, response)

    async def on_llm_error(
        self,
        error: BaseException,
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        **kwargs: Any,
    ) -> None:
        await asyncio.to_thread(
            self.tracker.llm_ended, run_id, parent_run_id, kwargs.get("response"), error
        )

    # Run-tree bookkeeping is in-memory only, so it stays on the event loop.

    async def on_chain_start(
        self,
        serialized: dict[str, Any],
        inputs: dict[str, Any],
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        **kwargs: Any,
    ) -> None:
        self.tracker.run_started(run_id, parent_run_id, run_name(serialized, kwargs))

    async def on_chain_end(self, outputs: dict[str, Any], *, run_id: UUID, **kwargs: Any) -> None:
        await self.tracker.arun_ended(run_id)

    async def on_chain_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        await self.tracker.arun_ended(run_id)

    async def on_tool_start(
        self,
        serialized: dict[str, Any],
        input_str: str,
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        inputs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        self.tracker.tool_started(
            run_id,
            parent_run_id,
            run_name(serialized, kwargs),
            input_str if inputs is None else inputs,
        )

    async def on_tool_end(self, output: Any, *, run_id: UUID, **kwargs: Any) -> None:
        await self.tracker.arun_ended(run_id)

    async def on_tool_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        await self.tracker.arun_ended(run_id)

    async def on_retriever_start(
        self,
        serialized: dict[str, Any],
        query: str,
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        **kwargs: Any,
    ) -> None:
        self.tracker.run_started(run_id, parent_run_id, run_name(serialized, kwargs))

    async def on_retriever_end(
        self, documents: Sequence[Document], *, run_id: UUID, **kwargs: Any
    ) -> None:
        await self.tracker.arun_ended(run_id)

    async def on_retriever_error(
        self, error: BaseException, *, run_id: UUID, **kwargs: Any
    ) -> None:
        await self.tracker.arun_ended(run_id)
