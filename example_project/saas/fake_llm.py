"""A fake OpenAI-compatible chat endpoint, so the example runs offline.

Usage figures look like a real provider's (prompt size from the messages, cache
reads on long prompts, reasoning tokens on o-series models); the reply is a fixed
placeholder. Nothing sent here is stored.
"""

from __future__ import annotations

import hashlib
import json
import random
import time
from typing import Any

import httpx
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

REPLY = "This is a reply from the demo's fake model. Configure LLM_BASE_URL for a real one."


def completion(request: dict[str, Any]) -> dict[str, Any]:
    """A chat.completion answer with realistic usage for an OpenAI chat request."""
    model = str(request.get("model") or "gpt-4o-mini")
    messages = request.get("messages") or []
    text = json.dumps(messages, ensure_ascii=False)
    seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")
    rng = random.Random(seed)
    prompt_tokens = max(12, len(text) // 4) + 9 * len(messages)
    completion_tokens = rng.randint(60, 420)
    limit = request.get("max_tokens") or request.get("max_completion_tokens")
    if isinstance(limit, int) and limit > 0:
        completion_tokens = min(completion_tokens, limit)
    # Providers cache prompt prefixes in 128-token blocks once a prompt passes 1,024.
    cached = (prompt_tokens // 2 // 128) * 128 if prompt_tokens > 1024 else 0
    reasoning = rng.randint(100, 1500) if model.startswith(("o1", "o3", "o4", "gpt-5")) else 0
    return {
        "id": f"chatcmpl-demo{seed % 10**12}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": REPLY},
                "finish_reason": "stop",
            }
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens + reasoning,
            "total_tokens": prompt_tokens + completion_tokens + reasoning,
            "prompt_tokens_details": {"cached_tokens": cached, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": reasoning, "audio_tokens": 0},
        },
    }


@csrf_exempt
@require_POST
def chat_completions(request: HttpRequest) -> HttpResponse:
    try:
        payload = json.loads(request.body or b"{}")
    except ValueError:
        return JsonResponse({"error": {"message": "Invalid JSON body."}}, status=400)
    if not isinstance(payload, dict):
        return JsonResponse({"error": {"message": "Send a JSON object."}}, status=400)
    if payload.get("stream"):
        return JsonResponse(
            {"error": {"message": "The demo's fake model does not stream."}}, status=400
        )
    return JsonResponse(completion(payload))


def transport() -> httpx.MockTransport:
    """The same endpoint as an in-process httpx transport: no server, no network."""

    def handle(request: httpx.Request) -> httpx.Response:
        if not request.url.path.endswith("/chat/completions"):
            return httpx.Response(404, json={"error": {"message": "Not found."}})
        return httpx.Response(200, json=completion(json.loads(request.content or b"{}")))

    return httpx.MockTransport(handle)
