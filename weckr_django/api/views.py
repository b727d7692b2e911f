"""The Weckr wire API, as the published weckr-sdk speaks it.

Bodies are read and decoded here rather than by DRF's parsers, so that an oversize
body is refused (413) before anything is parsed, and every malformed body gets the
same ``{"error": ..., "field": ...}`` answer as a rejected event.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from django.db import InterfaceError, OperationalError
from django.http import HttpResponse
from django.http.request import RawPostDataException
from drf_spectacular.utils import extend_schema
from rest_framework import exceptions, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView, exception_handler, set_rollback

from weckr_core.backends.base import CapDecision
from weckr_django import caps, exports, peers, reports
from weckr_django.api import schema as openapi
from weckr_django.api.authentication import ApiKeyAuthentication, HasApiKey
from weckr_django.api.throttling import ApiKeyRateThrottle
from weckr_django.conf import weckr_settings
from weckr_django.ingest import ingest_payloads
from weckr_django.models import ApiKey, Project, UsageEvent
from weckr_django.stores import CapStoreUnavailable
from weckr_django.wire import (
    TEXT_FIELDS,
    Rejection,
    WireError,
    parse_check,
    parse_reserve,
    reservation_id,
    text_value,
)

logger = logging.getLogger("weckr_django")

#: Largest request body accepted, checked before anything is parsed. A batch of the
#: default 500 events from weckr-sdk (about 600 bytes each) fits with room to spare.
MAX_BODY_BYTES = 1024 * 1024
#: Seconds a client is asked to wait (``Retry-After``) when a 503 answers it.
RETRY_AFTER_SECONDS = 5


class NotImplementedOnServer(exceptions.APIException):
    status_code = status.HTTP_501_NOT_IMPLEMENTED
    default_detail = "Not available on this server."


class BadRequest(exceptions.APIException):
    status_code = status.HTTP_400_BAD_REQUEST
    default_detail = "Bad request."

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class ServiceUnavailable(exceptions.APIException):
    status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    default_detail = "The cap store is unavailable; try again."


class DatabaseUnavailable(exceptions.APIException):
    status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    default_detail = "The database is unavailable; try again."


class PayloadTooLarge(exceptions.APIException):
    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    default_detail = f"The request body is larger than {MAX_BODY_BYTES} bytes."


def weckr_exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """DRF's handler with every error body in one shape: ``{"error", "field"}``; an
    unreachable database is 503 with ``Retry-After``, not 500."""
    if isinstance(exc, OperationalError | InterfaceError):
        logger.warning("Weckr API: the database is unavailable (%s); answering 503.", exc)
        set_rollback()
        exc = DatabaseUnavailable()
    response = exception_handler(exc, context)
    if response is None:
        return None
    detail = getattr(exc, "detail", None)
    if isinstance(exc, exceptions.Throttled):
        message = "Rate limit exceeded for this API key."
        wait = getattr(exc, "wait", None)
        if wait is not None:
            message += f" Retry in {int(wait) + 1} s."
    elif isinstance(exc, exceptions.NotAuthenticated):
        message = HasApiKey.message
    elif isinstance(detail, str):
        message = detail
    else:
        message = str(response.data)
    response.data = {"error": message, "field": getattr(exc, "field", None)}
    if response.status_code == status.HTTP_503_SERVICE_UNAVAILABLE:
        response.headers.setdefault("Retry-After", str(RETRY_AFTER_SECONDS))
    return response


def _money(value: Decimal | None) -> float | None:
    return None if value is None else float(value)


class WeckrAPIView(APIView):
    authentication_classes = (ApiKeyAuthentication,)
    permission_classes = (HasApiKey,)
    throttle_classes = (ApiKeyRateThrottle,)
    parser_classes = ()
    schema = openapi.AutoSchema()

    def get_exception_handler(self) -> Callable[[Exception, dict[str, Any]], Response | None]:
        return weckr_exception_handler

    def project(self, request: Request) -> Project:
        assert isinstance(request.auth, ApiKey)
        return request.auth.project

    def project_from_url(self, request: Request, project_id: str) -> Project:
        """The key's project when the URL names it; 404 for any other (or a malformed) id."""
        project = self.project(request)
        try:
            named = uuid.UUID(project_id)
        except ValueError:
            raise exceptions.NotFound("No such project.") from None
        if named != project.pk:
            raise exceptions.NotFound("No such project.")
        return project

    def raw_body(self, request: Request) -> bytes:
        """The request body, up to ``MAX_BODY_BYTES`` (413 past it)."""
        try:
            declared = int(request.META.get("CONTENT_LENGTH") or 0)
        except ValueError:
            raise BadRequest("Content-Length is not a number.") from None
        if declared > MAX_BODY_BYTES:
            raise PayloadTooLarge()
        try:
            # read() is not subject to DATA_UPLOAD_MAX_MEMORY_SIZE; the limit is ours.
            body: bytes = request._request.read(MAX_BODY_BYTES + 1)
        except (OSError, RawPostDataException):
            raise BadRequest("The request body could not be read.") from None
        if len(body) > MAX_BODY_BYTES:
            raise PayloadTooLarge()
        return body

    def json_body(self, request: Request) -> Any:
        body = self.raw_body(request)
        if not body.strip():
            raise BadRequest("The request body is empty; send a JSON object.")
        try:
            return json.loads(body.decode("utf-8"), parse_constant=_reject_constant)
        except UnicodeDecodeError:
            raise BadRequest("The request body is not UTF-8.") from None
        except (ValueError, RecursionError) as error:
            raise BadRequest(f"The request body is not valid JSON: {error}") from None


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number in JSON")


@extend_schema(
    request={"application/json": openapi.EVENT_REF},
    responses=openapi.answers({201: openapi.LOGGED, 200: openapi.LOGGED}, 400, 413),
)
class LogView(WeckrAPIView):
    """``POST /api/v1/log``: one event. 201 when stored, 200 for a resend (duplicate).

    The event and its rollups are committed before the answer: a cap check right
    after sees the spend.
    """

    def post(self, request: Request) -> Response:
        project = self.project(request)
        result = ingest_payloads(project, [self.json_body(request)])
        if result.rejected:
            raise BadRequest(result.rejected[0].error, result.rejected[0].field)
        event_id = result.event_ids[0]
        cost = result.costs.get(event_id)
        if cost is None:  # a resend: the cost the event was stored with
            cost = (
                UsageEvent.objects.filter(project=project, event_id=event_id)
                .values_list("cost_usd", flat=True)
                .first()
            )
        return Response(
            {
                "ok": True,
                "eventId": event_id,
                "duplicate": not result.created,
                "costUsd": _money(cost),
            },
            status=status.HTTP_201_CREATED if result.created else status.HTTP_200_OK,
        )


@extend_schema(
    request={"application/json": openapi.BATCH},
    responses=openapi.answers({200: openapi.BATCH_RESULT}, 400, 413),
)
class LogBatchView(WeckrAPIView):
    """``POST /api/v1/log/batch`` with ``{"events": [...]}``.

    Valid events are stored even when others are rejected; each rejected event is
    listed with its index, its eventId when it had a valid one, the reason and the
    field at fault.
    """

    def post(self, request: Request) -> Response:
        project = self.project(request)
        payload = self.json_body(request)
        events = payload.get("events") if isinstance(payload, dict) else None
        if not isinstance(events, list):
            raise BadRequest(
                'Send {"events": [...]}: a JSON object with a list of events.', "events"
            )
        limit = weckr_settings.MAX_BATCH_EVENTS
        if len(events) > limit:
            raise BadRequest(
                f"A batch holds at most {limit} events, not {len(events)}; split it.", "events"
            )
        result = ingest_payloads(project, events)
        return Response(
            {
                "accepted": result.created,
                "duplicates": result.duplicates,
                "rejected": [rejection.to_wire() for rejection in result.rejected],
            }
        )


@extend_schema(
    request={"application/json": openapi.TRACK},
    responses=openapi.answers({201: openapi.TRACKED, 200: openapi.TRACKED}, 400, 413),
)
class TrackView(WeckrAPIView):
    """``POST /api/v1/track``: what Tokenr's and AICostManager's SDKs send, unchanged
    (``Authorization: Bearer <key>``). One Tokenr call answers 201 with its ``cost``;
    AICostManager's ``{"tracked": [...]}`` answers 200 with a result per record, in
    order: ``completed`` (stored now or before), ``error`` or ``service_key_unknown``,
    with what is wrong. See ``weckr_django.peers`` for how their fields map."""

    def post(self, request: Request) -> Response:
        project = self.project(request)
        body = self.json_body(request)
        if isinstance(body, dict) and "tracked" in body:
            return Response(self._tracked(project, body["tracked"]))
        try:
            event = peers.tokenr_event(body)
        except WireError as error:
            raise BadRequest(error.message, error.field) from None
        result = ingest_payloads(project, [event])
        if result.rejected:
            refused = _in_their_words(result.rejected[0], peers.TOKENR_FIELDS)
            raise BadRequest(refused.message, refused.field)
        event_id = result.event_ids[0]
        cost = _money(result.costs.get(event_id))
        return Response(
            {"ok": True, "eventId": event_id, "cost": cost, "costUsd": cost},
            status=status.HTTP_201_CREATED,
        )

    def _tracked(self, project: Project, records: Any) -> dict[str, Any]:
        if not isinstance(records, list):
            raise BadRequest('"tracked" must be a list of records.', "tracked")
        if len(records) > peers.MAX_TRACKED:
            raise BadRequest(
                f"A request holds at most {peers.MAX_TRACKED} records, not {len(records)}.",
                "tracked",
            )
        results: list[dict[str, Any] | None] = [None] * len(records)
        events: list[dict[str, Any]] = []
        positions: list[int] = []  # each event's record
        for index, record in enumerate(records):
            try:
                events.append(peers.aicostmanager_event(record))
                positions.append(index)
            except WireError as error:
                unknown = isinstance(error, peers.UnknownServiceKey)
                results[index] = _track_result(
                    _response_id(record), "service_key_unknown" if unknown else "error", error
                )
        batch = ingest_payloads(project, events)
        rejected = {rejection.index: rejection for rejection in batch.rejected}
        stored = [position for position in range(len(events)) if position not in rejected]
        event_ids = dict(zip(stored, batch.event_ids, strict=True))
        known = [event_id for event_id in event_ids.values() if event_id not in batch.costs]
        costs = {
            **dict(
                UsageEvent.objects.filter(project=project, event_id__in=known).values_list(
                    "event_id", "cost_usd"
                )
            ),
            **batch.costs,
        }
        for position, index in enumerate(positions):
            if position in rejected:
                refused = _in_their_words(rejected[position], peers.AICOSTMANAGER_FIELDS)
                results[index] = _track_result(events[position].get("eventId"), "error", refused)
            else:
                event_id = event_ids[position]
                results[index] = {
                    "response_id": event_id,
                    "status": "completed",
                    "cost": _money(costs.get(event_id)),
                    "errors": [],
                }
        return {"results": results, "triggered_limits": {}}


def _in_their_words(rejection: Rejection, fields: dict[str, str]) -> WireError:
    """A wire rejection naming the field as the sender's SDK does."""
    ours = rejection.field
    theirs = fields.get(ours or "", ours)
    message = rejection.error
    if ours and theirs and theirs != ours:
        message = message.replace(ours, theirs)
    return WireError(message, theirs)


def _response_id(record: Any) -> Any:
    return record.get("response_id") if isinstance(record, dict) else None


def _track_result(response_id: Any, outcome: str, error: WireError) -> dict[str, Any]:
    where = f"{error.field}: " if error.field and error.field not in error.message else ""
    return {
        "response_id": _echo(response_id),
        "status": outcome,
        "cost": None,
        "errors": [_echo(f"{where}{error.message}")],
    }


def _echo(value: Any) -> Any:
    """A value of the request sent back: text that UTF-8 cannot hold (a lone
    surrogate, from JSON's \\udXXX) escaped, so that the answer can be written."""
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    return value if value is None or isinstance(value, int | float) else str(value)


def _decision(decision: CapDecision) -> dict[str, Any]:
    """A cap decision on the wire: weckr-sdk's ``/check`` fields, then ours."""
    return {
        "allowed": decision.allowed,
        "action": None if decision.allowed else decision.action,
        "alternativeModel": decision.alternative_model,
        "currentSpend": _money(decision.current_spend),
        "cap": _money(decision.cap),
        "remainingBudget": _money(decision.remaining_budget),
        "inFlight": _money(decision.in_flight),
        "plan": decision.plan,
        "reason": decision.reason,
        "accountId": decision.account_id,
    }


@extend_schema(
    parameters=openapi.CHECK_PARAMETERS, responses=openapi.answers({200: openapi.DECISION}, 400)
)
class CheckView(WeckrAPIView):
    """``GET /api/v1/check?userId=&accountId=&planName=&model=``: may this user's
    (this account's) next call go ahead? Holds nothing; ``POST /api/v1/reserve``
    holds the call's cost."""

    def get(self, request: Request) -> Response:
        try:
            query = parse_check(request.query_params)
        except WireError as error:
            raise BadRequest(error.message, error.field) from None
        decision = caps.decide(
            self.project(request), query.user_id, query.plan, query.model, query.account_id
        )
        return Response(_decision(decision))


@extend_schema(
    request={"application/json": openapi.RESERVE},
    responses=openapi.answers({200: openapi.RESERVED}, 400, 413),
)
class ReserveView(WeckrAPIView):
    """``POST /api/v1/reserve``: decide a call and hold its worst-case cost against
    the caps of its user and its account. The call's event settles the reservation
    when it names it as ``reservationId``; ``DELETE /api/v1/reserve/<id>`` drops it
    for a call never made."""

    def post(self, request: Request) -> Response:
        try:
            cap_request = parse_reserve(self.json_body(request))
        except WireError as error:
            raise BadRequest(error.message, error.field) from None
        decision = caps.reserve(self.project(request), cap_request)
        body = _decision(decision)
        reservation = decision.reservation
        body["reservation"] = (
            None
            if reservation is None
            else {
                "id": reservation.id,
                "amountUsd": _money(reservation.amount_usd),
                "model": reservation.model,
            }
        )
        return Response(body)


@extend_schema(parameters=openapi.HOLDER_PARAMETERS, responses=openapi.answers({204: None}, 400))
class ReleaseView(WeckrAPIView):
    """``DELETE /api/v1/reserve/<id>?userId=&accountId=``: the reserved call was
    never made."""

    def delete(self, request: Request, reservation: str) -> Response:
        holders = {}
        try:
            held = reservation_id({"reservationId": reservation})
            for key in ("userId", "accountId"):
                value = request.query_params.get(key, "")
                holders[key] = text_value(key, value, max_length=TEXT_FIELDS[key].max_length)
        except WireError as error:
            raise BadRequest(error.message, error.field) from None
        if not holders["userId"] and not holders["accountId"]:
            raise BadRequest(
                "userId is required (or accountId): who the reservation was for.", "userId"
            )
        assert held is not None
        try:
            caps.release(
                self.project(request), held, holders["userId"] or None, holders["accountId"] or None
            )
        except CapStoreUnavailable:
            raise ServiceUnavailable() from None
        return Response(status=status.HTTP_204_NO_CONTENT)


@extend_schema(responses=openapi.answers({200: openapi.OBJECT}))
class MeView(WeckrAPIView):
    """``GET /api/v1/me``: the project this key belongs to."""

    def get(self, request: Request) -> Response:
        project = self.project(request)
        return Response(
            {
                "project": {
                    "id": str(project.pk),
                    "name": project.name,
                    "created_at": project.created_at.isoformat(),
                }
            }
        )


@extend_schema(responses=openapi.answers({200: openapi.OBJECT}, 404))
class StatsView(WeckrAPIView):
    """``GET /api/v1/stats/<project_id>``: the current month (project timezone)."""

    def get(self, request: Request, project_id: str) -> Response:
        project = self.project_from_url(request, project_id)
        features = reports.feature_breakdown(project)
        summary = reports.month_summary(
            project, margins=reports.user_margins(project), features=features
        )
        return Response(
            {
                "totalCostUsd": float(summary.cost_usd),
                "totalRevenueUsd": float(summary.revenue_usd),
                "totalMarginUsd": float(summary.margin_usd),
                "requestCount": summary.calls,
                "unprofitableUsers": summary.unprofitable_users,
                "unprofitableAccounts": summary.unprofitable_accounts,
                "combinedLossUsd": float(summary.combined_loss_usd),
                "freeUsers": summary.free_users,
                "freeTierCostUsd": float(summary.free_cost_usd),
                "topCostFeature": summary.top_cost_feature,
                "last30Days": [
                    {
                        "date": day.day.isoformat(),
                        "cost": float(day.cost_usd),
                        "revenue": float(day.revenue_usd),
                    }
                    for day in reports.daily_cost_and_revenue(project, days=30)
                ],
                "featureBreakdown": [
                    {
                        "feature": item.feature,
                        "totalCostUsd": float(item.cost_usd),
                        "requestCount": item.calls,
                        "avgCostUsd": float(item.average_cost_usd),
                        "pctOfTotal": float(round(item.share_percent, 2)),
                    }
                    for item in features
                ],
            }
        )


@extend_schema(responses=openapi.answers({200: openapi.OBJECT}, 404))
class AccountsView(WeckrAPIView):
    """``GET /api/v1/accounts/<project_id>``: this month's margin per account (the
    customer who pays), worst first."""

    def get(self, request: Request, project_id: str) -> Response:
        project = self.project_from_url(request, project_id)
        return Response(
            {
                "accounts": [
                    {
                        "accountId": row.account_key,
                        "planName": row.plan_name,
                        "billing": row.billing,
                        "seats": row.seats,
                        "activeUsers": row.active_users,
                        "totalCostUsd": float(row.cost_usd),
                        "revenueUsd": _money(row.revenue_usd),
                        "marginUsd": float(row.margin_usd),
                        "requestCount": row.calls,
                        "status": row.status,
                    }
                    for row in reports.account_margins(project)
                ]
            }
        )


@extend_schema(responses=openapi.answers({200: openapi.OBJECT}, 404))
class UsersView(WeckrAPIView):
    """``GET /api/v1/users/<project_id>``: this month's margin per user, worst first."""

    def get(self, request: Request, project_id: str) -> Response:
        project = self.project_from_url(request, project_id)
        return Response(
            {
                "users": [
                    {
                        "userId": row.label,
                        "planName": row.plan_name,
                        "totalCostUsd": float(row.cost_usd),
                        "planRevenueUsd": float(row.revenue_usd or 0),
                        # A user of an account has no margin of their own: a share.
                        "marginUsd": None if row.paid_by_account else float(row.margin_usd),
                        "requestCount": row.calls,
                        "status": row.status,
                        "accountIds": list(row.accounts),
                        "accountCostSharePct": _money(row.account_share_percent),
                    }
                    for row in reports.user_margins(project)
                ]
            }
        )


@extend_schema(
    parameters=[openapi.MONTH_PARAMETER], responses=openapi.answers({200: openapi.OBJECT}, 400, 404)
)
class ExportView(WeckrAPIView):
    """``GET /api/v1/export/<project_id>/<kind>?month=YYYY-MM``: a month's users,
    accounts, features, models or agent runs, as the dashboard's CSV has them:
    ``{"kind", "month", "columns", "rows"}`` (money as numbers)."""

    def get(self, request: Request, project_id: str, kind: str) -> Response:
        project = self.project_from_url(request, project_id)
        table = exports.TABLES.get(kind)
        if table is None:
            kinds = ", ".join(exports.TABLES)
            raise exceptions.NotFound(f"No export named {kind!r}: use one of {kinds}.")
        try:
            month = exports.parse_month(project, request.query_params.get("month"))
        except exports.BadMonth as error:
            raise BadRequest(str(error), "month") from None
        rows = [
            {column: exports.as_json(row[column]) for column in table.columns}
            for row in table.rows(project, month)
        ]
        return Response(
            {"kind": kind, "month": f"{month:%Y-%m}", "columns": list(table.columns), "rows": rows}
        )


@extend_schema(
    request={"application/x-protobuf": openapi.OBJECT, "application/json": openapi.OBJECT},
    responses=openapi.answers({200: openapi.OBJECT}, 400, 413),
)
class OtlpTracesView(WeckrAPIView):
    """``POST /api/v1/otlp/v1/traces``: an OpenTelemetry OTLP/HTTP trace export
    (protobuf or JSON, gzip or not). Each span with GenAI token usage is stored as a
    usage event (``weckr_django.otlp``); the answer is OTLP's, with the spans refused
    counted as a partial success."""

    def post(self, request: Request) -> HttpResponse:
        try:
            # Imported here: the OpenTelemetry protobuf definitions are an extra.
            from weckr_django import otlp
        except ImportError:
            raise NotImplementedOnServer(
                "This server cannot read OTLP: install weckr-django[otel] "
                "(opentelemetry-proto) on it."
            ) from None
        content_type = request.META.get("CONTENT_TYPE", "")
        try:
            export = otlp.decode(
                self.raw_body(request), content_type, request.META.get("HTTP_CONTENT_ENCODING", "")
            )
        except otlp.OtlpError as error:
            raise BadRequest(str(error)) from None
        events, refused = otlp.usage_events(export)
        if len(events) > otlp.MAX_USAGE_SPANS:
            raise BadRequest(
                f"An export carries at most {otlp.MAX_USAGE_SPANS:,} spans with usage, not "
                f"{len(events):,}: export in smaller batches."
            )
        result = ingest_payloads(self.project(request), events)
        reasons = refused + [
            f"span {events[item.index].get('eventId')}: {item.error}" for item in result.rejected
        ]
        body, kind = otlp.answer(
            len(refused) + len(result.rejected), "; ".join(reasons[:5]), content_type
        )
        return HttpResponse(body, content_type=kind)
