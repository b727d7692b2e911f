"""``path("", include("weckr_django.urls"))``: the wire API under ``api/v1/`` and the
staff dashboard under ``weckr/`` (URL namespace ``weckr``)."""

from __future__ import annotations

from django.urls import include, path

urlpatterns = [
    path("api/v1/", include("weckr_django.api.urls")),
    path("weckr/", include("weckr_django.dashboard.urls")),
]
