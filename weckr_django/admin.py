from __future__ import annotations

from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from django import forms
from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.utils import timezone

from weckr_django.alerts import AlertChannelError, send_test_alert, validate_slack_url
from weckr_django.managers import hash_key
from weckr_django.models import (
    AlertLog,
    ApiKey,
    DailyUsage,
    ModelAlternative,
    ModelPrice,
    MonthlyAccountSpend,
    MonthlyUserSpend,
    Plan,
    Project,
    UsageEvent,
)

# Django's admin and form classes are generic only in the type stubs.
if TYPE_CHECKING:
    _ProjectForm = forms.ModelForm[Project]
    _ApiKeyForm = forms.ModelForm[ApiKey]
    _PlanInline = admin.StackedInline[Plan, Project]
    _ProjectAdmin = admin.ModelAdmin[Project]
    _ApiKeyAdmin = admin.ModelAdmin[ApiKey]
    _AnyAdmin = admin.ModelAdmin[Any]
    _ModelPriceAdmin = admin.ModelAdmin[ModelPrice]
    _ModelAlternativeAdmin = admin.ModelAdmin[ModelAlternative]
else:
    _ProjectForm = _ApiKeyForm = forms.ModelForm
    _PlanInline = admin.StackedInline
    _ProjectAdmin = _ApiKeyAdmin = _AnyAdmin = admin.ModelAdmin
    _ModelPriceAdmin = _ModelAlternativeAdmin = admin.ModelAdmin


class ProjectForm(_ProjectForm):
    slack_webhook_url = forms.URLField(
        label="Slack webhook URL",
        required=False,
        assume_scheme="https",
        help_text=Project._meta.get_field("slack_webhook_url").help_text,
    )

    class Meta:
        model = Project
        fields = (
            "name",
            "timezone",
            "loop_window_seconds",
            "loop_token_threshold",
            "loop_cooldown_seconds",
            "slack_webhook_url",
            "alert_email",
            "margin_alert_threshold_usd",
            "billing_gap_alert_percent",
            "target_ai_cost_share",
        )

    def clean_timezone(self) -> str:
        name = str(self.cleaned_data["timezone"]).strip()
        try:
            ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError):
            raise forms.ValidationError(
                f"{name!r} is not an IANA timezone (for example Europe/Berlin)."
            ) from None
        return name

    def clean_slack_webhook_url(self) -> str:
        url = str(self.cleaned_data.get("slack_webhook_url") or "")
        if url:
            try:
                validate_slack_url(url)
            except AlertChannelError as error:
                raise forms.ValidationError(str(error)) from None
        return url


class PlanInline(_PlanInline):
    """A plan per block, its price on one line and its caps on the next (seven
    fields and "Delete?" overflow a table row)."""

    model = Plan
    extra = 1
    fields = (
        ("name", "monthly_price_usd", "billing"),
        ("monthly_cap_usd", "account_monthly_cap_usd", "cap_action", "soft_alert_percent"),
    )


@admin.register(Project)
class ProjectAdmin(_ProjectAdmin):
    form = ProjectForm
    inlines = (PlanInline,)
    list_display = ("name", "timezone", "created_at", "id")
    search_fields = ("name",)
    readonly_fields = ("id", "created_at")
    actions = ("send_test_alert",)
    fieldsets = (
        (None, {"fields": ("name", "timezone", "id", "created_at")}),
        (
            "Loop detection",
            {
                "fields": ("loop_window_seconds", "loop_token_threshold", "loop_cooldown_seconds"),
                "description": "Alert when one user's calls use more tokens than the threshold "
                "within the window. Blank fields use the WECKR settings defaults.",
            },
        ),
        (
            "Alert channels",
            {
                "fields": (
                    "slack_webhook_url",
                    "alert_email",
                    "margin_alert_threshold_usd",
                    "billing_gap_alert_percent",
                )
            },
        ),
        ("Pricing recommendations", {"fields": ("target_ai_cost_share",)}),
    )

    @admin.action(description="Send test alert")
    def send_test_alert(self, request: HttpRequest, queryset: QuerySet[Project]) -> None:
        for project in queryset:
            alert = send_test_alert(project)
            channels = ", ".join(alert.channels) or "no channel"
            if alert.status == AlertLog.Status.SENT:
                self.message_user(
                    request, f"{project}: test alert sent ({channels}).", messages.SUCCESS
                )
            elif alert.status == AlertLog.Status.NO_CHANNEL:
                self.message_user(request, f"{project}: {alert.error}", messages.WARNING)
            else:
                level = (
                    messages.WARNING if alert.status == AlertLog.Status.PARTIAL else messages.ERROR
                )
                self.message_user(
                    request,
                    f"{project}: test alert {alert.get_status_display().lower()}: {alert.error}",
                    level,
                )


class ApiKeyAddForm(_ApiKeyForm):
    class Meta:
        model = ApiKey
        fields = ("project", "name")


@admin.register(ApiKey)
class ApiKeyAdmin(_ApiKeyAdmin):
    list_display = ("prefix", "name", "project", "created_at", "last_used_at", "revoked_at")
    list_filter = ("project",)
    search_fields = ("prefix", "name")
    actions = ("revoke",)
    fields = ("project", "name", "prefix", "created_at", "last_used_at", "revoked_at")
    readonly_fields = ("project", "prefix", "created_at", "last_used_at", "revoked_at")

    def get_form(
        self, request: HttpRequest, obj: ApiKey | None = None, change: bool = False, **kwargs: Any
    ) -> type[forms.ModelForm[ApiKey]]:
        if obj is None:
            kwargs["form"] = ApiKeyAddForm
        return super().get_form(request, obj, change, **kwargs)

    def get_fields(self, request: HttpRequest, obj: ApiKey | None = None) -> Any:
        return ("project", "name") if obj is None else self.fields

    def get_readonly_fields(self, request: HttpRequest, obj: ApiKey | None = None) -> list[str]:
        return [] if obj is None else list(self.readonly_fields)

    def save_model(self, request: HttpRequest, obj: ApiKey, form: Any, change: bool) -> None:
        if not change:
            # The plaintext lives only on this request; the database gets its hash.
            request._weckr_plaintext_key = ApiKey.objects.assign_new_key(obj)  # type: ignore[attr-defined]
        super().save_model(request, obj, form, change)

    def response_add(
        self, request: HttpRequest, obj: ApiKey, post_url_continue: str | None = None
    ) -> HttpResponse:
        plaintext = getattr(request, "_weckr_plaintext_key", None)
        if plaintext is None or hash_key(plaintext) != obj.key_hash:
            return super().response_add(request, obj, post_url_continue)
        # Rendered directly, not through messages or a redirect, so the key is never
        # written to a session or cookie: this page is the one time it is shown.
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": "API key created",
            "key": obj,
            "plaintext": plaintext,
        }
        response = TemplateResponse(request, "admin/weckr_django/apikey/created.html", context)
        response["Cache-Control"] = "no-store"
        return response

    @admin.action(description="Revoke selected keys")
    def revoke(self, request: HttpRequest, queryset: QuerySet[ApiKey]) -> None:
        count = queryset.filter(revoked_at__isnull=True).update(revoked_at=timezone.now())
        self.message_user(request, f"Revoked {count} key(s).", messages.SUCCESS)


class ReadOnlyAdmin(_AnyAdmin):
    """A ledger: looked at, filtered, never edited by hand."""

    show_full_result_count = False

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class _RollupValuesFilter(admin.SimpleListFilter):
    """Choices from the daily rollup instead of ``SELECT DISTINCT`` over every event."""

    rollup_field = ""
    limit = 100

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        values = (
            DailyUsage.objects.exclude(**{self.rollup_field: ""})
            .exclude(**{f"{self.rollup_field}__isnull": True})
            .values_list(self.rollup_field, flat=True)
            .order_by(self.rollup_field)
            .distinct()[: self.limit]
        )
        return [(str(value), str(value)) for value in values]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        value = self.value()
        return queryset.filter(**{str(self.parameter_name): value}) if value else queryset


class UserFilter(_RollupValuesFilter):
    title = "user"
    parameter_name = "user_id"
    rollup_field = "user_key"


class FeatureFilter(_RollupValuesFilter):
    title = "feature"
    parameter_name = "feature"
    rollup_field = "feature"


class ModelFilter(_RollupValuesFilter):
    title = "model"
    parameter_name = "model"
    rollup_field = "model"


class PlanFilter(_RollupValuesFilter):
    title = "plan"
    parameter_name = "plan_name"
    rollup_field = "plan_name"


@admin.register(UsageEvent)
class UsageEventAdmin(ReadOnlyAdmin):
    list_display = (
        "timestamp",
        "user_id",
        "feature",
        "plan_name",
        "model",
        "input_tokens",
        "output_tokens",
        "cost_usd",
        "status",
        "source",
    )
    list_filter = (
        "project",
        UserFilter,
        FeatureFilter,
        ModelFilter,
        PlanFilter,
        "status",
        "source",
    )
    search_fields = ("user_id", "account_id", "event_id", "run_id")
    date_hierarchy = "timestamp"
    list_select_related = ("project",)


@admin.register(MonthlyUserSpend)
class MonthlyUserSpendAdmin(ReadOnlyAdmin):
    list_display = ("month", "user_key", "plan_name", "calls", "cost_usd", "project")
    list_filter = ("project", "month", "plan_name")
    search_fields = ("user_key",)
    list_select_related = ("project",)


@admin.register(MonthlyAccountSpend)
class MonthlyAccountSpendAdmin(ReadOnlyAdmin):
    list_display = ("month", "account_key", "plan_name", "calls", "cost_usd", "project")
    list_filter = ("project", "month", "plan_name")
    search_fields = ("account_key",)
    list_select_related = ("project",)


@admin.register(AlertLog)
class AlertLogAdmin(ReadOnlyAdmin):
    list_display = ("created_at", "kind", "user_id", "status", "channels", "attempts", "project")
    list_filter = ("project", "kind", "status")
    search_fields = ("user_id",)
    date_hierarchy = "created_at"
    list_select_related = ("project",)


@admin.register(ModelPrice)
class ModelPriceAdmin(_ModelPriceAdmin):
    list_display = (
        "model",
        "provider",
        "input_per_mtok",
        "output_per_mtok",
        "cached_input_per_mtok",
        "cache_write_per_mtok",
        "updated_at",
    )
    search_fields = ("model",)


@admin.register(ModelAlternative)
class ModelAlternativeAdmin(_ModelAlternativeAdmin):
    list_display = ("model", "alternative")
    search_fields = ("model", "alternative")
