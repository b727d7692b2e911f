"""The app's LLM clients: one OpenAI client, and one wrapped by Weckr."""

from __future__ import annotations

import functools

import httpx
import openai
from django.conf import settings

import weckr_core
from example_project.saas import fake_llm


@functools.cache
def openai_client() -> openai.OpenAI:
    """An OpenAI client for ``LLM_BASE_URL``, or for the fake model in-process."""
    base_url = getattr(settings, "LLM_BASE_URL", "")
    if base_url:
        return openai.OpenAI(base_url=base_url, api_key=getattr(settings, "LLM_API_KEY", ""))
    return openai.OpenAI(
        base_url="http://localhost/fake-llm/v1",
        api_key="demo",
        http_client=httpx.Client(transport=fake_llm.transport()),
        max_retries=0,
    )


@functools.cache
def weckr() -> weckr_core.Weckr:
    """``wk.chat`` records to the backend weckr_django installed: this database."""
    return weckr_core.Weckr(plans=getattr(settings, "PLAN_PRICES", None))


@functools.cache
def wrapped_client() -> openai.OpenAI:
    """The same client, wrapped: every call is capped and recorded, attributed by
    WeckrMiddleware to the signed-in user and their plan."""
    return weckr().wrap(openai_client())
