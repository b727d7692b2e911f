"""URLs for the weckr_django tests: the admin and views that report their attribution."""

from __future__ import annotations

from django.contrib import admin
from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from django.urls import path

from weckr_core.context import current_attribution


def _seen() -> str:
    attribution = current_attribution()
    return f"{attribution.user_id}|{attribution.plan}"


def whoami(request: HttpRequest) -> HttpResponse:
    return HttpResponse(_seen())


async def whoami_async(request: HttpRequest) -> HttpResponse:
    return HttpResponse(_seen())


def stream(request: HttpRequest) -> StreamingHttpResponse:
    return StreamingHttpResponse(_seen() + ";" for _ in range(3))


urlpatterns = [
    path("admin/", admin.site.urls),
    path("whoami/", whoami),
    path("whoami-async/", whoami_async),
    path("stream/", stream),
]
