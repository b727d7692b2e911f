"""``path("weckr/", include("weckr_django.dashboard.urls"))``: the staff dashboard."""

from __future__ import annotations

from django.urls import path

from weckr_django.dashboard import views

app_name = "weckr"

urlpatterns = [
    path("", views.overview, name="overview"),
    path("users/", views.users, name="users"),
    path("users/detail/", views.user_detail, name="user"),
    path("accounts/", views.accounts, name="accounts"),
    path("accounts/detail/", views.account_detail, name="account"),
    path("features/", views.features, name="features"),
    path("models/", views.models, name="models"),
    path("agents/", views.agents, name="agents"),
    path("recommendations/", views.recommendations_page, name="recommendations"),
    path("alerts/", views.alerts, name="alerts"),
    path("billing/", views.billing, name="billing"),
    path("export/<str:kind>.csv", views.export_csv, name="export"),
    path("settings/", views.settings_page, name="settings"),
    path("settings/test-alert/", views.test_alert, name="test-alert"),
]
