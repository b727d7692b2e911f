from __future__ import annotations

from django.urls import path

from example_project.saas import fake_llm, views

urlpatterns = [
    path("", views.home, name="home"),
    path("fake-llm/v1/chat/completions", fake_llm.chat_completions, name="fake-llm"),
]
