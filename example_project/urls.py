from __future__ import annotations

from django.contrib import admin
from django.urls import include, path

urlpatterns = [
    path("admin/", admin.site.urls),
    path("", include("weckr_django.urls")),
    path("", include("example_project.saas.urls")),
]
