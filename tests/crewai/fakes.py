"""A scripted CrewAI LLM that behaves like CrewAI's native providers, minus the network.

It emits the same started/completed events, keeps the same lifetime counter and runs
the same LLM-layer hooks as ``crewai.llms.providers.openai.completion``, and reports
usage in the dict shape that provider builds from an OpenAI response.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from crewai import BaseLLM
from crewai.events.types.llm_events import LLMCallType
from crewai.hooks import HookAborted
from crewai.llms.base_llm import LLMCallBlockedError, llm_call_context
from pydantic import PrivateAttr

FINAL_ANSWER = "Thought: I now know the final answer\nFinal Answer: {answer}"
TOOL_CALL = "Thought: I should look this up\nAction: {tool}\nAction Input: {arguments}"


@dataclass(frozen=True)
class Reply:
    text: str
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0
    reasoning_tokens: int = 0

    def usage(self) -> dict[str, Any]:
        # The dict CrewAI's OpenAI provider emits (_extract_openai_token_usage).
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
            "cached_prompt_tokens": self.cached_tokens,
            "reasoning_tokens": self.reasoning_tokens,
        }


@dataclass(frozen=True)
class ProviderCall:
    """What the fake 'provider' saw and billed for one call."""

    agent: str | None
    task_id: str | None
    reply: Reply


Script = Callable[[str | None, int], Reply]
"""(agent role, 0-based index of that agent's call) -> the reply to send."""


class ScriptedLLM(BaseLLM):
    llm_type: str = "scripted"
    _script: Script = PrivateAttr()
    _calls: list[ProviderCall] = PrivateAttr(default_factory=list)
    _lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)

    _emits_events: bool = PrivateAttr(default=True)
    _reports_usage: bool = PrivateAttr(default=True)

    def __init__(
        self,
        script: Script,
        model: str = "gpt-4o-mini",
        *,
        emits_events: bool = True,
        reports_usage: bool = True,
        **data: Any,
    ) -> None:
        super().__init__(model=model, provider="openai", **data)
        self._script = script
        self._emits_events = emits_events
        self._reports_usage = reports_usage

    @property
    def calls(self) -> list[ProviderCall]:
        with self._lock:
            return list(self._calls)

    def call(
        self,
        messages: Any,
        tools: Any = None,
        callbacks: Any = None,
        available_functions: Any = None,
        from_task: Any = None,
        from_agent: Any = None,
        response_model: Any = None,
    ) -> Any:
        if not self._emits_events:
            # A minimal custom LLM: no events, no hooks, no counters.
            return self._provider_call(from_agent, from_task).text
        with llm_call_context():
            self._emit_call_started_event(
                messages=messages,
                tools=tools,
                callbacks=callbacks,
                available_functions=available_functions,
                from_task=from_task,
                from_agent=from_agent,
            )
            try:
                formatted = self._format_messages(messages)
                self._invoke_before_llm_call_hooks(formatted, from_agent)
                reply = self._provider_call(from_agent, from_task)
                usage = reply.usage() if self._reports_usage else None
                if usage is not None:
                    self._track_token_usage_internal(usage)
                self._emit_call_completed_event(
                    response=reply.text,
                    call_type=LLMCallType.LLM_CALL,
                    from_task=from_task,
                    from_agent=from_agent,
                    messages=formatted,
                    usage=usage,
                )
                return self._invoke_after_llm_call_hooks(formatted, reply.text, from_agent)
            except (HookAborted, LLMCallBlockedError) as denied:
                self._emit_call_denied_event(denied, from_task, from_agent)
                raise
            except Exception as error:
                self._emit_call_failed_event(
                    error=f"Scripted provider failed: {error}",
                    from_task=from_task,
                    from_agent=from_agent,
                )
                raise

    async def acall(
        self,
        messages: Any,
        tools: Any = None,
        callbacks: Any = None,
        available_functions: Any = None,
        from_task: Any = None,
        from_agent: Any = None,
        response_model: Any = None,
    ) -> Any:
        return self.call(
            messages, tools, callbacks, available_functions, from_task, from_agent, response_model
        )

    def _provider_call(self, agent: Any, task: Any) -> Reply:
        role = getattr(agent, "role", None)
        with self._lock:
            index = sum(1 for call in self._calls if call.agent == role)
        reply = self._script(role, index)
        with self._lock:
            task_id = str(task.id) if task is not None else None
            self._calls.append(ProviderCall(role, task_id, reply))
        return reply

    def supports_function_calling(self) -> bool:
        return False

    def supports_stop_words(self) -> bool:
        return True

    def get_context_window_size(self) -> int:
        return 128_000
