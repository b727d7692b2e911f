"""What model a LangChain run asked for and what it used, read from callback payloads."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from langchain_core.messages import AIMessage
from langchain_core.outputs import LLMResult

from weckr_core.records import TokenUsage, UsageRecord
from weckr_core.usage import NOT_REPORTED, usage_from_langchain, usage_from_litellm

# Where chat model classes keep the model name, in invocation params and in
# their serialized constructor kwargs.
_MODEL_KEYS = ("model", "model_name", "model_id", "deployment_name", "azure_deployment")


def _first_str(mapping: Mapping[str, Any] | None, keys: tuple[str, ...]) -> str | None:
    if not mapping:
        return None
    for key in keys:
        value = mapping.get(key)
        if isinstance(value, str) and value:
            return value
    return None


def requested_model(
    serialized: Mapping[str, Any] | None,
    metadata: Mapping[str, Any] | None,
    invocation_params: Mapping[str, Any] | None,
) -> tuple[str, str]:
    """``(model, provider)`` of a starting LLM run.

    LangChain's own ``ls_model_name`` / ``ls_provider`` metadata first (it honours
    per-call ``model=`` overrides), then the invocation params, then the serialized
    constructor kwargs. Unknown parts are ``"unknown"``.
    """
    asked = metadata.get("ls_model_name") if metadata else None
    model = (
        asked
        if isinstance(asked, str) and asked
        else _first_str(invocation_params, _MODEL_KEYS)
        or _first_str(_kwargs_of(serialized), _MODEL_KEYS)
        or "unknown"
    )
    provider = metadata.get("ls_provider") if metadata else None
    if not isinstance(provider, str) or not provider:
        # ``_type`` is "openai-chat", "anthropic-chat"...
        kind = _first_str(invocation_params, ("_type",))
        provider = kind.split("-", 1)[0] if kind else "unknown"
    return model, provider


def metadata_str(metadata: Mapping[str, Any] | None, key: str) -> str | None:
    """A run metadata value (``user_id``, ``plan``, ``feature``) as text."""
    value = metadata.get(key) if metadata else None
    return None if value is None else str(value)


def _kwargs_of(serialized: Mapping[str, Any] | None) -> Mapping[str, Any] | None:
    kwargs = serialized.get("kwargs") if serialized else None
    return kwargs if isinstance(kwargs, Mapping) else None


def run_name(serialized: Mapping[str, Any] | None, kwargs: Mapping[str, Any]) -> str | None:
    """The name LangChain gives a run: ``run_name`` / ``name``, else the class name."""
    name = kwargs.get("name")
    if isinstance(name, str) and name:
        return name
    if not serialized:
        return None
    name = serialized.get("name")
    if isinstance(name, str) and name:
        return name
    ids = serialized.get("id")
    if isinstance(ids, list) and ids and isinstance(ids[-1], str):
        return ids[-1]
    return None


def record_result(record: UsageRecord, response: LLMResult | None) -> None:
    """Set a finished LLM run's usage on its record, and the served model and
    provider where the response names them.

    Usage is ``AIMessage.usage_metadata`` of the first generation that carries it
    (with ``n > 1`` every generation repeats the call's total, so they are not
    summed), else the legacy ``llm_output["token_usage"]``. The served model comes
    from the message's ``response_metadata`` (``model_name`` / ``model``), else
    ``llm_output``.
    """
    if response is None:
        record.apply_usage(NOT_REPORTED)
        return
    usage, model, provider = _read_messages(
        getattr(generation, "message", None)
        for generations in response.generations
        for generation in generations
    )
    if usage is None:
        llm_output = response.llm_output or {}
        model = model or _first_str(llm_output, ("model_name", "model"))
        token_usage = llm_output.get("token_usage") or llm_output.get("usage")
        if isinstance(token_usage, Mapping) and token_usage:
            usage = usage_from_litellm(dict(token_usage))
    record.apply_usage(usage or NOT_REPORTED)
    _apply_served(record, model, provider)


def record_messages(record: UsageRecord, messages: Iterable[object]) -> None:
    """``record_result`` for the messages an agent's model call returned (its
    ``AIMessage``, plus a ``ToolMessage`` for some structured output)."""
    usage, model, provider = _read_messages(messages)
    record.apply_usage(usage or NOT_REPORTED)
    _apply_served(record, model, provider)


def _read_messages(messages: Iterable[object]) -> tuple[TokenUsage | None, Any, Any]:
    """Usage of the first ``AIMessage`` that carries it, and the model and provider
    its ``response_metadata`` (or an earlier message's) names."""
    model: Any = None
    provider: Any = None
    for message in messages:
        # ``type() is`` first: pydantic classes make isinstance an ABC check.
        if type(message) is not AIMessage and not isinstance(message, AIMessage):
            continue
        meta = message.response_metadata
        if meta:
            model = model or meta.get("model_name") or meta.get("model")
            provider = provider or meta.get("model_provider")
        usage = message.usage_metadata
        if usage:
            return usage_from_langchain(usage), model, provider
    return None, model, provider


def _apply_served(record: UsageRecord, model: object, provider: object) -> None:
    if isinstance(model, str) and model:
        record.model = model
    if isinstance(provider, str) and provider:
        record.provider = provider


def step_of(metadata: Mapping[str, Any] | None) -> str | None:
    """LangGraph's superstep and node as ``"<step>:<node>"``, e.g. ``"3:model"``."""
    if not metadata:
        return None
    step = metadata.get("langgraph_step")
    node = metadata.get("langgraph_node")
    if step is not None and node:
        return f"{step}:{node}"
    if node:
        return str(node)
    return None if step is None else str(step)


def agent_of(metadata: Mapping[str, Any] | None, parent_name: str | None) -> str | None:
    """``create_agent(name=...)``'s agent name, else the LangGraph node, else the
    name of the chain that made the call."""
    return _first_str(metadata, ("lc_agent_name", "langgraph_node")) or parent_name
