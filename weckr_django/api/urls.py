from __future__ import annotations

from django.urls import path

from weckr_django.api import health, recommendations, schema, views

app_name = "weckr_api"

urlpatterns = [
    path("health", health.health, name="health"),
    path("ready", health.ready, name="ready"),
    path("schema", schema.SchemaView.as_view(), name="schema"),
    path("log", views.LogView.as_view(), name="log"),
    path("log/batch", views.LogBatchView.as_view(), name="log-batch"),
    path("track", views.TrackView.as_view(), name="track"),
    # OTLP/HTTP exporters post to <endpoint>/v1/traces: the endpoint is .../api/v1/otlp.
    path("otlp/v1/traces", views.OtlpTracesView.as_view(), name="otlp-traces"),
    path("check", views.CheckView.as_view(), name="check"),
    path("reserve", views.ReserveView.as_view(), name="reserve"),
    path("reserve/<str:reservation>", views.ReleaseView.as_view(), name="release"),
    path("me", views.MeView.as_view(), name="me"),
    path("stats/<str:project_id>", views.StatsView.as_view(), name="stats"),
    path("users/<str:project_id>", views.UsersView.as_view(), name="users"),
    path("accounts/<str:project_id>", views.AccountsView.as_view(), name="accounts"),
    path("export/<str:project_id>/<str:kind>", views.ExportView.as_view(), name="export"),
    path(
        "recommendations/models/<str:project_id>",
        recommendations.ModelRecommendationsView.as_view(),
        name="recommendations-models",
    ),
    path(
        "recommendations/pricing/<str:project_id>",
        recommendations.PricingRecommendationsView.as_view(),
        name="recommendations-pricing",
    ),
]
