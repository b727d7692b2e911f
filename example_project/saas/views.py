from __future__ import annotations

from typing import Any

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from openai.types.chat import ChatCompletionMessageParam

import weckr_core
from example_project.saas import llm

MODELS = ("gpt-4o-mini", "gpt-4o", "o3")


def _reply(response: Any) -> dict[str, Any]:
    usage = response.usage
    return {
        "model": response.model,
        "text": response.choices[0].message.content,
        "prompt_tokens": usage.prompt_tokens if usage else None,
        "completion_tokens": usage.completion_tokens if usage else None,
    }


@login_required
def home(request: HttpRequest) -> HttpResponse:
    context: dict[str, Any] = {"models": MODELS, "plan": _plan(request)}
    if request.method == "POST":
        text = request.POST.get("text", "")[:4000]
        chosen = request.POST.get("model", "")
        model = chosen if chosen in MODELS else MODELS[0]
        messages: list[ChatCompletionMessageParam] = [
            {"role": "system", "content": "You are a helpful writing assistant."},
            {"role": "user", "content": text or "Say hello."},
        ]
        try:
            if request.POST.get("action") == "draft":
                # A wrapped client: attribution (user, plan) comes from WeckrMiddleware,
                # the feature from this block.
                with weckr_core.attribute(feature="draft-email"):
                    # max_tokens bounds what the call can cost, so the cap holds exactly.
                    response = llm.wrapped_client().chat.completions.create(
                        model=model, messages=messages, max_tokens=400
                    )
            else:
                # wk.chat, as with weckr-sdk; user and plan again from the middleware.
                response = llm.weckr().chat(
                    llm.openai_client(),
                    {
                        "model": model,
                        "messages": messages,
                        "max_tokens": 400,
                        "feature": "summarize",
                    },
                )
            context["reply"] = _reply(response)
        except weckr_core.WeckrCapError:
            context["capped"] = True
    return render(request, "saas/home.html", context)


def _plan(request: HttpRequest) -> str:
    profile = getattr(request.user, "profile", None)
    return str(profile.plan) if profile is not None else "none"
