"""The model, provider, agent and task of a CrewAI call, read from CrewAI's objects.

The call's usage is read by ``weckr_crewai.usage``.
"""

from __future__ import annotations

from typing import Any

from weckr_core import estimate

_TASK_LABEL_LENGTH = 80
# LiteLLM-style model prefixes that name the provider ("openai/gpt-4o").
_PROVIDER_PREFIXES = frozenset(
    {
        "openai",
        "anthropic",
        "gemini",
        "google",
        "vertex_ai",
        "azure",
        "bedrock",
        "groq",
        "mistral",
        "deepseek",
        "xai",
        "cohere",
        "together_ai",
        "fireworks_ai",
        "openrouter",
        "ollama",
        "watsonx",
        "huggingface",
    }
)


def model_of(llm: Any) -> tuple[str, str]:
    """``(model, provider)`` of an agent's LLM (a CrewAI LLM object or a model
    string); unknown parts are ``"unknown"``."""
    if llm is None:
        return "unknown", "unknown"
    if isinstance(llm, str):
        return split_model(llm, None)
    model = str(getattr(llm, "model", None) or "unknown")
    # CrewAI's native providers live in crewai.llms.providers.<name>; their
    # ``provider`` field defaults to "openai" whatever the class.
    module = type(llm).__module__.split(".")
    if module[:3] == ["crewai", "llms", "providers"] and len(module) > 3:
        name, _ = split_model(model, None)
        return name, module[3]
    provider = getattr(llm, "provider", None)
    return split_model(model, provider if isinstance(provider, str) else None)


def split_model(model: str, provider: str | None) -> tuple[str, str]:
    """("openai/gpt-4o", None) -> ("gpt-4o", "openai"), LiteLLM style."""
    prefix, _, rest = model.partition("/")
    if rest and prefix.lower() in _PROVIDER_PREFIXES:
        return rest, prefix.lower()
    return model, (provider or "unknown").lower()


def output_limit(llm: Any) -> int | None:
    """The LLM's own output limit (``max_tokens`` / ``max_completion_tokens``)."""
    if llm is None or isinstance(llm, str):
        return None
    return estimate.max_output_tokens(
        {
            "max_tokens": getattr(llm, "max_tokens", None),
            "max_completion_tokens": getattr(llm, "max_completion_tokens", None),
        }
    )


def agent_role(agent: Any) -> str | None:
    role = getattr(agent, "role", None)
    return None if role is None else str(role)


def task_label(task: Any) -> str | None:
    """The task's name, else the first line of its description *template*: inputs
    are interpolated into the description, and no user text goes in the ledger."""
    if task is None:
        return None
    name = getattr(task, "name", None)
    if name:
        return str(name)
    template = getattr(task, "_original_description", None) or getattr(task, "description", "")
    line = " ".join(str(template).split())
    if len(line) > _TASK_LABEL_LENGTH:
        line = line[: _TASK_LABEL_LENGTH - 1].rstrip() + "…"
    return line or None
