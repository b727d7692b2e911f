"""``GET /api/v1/recommendations/models|pricing/<project_id>``: the figures of
``weckr_django.recommendations`` for the key's project, this month."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework.request import Request
from rest_framework.response import Response

from weckr_django.api import schema as openapi
from weckr_django.api.views import WeckrAPIView
from weckr_django.recommendations import (
    model_recommendations_payload,
    pricing_recommendations_payload,
)


@extend_schema(responses=openapi.answers({200: openapi.OBJECT}, 404))
class ModelRecommendationsView(WeckrAPIView):
    def get(self, request: Request, project_id: str) -> Response:
        project = self.project_from_url(request, project_id)
        return Response(model_recommendations_payload(project))


@extend_schema(responses=openapi.answers({200: openapi.OBJECT}, 404))
class PricingRecommendationsView(WeckrAPIView):
    def get(self, request: Request, project_id: str) -> Response:
        project = self.project_from_url(request, project_id)
        return Response(pricing_recommendations_payload(project))
