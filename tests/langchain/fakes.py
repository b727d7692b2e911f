"""A scripted chat model that reports usage the way provider integrations do."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any

from langchain.agents import create_agent
from langchain_core.callbacks import (
    AsyncCallbackManagerForLLMRun,
    BaseCallbackHandler,
    CallbackManagerForLLMRun,
)
from langchain_core.language_models import BaseChatModel, LanguageModelInput
from langchain_core.language_models.base import LangSmithParams
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, HumanMessage
from langchain_core.messages.ai import UsageMetadata
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable, RunnableConfig
from langchain_core.tools import BaseTool, StructuredTool
from pydantic import Field


def usage(
    input_tokens: int = 100,
    output_tokens: int = 20,
    *,
    cache_read: int = 0,
    cache_creation: int = 0,
    reasoning: int = 0,
) -> UsageMetadata:
    """LangChain ``UsageMetadata``: its ``input_tokens`` counts cache reads and writes."""
    meta = UsageMetadata(
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        total_tokens=input_tokens + output_tokens,
    )
    if cache_read or cache_creation:
        meta["input_token_details"] = {"cache_read": cache_read, "cache_creation": cache_creation}
    if reasoning:
        meta["output_token_details"] = {"reasoning": reasoning}
    return meta


class ScriptedChatModel(BaseChatModel):
    """Answers from a script and counts how often the "provider" was reached.

    With ``tool`` set, the first ``tool_turns`` replies of a conversation (all when None) call
    that tool, with the same arguments each time unless ``vary_args``.
    """

    model: str = "gpt-4o"
    served_model: str | None = None
    max_tokens: int | None = None
    provider: str = "openai"
    usage_metadata: UsageMetadata | None = Field(default_factory=usage)
    # Older integrations report OpenAI-shaped usage in ``llm_output["token_usage"]``.
    legacy_token_usage: dict[str, Any] | None = None
    tool: str | None = None
    tool_turns: int | None = None
    vary_args: bool = False
    fail_with: type[Exception] | None = None
    calls: int = 0
    # The model name of every call, shared with copies (``model_copy`` is shallow): a
    # copy made for a cheaper model reports here under its own name.
    called_as: list[str] = Field(default_factory=list)
    # Runs inside each call, before the reply: lets a test look at what is held then.
    during_call: Callable[[], None] | None = None

    @property
    def _llm_type(self) -> str:
        return "scripted-chat"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        # What provider integrations put in the invocation params.
        params: dict[str, Any] = {"model": self.model}
        if self.max_tokens is not None:
            params["max_tokens"] = self.max_tokens
        return params

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        params = super()._get_ls_params(stop=stop, **kwargs)
        params["ls_provider"] = self.provider
        if self.max_tokens is not None:
            params["ls_max_tokens"] = self.max_tokens
        return params

    def bind_tools(
        self, tools: Sequence[dict[str, Any] | type | Callable[..., Any] | BaseTool], **kwargs: Any
    ) -> Runnable[LanguageModelInput, AIMessage]:
        return self.bind(tools=[getattr(tool, "name", str(tool)) for tool in tools], **kwargs)

    def _reply(self, messages: list[BaseMessage]) -> AIMessage:
        # The turn within this conversation: how many times the model already answered.
        turn = sum(isinstance(message, AIMessage) for message in messages)
        self.calls += 1
        self.called_as.append(self.model)
        if self.during_call is not None:
            self.during_call()
        if self.fail_with is not None:
            raise self.fail_with("provider failed")
        tool_calls = []
        if self.tool and (self.tool_turns is None or turn < self.tool_turns):
            args = {"query": f"q{turn}" if self.vary_args else "same"}
            tool_calls = [{"name": self.tool, "args": args, "id": f"call_{turn}"}]
        return AIMessage(
            content="" if tool_calls else "done",
            tool_calls=tool_calls,
            usage_metadata=self.usage_metadata,
            response_metadata={
                "model_name": self.served_model or self.model,
                "model_provider": self.provider,
            },
        )

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        reply = self._reply(messages)
        if self.legacy_token_usage is None:
            return ChatResult(generations=[ChatGeneration(message=reply)])
        reply.usage_metadata = None
        reply.response_metadata = {}
        return ChatResult(
            generations=[ChatGeneration(message=reply)],
            llm_output={"token_usage": self.legacy_token_usage, "model_name": self.model},
        )

    def _chunks(self, messages: list[BaseMessage]) -> Iterator[ChatGenerationChunk]:
        reply = self._reply(messages)
        for piece in ("do", "ne"):
            yield ChatGenerationChunk(message=AIMessageChunk(content=piece))
        # Usage and model arrive with the last chunk, as OpenAI's stream_options sends them.
        yield ChatGenerationChunk(
            message=AIMessageChunk(
                content="",
                usage_metadata=reply.usage_metadata,
                response_metadata=reply.response_metadata,
                chunk_position="last",
            )
        )

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        yield from self._chunks(messages)

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        for chunk in self._chunks(messages):
            yield chunk


def counting_tool(name: str = "search") -> tuple[BaseTool, list[dict[str, Any]]]:
    """A tool that records its inputs, so a test can count how often it really ran."""
    runs: list[dict[str, Any]] = []

    def look_up(query: str) -> str:
        runs.append({"query": query})
        return "nothing found"

    return StructuredTool.from_function(look_up, name=name, description="Look it up."), runs


def run_agent(
    model: ScriptedChatModel,
    handler: BaseCallbackHandler,
    *,
    tools: Sequence[BaseTool] = (),
    name: str | None = None,
    **config: Any,
) -> dict[str, Any]:
    """A ``create_agent`` (LangGraph) agent run with ``handler`` in its config."""
    agent = create_agent(model, tools=list(tools) or [counting_tool()[0]], name=name)
    run_config: RunnableConfig = {"callbacks": [handler], **config}  # type: ignore[typeddict-item]
    result: dict[str, Any] = agent.invoke({"messages": [HumanMessage("find it")]}, run_config)
    return result
