"""The Settings page's forms: the same fields and validation as the admin's."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any

from django import forms
from django.forms import inlineformset_factory

from weckr_django.admin import ProjectForm
from weckr_django.models import Plan, Project

if TYPE_CHECKING:
    _PlanForm = forms.ModelForm[Plan]
else:
    _PlanForm = forms.ModelForm


_CENTS = Decimal("0.01")


def _plain_amount(value: object) -> object:
    """An amount as a person writes it: cents, or as many places as it has
    (12.5000 shows as 12.50, 0.0075 as 0.0075)."""
    if not isinstance(value, Decimal):
        return value
    cents = value.quantize(_CENTS)
    return cents if cents == value else value.normalize()


class ProjectSettingsForm(ProjectForm):
    """Loop-detection knobs and alert channels (https Slack URLs on an allowed host).
    The target AI cost share is edited in percent, as the plans' soft alert is."""

    target_ai_cost_share = forms.DecimalField(
        label="Target AI cost share (%)",
        min_value=Decimal("0.1"),
        max_value=Decimal(100),
        help_text="The share of a plan's price AI cost should stay under; pricing "
        "recommendations use it.",
    )

    class Meta:
        model = Project
        fields = (
            "loop_window_seconds",
            "loop_token_threshold",
            "loop_cooldown_seconds",
            "slack_webhook_url",
            "alert_email",
            "margin_alert_threshold_usd",
            "billing_gap_alert_percent",
            "target_ai_cost_share",
        )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        share = self.initial.get("target_ai_cost_share")
        if isinstance(share, Decimal):
            percent = share * 100
            whole = percent.to_integral_value()
            shown = whole if whole == percent else percent.normalize()
            self.initial["target_ai_cost_share"] = shown
        threshold = self.initial.get("margin_alert_threshold_usd")
        self.initial["margin_alert_threshold_usd"] = _plain_amount(threshold)

    def clean_target_ai_cost_share(self) -> Decimal:
        percent = self.cleaned_data["target_ai_cost_share"]
        assert isinstance(percent, Decimal)
        return (percent / 100).quantize(Decimal("0.001"))  # the column's places


class PlanForm(_PlanForm):
    class Meta:
        model = Plan
        fields = (
            "name",
            "monthly_price_usd",
            "billing",
            "monthly_cap_usd",
            "account_monthly_cap_usd",
            "cap_action",
            "soft_alert_percent",
        )

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        # A form posted without it (a script, an older page) keeps the plan's billing.
        self.fields["billing"].required = False
        for name in ("monthly_price_usd", "monthly_cap_usd", "account_monthly_cap_usd"):
            self.initial[name] = _plain_amount(self.initial.get(name))

    def clean_billing(self) -> str:
        return str(self.cleaned_data.get("billing") or self.instance.billing or Plan.Billing.FLAT)


PlanFormSet = inlineformset_factory(
    Project, Plan, form=PlanForm, extra=1, can_delete=True, min_num=0
)


def cap_prefill(plan: str | None, cap: str | None, action: str | None) -> dict[str, object] | None:
    """Initial values from a ``?plan=&cap=&action=`` link (the MCP tool's), or None."""
    if not plan:
        return None
    initial: dict[str, object] = {}
    if cap:
        try:
            value = Decimal(cap)
        except InvalidOperation:
            value = None
        if value is not None and value.is_finite() and value >= 0:
            initial["monthly_cap_usd"] = value
    if action in Plan.CapAction.values:
        initial["cap_action"] = action
    return initial or None
