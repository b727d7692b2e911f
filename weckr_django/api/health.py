"""``GET /api/v1/health`` and ``GET /api/v1/ready``: for a load balancer or an
orchestrator, with no key and no throttling.

``health`` answers 200 while the process can serve a request at all (liveness: it
touches nothing else). ``ready`` answers 200 when the database and the cap store
each answer one round trip, and 503 naming what did not (readiness: take the
process out of rotation, do not restart it).
"""

from __future__ import annotations

import logging

from django.db import DatabaseError, connections, router
from django.http import HttpRequest, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from weckr_django.models import UsageEvent
from weckr_django.stores import CapStoreUnavailable, cap_store

logger = logging.getLogger("weckr_django")


@never_cache
@require_GET
def health(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"status": "ok"})


@never_cache
@require_GET
def ready(request: HttpRequest) -> JsonResponse:
    failed: dict[str, str] = {}
    try:
        with connections[router.db_for_write(UsageEvent)].cursor() as cursor:
            cursor.execute("SELECT 1")
    except DatabaseError as error:
        failed["database"] = _first_line(error)
    try:
        cap_store().ping()
    except CapStoreUnavailable as error:
        failed["capStore"] = _first_line(error)
    if failed:
        logger.warning("Weckr: not ready: %s", failed)
        return JsonResponse({"status": "unavailable", "failed": failed}, status=503)
    return JsonResponse({"status": "ok"})


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:200] if text else type(error).__name__
