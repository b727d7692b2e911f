"""The Settings page's forms: the same fields and validation as the admin's."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING

from django import forms
from django.forms import inlineformset_factory

from weckr_django.admin import ProjectForm
from weckr_django.models import Plan, Project

if TYPE_CHECKING:
    _PlanForm = forms.ModelForm[Plan]
else:
    _PlanForm = forms.ModelForm


class ProjectSettingsForm(ProjectForm):
    """Loop-detection knobs and alert channels (https Slack URLs on an allowed host)."""

    class Meta:
        model = Project
        fields = (
            "loop_window_seconds",
            "loop_token_threshold",
            "loop_cooldown_seconds",
            "slack_webhook_url",
            "alert_email",
            "margin_alert_threshold_usd",
            "target_ai_cost_share",
        )


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
