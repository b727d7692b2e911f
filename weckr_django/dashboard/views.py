"""Staff pages over the rollups. Every page reads ``MonthlyUserSpend`` and
``DailyUsage`` (the Agents page: one month of ``UsageEvent`` rows with a run id,
paginated), so a page costs a handful of indexed queries at any event volume."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from functools import wraps
from typing import Any, TypeVar

from django.contrib import messages
from django.contrib.admin.views.decorators import staff_member_required
from django.core.exceptions import PermissionDenied
from django.core.paginator import Page, Paginator
from django.db import transaction
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.text import slugify
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from weckr_django import exports, recommendations, reconcile, reports
from weckr_django.alerts import send_test_alert
from weckr_django.dashboard import charts, runs
from weckr_django.dashboard.forms import PlanFormSet, ProjectSettingsForm, cap_prefill
from weckr_django.labels import user_labels
from weckr_django.models import AlertLog, Project
from weckr_django.periods import (
    BadMonth,
    last_shown_day,
    month_start,
    parse_month,
    previous_month,
)
from weckr_django.plans import PlanTerms, configured_plans, match_plan, unknown_plan_rule

SESSION_KEY = "weckr_dashboard_project"
MONTH_SESSION_KEY = "weckr_dashboard_month"
MONTHS_OFFERED = 13  # this month and the twelve before it in the selector
USERS_PER_PAGE = 50
RUNS_PER_PAGE = 25
ALERTS_PER_PAGE = 50
CHART_DAYS = 30
TOP_RECOMMENDATIONS = 3
STATUSES = ("profitable", "watch", "unprofitable", "free")
LOOP_FIELDS = ("loop_window_seconds", "loop_token_threshold", "loop_cooldown_seconds")
CHANNEL_FIELDS = (
    "slack_webhook_url",
    "alert_email",
    "margin_alert_threshold_usd",
    "billing_gap_alert_percent",
    "target_ai_cost_share",
)
SETTINGS_PERMISSIONS = ("weckr_django.change_project", "weckr_django.change_plan")

ProjectView = Callable[..., HttpResponse]
View = Callable[..., HttpResponse]


def usd(value: Decimal | None, places: int = 2) -> str:
    """``$1,234.50`` / ``-$3.20`` / ``—``."""
    if value is None:
        return "—"
    text = f"${abs(value):,.{places}f}"
    return f"-{text}" if value < 0 else text


def _choose_project(request: HttpRequest) -> tuple[Project | None, list[Project]]:
    projects = list(Project.objects.order_by("name", "created_at"))
    wanted = request.GET.get("project") or request.session.get(SESSION_KEY)
    chosen = next((p for p in projects if str(p.pk) == wanted), None)
    if chosen is None and projects:
        chosen = projects[0]
    if chosen is not None and request.session.get(SESSION_KEY) != str(chosen.pk):
        request.session[SESSION_KEY] = str(chosen.pk)
    return chosen, projects


def _choose_month(request: HttpRequest, project: Project) -> date:
    """The month the pages show: ``?month=YYYY-MM`` (remembered in the session, as
    the project is), ``?month=`` for this month again; this month by default."""
    current = month_start(project)
    if "month" in request.GET:
        try:
            chosen = parse_month(project, request.GET["month"])
        except BadMonth:
            chosen = current
        if chosen >= current:
            request.session.pop(MONTH_SESSION_KEY, None)
            return current
        request.session[MONTH_SESSION_KEY] = f"{chosen:%Y-%m}"
        return chosen
    try:
        remembered = parse_month(project, request.session.get(MONTH_SESSION_KEY))
    except BadMonth:
        return current
    return min(remembered, current)


def dashboard_page(page: str) -> Callable[[ProjectView], View]:
    """Staff only (anonymous: the admin login; signed-in non-staff: 403), with the
    selected project passed in, the page's name in ``request.weckr_page`` and the
    chosen month in ``request.weckr_month``."""

    def decorate(view: ProjectView) -> View:
        @wraps(view)
        def run(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
            project, projects = _choose_project(request)
            request.weckr_projects = projects  # type: ignore[attr-defined]
            request.weckr_page = page  # type: ignore[attr-defined]
            if project is None:
                return render(request, "weckr_django/dashboard/no_project.html", _base(request))
            request.weckr_month = _choose_month(request, project)  # type: ignore[attr-defined]
            return view(request, project, *args, **kwargs)

        guarded = staff_member_required(run)

        @wraps(view)
        def staff_only(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
            user = request.user
            if user.is_authenticated and not (user.is_active and user.is_staff):
                raise PermissionDenied("The Weckr dashboard is for staff users.")
            response: HttpResponse = guarded(request, *args, **kwargs)
            return response

        return staff_only

    return decorate


def _cost_table(
    rows: Sequence[reports.FeatureCost] | Sequence[reports.ModelCost],
    models: Sequence[reports.ModelCost],
) -> dict[str, Any]:
    """A cost table's context: its rows, their totals, and the models with no price."""
    return {
        "rows": rows,
        "total_cost": sum((row.cost_usd for row in rows), Decimal(0)),
        "total_calls": sum(row.calls for row in rows),
        "unpriced": [model for model in models if model.unpriced],
    }


def _plan_banner(project: Project, month: date) -> dict[str, Any]:
    """What the unknown-plan banner says: calls of the month whose plan matches none."""
    plans = configured_plans(project)
    if not plans:
        return {"no_plans": True}
    return {
        "unknown_plans": reports.unknown_plan_usage(
            project, [terms.name for terms in plans.values()], month
        ),
        "refused_plans": reports.refused_plan_names(project, month),
        "unknown_plan_rule": unknown_plan_rule(),
    }


def _base(request: HttpRequest, project: Project | None = None, **context: Any) -> dict[str, Any]:
    month = getattr(request, "weckr_month", None)
    months = []
    if project is not None:
        months = [month_start(project)]
        for _ in range(MONTHS_OFFERED - 1):
            months.append(previous_month(months[-1]))
    is_current_month = bool(months) and month == months[0]
    return {
        "project": project,
        "projects": getattr(request, "weckr_projects", []),
        "page": getattr(request, "weckr_page", ""),
        "month": month,
        "months": months,
        "is_current_month": is_current_month,
        # "No calls this month." / "No calls in January 2027."
        "in_month": "this month" if month is None or is_current_month else f"in {month:%B %Y}",
        # What the month selector keeps of the page's query (a user, a filter).
        "kept_query": [
            (key, value) for key, value in request.GET.items() if key not in ("month", "page")
        ],
        **context,
    }


def _month(request: HttpRequest) -> date:
    month: date = request.weckr_month  # type: ignore[attr-defined]
    return month


def _page(request: HttpRequest, items: Any, per_page: int) -> Page[Any]:
    return Paginator(items, per_page).get_page(request.GET.get("page"))


def _query_without_page(request: HttpRequest) -> str:
    query = request.GET.copy()
    query.pop("page", None)
    return query.urlencode()


@dataclass(frozen=True, slots=True)
class Advice:
    kind: str
    headline: str
    detail: str
    monthly_usd: Decimal


def _top_advice(project: Project) -> list[Advice]:
    advice = [
        Advice(
            kind="Model swap",
            headline=f"{swap.feature or reports.NO_FEATURE_LABEL}: "
            f"{swap.current_model} → {swap.suggested_model}",
            detail=f"{swap.calls:,} calls, {swap.confidence} confidence",
            monthly_usd=swap.monthly_saving_usd,
        )
        for swap in recommendations.model_swap_recommendations(project)
    ] + [
        Advice(
            kind="Plan price",
            headline=f"{plan.plan_name}: {usd(plan.price_usd)} → "
            f"{usd(plan.recommended_price_usd)} per month",
            detail=f"{plan.users} users, p90 AI cost {usd(plan.p90_cost_usd)}",
            monthly_usd=plan.monthly_gain_usd or Decimal(0),
        )
        for plan in recommendations.plan_pricing_recommendations(project)
        if plan.status == "raise_price"
    ]
    advice.sort(key=lambda item: -item.monthly_usd)
    return advice[:TOP_RECOMMENDATIONS]


@require_GET
@dashboard_page("overview")
def overview(request: HttpRequest, project: Project) -> HttpResponse:
    month = _month(request)
    last_day = last_shown_day(project, month)
    usage = reports.feature_model_usage(project, month)
    margins = reports.user_margins(project, month)
    summary = reports.month_summary(
        project, month, margins=margins, features=reports.features_of(usage)
    )
    free = sorted((row for row in margins if row.is_free), key=lambda row: -row.cost_usd)[:5]
    free_spark = None
    if free:
        free_days = reports.daily_free_tier_costs(project, CHART_DAYS, last_day)
        free_spark = charts.sparkline(free_days, width=360, height=48)
    days = reports.daily_cost_and_revenue(project, CHART_DAYS, last_day)
    chart = charts.line_chart(
        [day.day for day in days],
        [
            charts.Series("Cost", "cost", [day.cost_usd for day in days]),
            charts.Series("Revenue", "revenue", [day.revenue_usd for day in days]),
        ],
        title=f"Daily AI cost against revenue, last {CHART_DAYS} days",
    )
    unpriced = [item for item in reports.models_of(usage) if item.unpriced]
    return render(
        request,
        "weckr_django/dashboard/overview.html",
        _base(
            request,
            project,
            summary=summary,
            cards={
                "cost": usd(summary.cost_usd),
                "revenue": usd(summary.revenue_usd),
                "margin": usd(summary.margin_usd),
                "loss": usd(summary.combined_loss_usd),
                "free": usd(summary.free_cost_usd),
            },
            free_heaviest=free,
            free_spark=free_spark,
            labels=user_labels(row.user_key for row in free),
            chart=chart,
            # Advice is for the month under way (its projections read this month).
            advice=_top_advice(project) if month == month_start(project) else [],
            unpriced=unpriced,
            **_plan_banner(project, month),
        ),
    )


_Margin = TypeVar("_Margin", reports.UserMargin, reports.AccountMargin)


def _filtered(
    request: HttpRequest, margins: list[_Margin], label: Callable[[_Margin], str]
) -> tuple[list[_Margin], dict[str, Any]]:
    """The rows the Users or Accounts page's filters keep (status, plan, a search in
    ``label``), and the filters for its template. A status keeps no anonymous row."""
    status = request.GET.get("status", "")
    plan = request.GET.get("plan", "")
    search = request.GET.get("q", "").strip()
    rows = margins
    if status in STATUSES:
        rows = [
            row for row in rows if row.status == status and not getattr(row, "is_anonymous", False)
        ]
    if plan:
        rows = [row for row in rows if row.plan_name == plan]
    if search:
        needle = search.casefold()
        rows = [row for row in rows if needle in label(row).casefold()]
    filters = {
        "statuses": STATUSES,
        "plans": sorted({row.plan_name for row in margins if row.plan_name}),
        "status": status,
        "plan": plan,
        "search": search,
    }
    return rows, filters


@require_GET
@dashboard_page("users")
def users(request: HttpRequest, project: Project) -> HttpResponse:
    month = _month(request)
    margins = reports.user_margins(project, month)
    accounts = sorted({account for row in margins for account in row.accounts})
    rows, filters = _filtered(request, margins, lambda row: row.label)
    account = request.GET.get("account", "")
    if account:
        rows = [row for row in rows if account in row.accounts]
    page = _page(request, rows, USERS_PER_PAGE)
    sparks = reports.daily_user_costs(
        project, [row.user_key for row in page], CHART_DAYS, last_shown_day(project, month)
    )
    return render(
        request,
        "weckr_django/dashboard/users.html",
        _base(
            request,
            project,
            rows=[(row, charts.sparkline(sparks[row.user_key])) for row in page],
            labels=user_labels(row.user_key for row in page),
            page_obj=page,
            total_users=len(margins),
            accounts=accounts,
            account=account,
            query=_query_without_page(request),
            **filters,
            **_plan_banner(project, month),
        ),
    )


@dataclass(frozen=True, slots=True)
class CapStatus:
    terms: PlanTerms | None
    spend_usd: Decimal
    percent: Decimal | None
    state: str


def _cap_status(project: Project, margin: reports.UserMargin) -> CapStatus:
    if margin.is_anonymous:
        return CapStatus(None, margin.cost_usd, None, "Calls with no user are never capped.")
    match = match_plan(project, margin.plan_name)
    label = reports.NO_PLAN_LABEL if margin.plan_name is None else repr(margin.plan_name)
    if match.refused:
        return CapStatus(
            None,
            margin.cost_usd,
            None,
            f"Plan {label} is not configured in Weckr: this user's calls are refused "
            "(WECKR['UNKNOWN_PLAN']).",
        )
    terms = match.terms
    if terms is None:
        state = (
            "No cap on this plan."
            if match.known
            else f"Plan {label} is not configured in Weckr: this user's calls are not capped."
        )
        return CapStatus(None, margin.cost_usd, None, state)
    prefix = (
        "" if match.known else f"Plan {label} is not configured: the cap of {terms.name} applies. "
    )
    return _against_cap(terms, margin.cost_usd, terms.monthly_cap_usd, "cap", prefix)


def _against_cap(
    terms: PlanTerms, spend: Decimal, cap: Decimal | None, name: str, prefix: str = ""
) -> CapStatus:
    """Where ``spend`` stands against ``cap`` (the plan's "cap" per user, or its
    "account cap"), in a sentence."""
    if cap is None:
        return CapStatus(terms, spend, None, f"{prefix}No {name} on this plan.")
    percent = spend * 100 / cap if cap else Decimal(100)
    if spend >= cap:
        action = "blocked" if terms.cap_action == "block" else "downgraded"
        state = f"{name.capitalize()} reached: further calls are {action}."
    elif percent >= terms.soft_alert_percent:
        state = f"Past the soft alert at {terms.soft_alert_percent}% of the {name}."
    else:
        state = f"Under the {name}."
    return CapStatus(terms, spend, percent, prefix + state)


@require_GET
@dashboard_page("users")
def user_detail(request: HttpRequest, project: Project) -> HttpResponse:
    if "user" not in request.GET:
        raise Http404("No user given.")
    user_key = request.GET["user"]
    month = _month(request)
    margin = reports.user_margin(project, user_key, month)
    labels = user_labels([user_key])
    if margin is None:
        return _no_calls(request, project, "users", labels[user_key].name or user_key)
    usage = reports.feature_model_usage(project, month, user_key=user_key)
    last_day = last_shown_day(project, month)
    spark = reports.daily_user_costs(project, [user_key], CHART_DAYS, last_day)[user_key]
    return render(
        request,
        "weckr_django/dashboard/user_detail.html",
        _base(
            request,
            project,
            margin=margin,
            labels=labels,
            usage=usage,
            features=reports.features_of(usage),
            models=reports.models_of(usage),
            cap=_cap_status(project, margin),
            spark=charts.sparkline(spark, width=360, height=60),
        ),
    )


@require_GET
@dashboard_page("accounts")
def accounts(request: HttpRequest, project: Project) -> HttpResponse:
    month = _month(request)
    margins = reports.account_margins(project, month)
    rows, filters = _filtered(request, margins, lambda row: row.account_key)
    page = _page(request, rows, USERS_PER_PAGE)
    sparks = reports.daily_account_costs(
        project, [row.account_key for row in page], CHART_DAYS, last_shown_day(project, month)
    )
    return render(
        request,
        "weckr_django/dashboard/accounts.html",
        _base(
            request,
            project,
            rows=[(row, charts.sparkline(sparks[row.account_key])) for row in page],
            page_obj=page,
            total_accounts=len(margins),
            query=_query_without_page(request),
            **filters,
            **_plan_banner(project, month),
        ),
    )


def _account_cap_status(project: Project, margin: reports.AccountMargin) -> CapStatus:
    """Where the account stands against its plan's account cap."""
    terms = match_plan(project, margin.plan_name).terms
    if terms is None:
        return CapStatus(None, margin.cost_usd, None, "No account cap on this plan.")
    return _against_cap(terms, margin.cost_usd, terms.account_cap_usd, "account cap")


@require_GET
@dashboard_page("accounts")
def account_detail(request: HttpRequest, project: Project) -> HttpResponse:
    if "account" not in request.GET:
        raise Http404("No account given.")
    account_key = request.GET["account"]
    month = _month(request)
    found = reports.account_margins(project, month, accounts=[account_key])
    if not found:
        return _no_calls(request, project, "accounts", f"Account {account_key}")
    margin = found[0]
    users = reports.account_users(project, account_key, month)
    last_day = last_shown_day(project, month)
    spark = reports.daily_account_costs(project, [account_key], CHART_DAYS, last_day)[account_key]
    return render(
        request,
        "weckr_django/dashboard/account_detail.html",
        _base(
            request,
            project,
            margin=margin,
            users=users,
            labels=user_labels(user.user_key for user in users),
            features=reports.account_features(project, account_key, month),
            cap=_account_cap_status(project, margin),
            spark=charts.sparkline(spark, width=360, height=60),
        ),
    )


def _no_calls(request: HttpRequest, project: Project, back: str, who: str) -> HttpResponse:
    """A user's or an account's page for a month it made no calls in."""
    return render(
        request, "weckr_django/dashboard/no_calls.html", _base(request, project, back=back, who=who)
    )


@require_GET
@dashboard_page("features")
def features(request: HttpRequest, project: Project) -> HttpResponse:
    usage = reports.feature_model_usage(project, _month(request))
    rows = reports.features_of(usage)
    models = reports.models_of(usage)
    return render(
        request,
        "weckr_django/dashboard/features.html",
        _base(
            request,
            project,
            **_cost_table(rows, models),
        ),
    )


@require_GET
@dashboard_page("models")
def models(request: HttpRequest, project: Project) -> HttpResponse:
    rows = reports.models_of(reports.feature_model_usage(project, _month(request)))
    return render(
        request,
        "weckr_django/dashboard/models.html",
        _base(
            request,
            project,
            **_cost_table(rows, rows),
        ),
    )


@require_GET
@dashboard_page("agents")
def agents(request: HttpRequest, project: Project) -> HttpResponse:
    page = _page(request, runs.run_rows(project, _month(request)), RUNS_PER_PAGE)
    described = runs.describe_runs(project, list(page.object_list))
    return render(
        request,
        "weckr_django/dashboard/agents.html",
        _base(
            request,
            project,
            page_obj=page,
            runs=described,
            labels=user_labels(run.user_id or "" for run in described),
            loop_error_types=runs.LOOP_ERROR_TYPES,
            query=_query_without_page(request),
        ),
    )


@require_GET
@dashboard_page("recommendations")
def recommendations_page(request: HttpRequest, project: Project) -> HttpResponse:
    progress = recommendations.month_progress(project)
    return render(
        request,
        "weckr_django/dashboard/recommendations.html",
        _base(
            request,
            project,
            progress=progress,
            swaps=recommendations.model_swap_recommendations(project),
            plans=recommendations.plan_pricing_recommendations(project),
            target_percent=Decimal(project.target_ai_cost_share) * 100,
            max_avg_output=recommendations.MAX_AVG_OUTPUT_TOKENS,
            min_calls=recommendations.MIN_SWAP_CALLS,
            min_saving=recommendations.MIN_MONTHLY_SAVING_USD,
            min_plan_users=recommendations.MIN_PLAN_USERS,
            min_plan_calls=recommendations.MIN_PLAN_CALLS,
        ),
    )


@require_GET
@dashboard_page("alerts")
def alerts(request: HttpRequest, project: Project) -> HttpResponse:
    page = _page(
        request,
        AlertLog.objects.filter(project=project).order_by("-created_at", "-pk"),
        ALERTS_PER_PAGE,
    )
    labels = user_labels(alert.user_id for alert in page if alert.user_id is not None)
    return render(
        request,
        "weckr_django/dashboard/alerts.html",
        _base(request, project, page_obj=page, labels=labels, query=_query_without_page(request)),
    )


def _can_edit(request: HttpRequest) -> bool:
    return request.user.has_perms(SETTINGS_PERMISSIONS)


@require_http_methods(["GET", "POST"])
@dashboard_page("settings")
def settings_page(request: HttpRequest, project: Project) -> HttpResponse:
    can_edit = _can_edit(request)
    prefill_plan = request.GET.get("plan") or None
    prefill = cap_prefill(prefill_plan, request.GET.get("cap"), request.GET.get("action"))
    if request.method == "POST":
        if not can_edit:
            raise PermissionDenied(
                "Changing Weckr settings needs the project and plan permissions."
            )
        form = ProjectSettingsForm(request.POST, instance=project, prefix="project")
        formset = PlanFormSet(request.POST, instance=project, prefix="plans")
        if form.is_valid() and formset.is_valid():
            with transaction.atomic():
                form.save()
                formset.save()
            messages.success(request, "Settings saved.", fail_silently=True)
            return redirect(reverse("weckr:settings"))
    else:
        form = ProjectSettingsForm(instance=project, prefix="project")
        formset = PlanFormSet(instance=project, prefix="plans")
        if prefill is not None:
            for plan_form in formset.forms:
                if plan_form.instance.pk and plan_form.instance.name == prefill_plan:
                    plan_form.initial.update(prefill)
                    plan_form.prefilled = True  # type: ignore[attr-defined]
    prefill_known = prefill is not None and any(
        getattr(plan_form, "prefilled", False) for plan_form in formset.forms
    )
    return render(
        request,
        "weckr_django/dashboard/settings.html",
        _base(
            request,
            project,
            form=form,
            loop_fields=[form[name] for name in LOOP_FIELDS],
            channel_fields=[form[name] for name in CHANNEL_FIELDS],
            formset=formset,
            can_edit=can_edit,
            prefill_plan=prefill_plan if prefill is not None else None,
            prefill_known=prefill_known,
        ),
        status=400 if request.method == "POST" else 200,
    )


@require_POST
@dashboard_page("settings")
def test_alert(request: HttpRequest, project: Project) -> HttpResponse:
    if not _can_edit(request):
        raise PermissionDenied("Sending a test alert needs the project and plan permissions.")
    alert = send_test_alert(project)
    channels = ", ".join(alert.channels) or "no channel"
    level = messages.SUCCESS if alert.status == AlertLog.Status.SENT else messages.WARNING
    messages.add_message(
        request,
        level,
        f"Test alert: {alert.get_status_display()} ({channels}). {alert.error}".strip(),
        fail_silently=True,
    )
    return HttpResponseRedirect(reverse("weckr:alerts"))


@require_GET
@dashboard_page("export")
def export_csv(request: HttpRequest, project: Project, kind: str) -> HttpResponse:
    """``export/<kind>.csv?month=YYYY-MM``: a month's table for a spreadsheet."""
    table = exports.TABLES.get(kind)
    if table is None:
        raise Http404("No such export.")
    try:
        month = exports.parse_month(project, request.GET.get("month"))
    except exports.BadMonth as error:
        return HttpResponse(str(error), status=400, content_type="text/plain; charset=utf-8")
    response = HttpResponse(
        "".join(exports.as_csv(table, table.rows(project, month))),
        content_type="text/csv; charset=utf-8",
    )
    filename = f"weckr-{slugify(project.name) or 'project'}-{kind}-{month:%Y-%m}.csv"
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response


@require_GET
@dashboard_page("billing")
def billing(request: HttpRequest, project: Project) -> HttpResponse:
    """Recorded against billed, per day and provider, for the chosen month."""
    month = _month(request)
    last_day = last_shown_day(project, month)
    return render(
        request,
        "weckr_django/dashboard/billing.html",
        _base(
            request,
            project,
            days=reconcile.comparison(project, month, last_day),
            api_keys=reconcile.key_verdicts(project, month, last_day),
            keys=reconcile.configured_providers(),
        ),
    )
