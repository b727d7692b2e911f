"""Answering a refused LLM call with HTTP 402, opt-in, for plain views and DRF.

    MIDDLEWARE += ["weckr_django.responses.CapErrorMiddleware"]
    REST_FRAMEWORK = {"EXCEPTION_HANDLER": "weckr_django.responses.drf_exception_handler"}

A ``WeckrCapError`` (or ``WeckrLoopError``, or the weckr-sdk's errors of those names)
escaping a view becomes ``402 {"error", "cap", "spent", "plan", "reason"}``; every
other exception is left to Django or DRF as before.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.utils.deprecation import MiddlewareMixin

from weckr_core.errors import is_weckr_cap_error

PAYMENT_REQUIRED = 402


def cap_error_body(error: BaseException) -> dict[str, Any]:
    """What the client of a refused call is told."""
    return {
        "error": str(error),
        "cap": _number(getattr(error, "cap", None)),
        "spent": _number(getattr(error, "current_spend", None)),
        "plan": getattr(error, "plan_name", None),
        "reason": getattr(error, "kind", "cap"),
    }


def cap_error_response(error: BaseException) -> JsonResponse:
    return JsonResponse(cap_error_body(error), status=PAYMENT_REQUIRED)


class CapErrorMiddleware(MiddlewareMixin):
    """Turns a cap or loop error raised by a view into a 402 JSON answer."""

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        if is_weckr_cap_error(exception):
            return cap_error_response(exception)
        return None


def drf_exception_handler(exc: Exception, context: dict[str, Any]) -> Any:
    """DRF's ``EXCEPTION_HANDLER``: a cap or loop error is a 402, the rest goes to
    DRF's own handler."""
    from rest_framework.response import Response
    from rest_framework.views import exception_handler

    if is_weckr_cap_error(exc):
        return Response(cap_error_body(exc), status=PAYMENT_REQUIRED)
    return exception_handler(exc, context)


def _number(value: Any) -> float | None:
    if value is None:
        return None
    try:
        return float(Decimal(str(value)))
    except ArithmeticError:
        return None
