from __future__ import annotations

import uuid
from decimal import Decimal
from typing import ClassVar

from django.db import models
from django.db.models.functions import Lower

from weckr_django.managers import ApiKeyManager, UsageEventManager

#: ``user_key`` of rollup rows for calls made with no user: one "(anonymous)" row.
ANONYMOUS_KEY = ""
ANONYMOUS_LABEL = "(anonymous)"


def user_key_label(user_key: str) -> str:
    """A rollup user key as shown: the id, or "(anonymous)" for calls with no user."""
    return ANONYMOUS_LABEL if user_key == ANONYMOUS_KEY else user_key


class Project(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    name = models.CharField("name", max_length=200)
    timezone = models.CharField(
        "timezone",
        max_length=64,
        default="UTC",
        help_text="IANA timezone whose calendar months bound budgets and margins.",
    )
    created_at = models.DateTimeField("created", auto_now_add=True)
    loop_window_seconds = models.PositiveIntegerField(
        "loop window (seconds)",
        null=True,
        blank=True,
        help_text="Sliding window of the loop-velocity check. Blank: the WECKR default (300).",
    )
    loop_token_threshold = models.PositiveIntegerField(
        "loop token threshold",
        null=True,
        blank=True,
        help_text="Tokens per user within the window that raise a loop alert. "
        "Blank: the WECKR default (50,000).",
    )
    loop_cooldown_seconds = models.PositiveIntegerField(
        "loop alert cooldown (seconds)",
        null=True,
        blank=True,
        help_text="Quiet time after a loop alert for the same user. Blank: the WECKR default "
        "(1,800).",
    )
    slack_webhook_url = models.URLField(
        "Slack webhook URL",
        blank=True,
        help_text="Slack incoming-webhook URL (https only) for alerts.",
    )
    alert_email = models.EmailField(
        "alert e-mail", blank=True, help_text="Address that receives alerts by e-mail."
    )
    target_ai_cost_share = models.DecimalField(
        "target AI cost share",
        max_digits=4,
        decimal_places=3,
        default=Decimal("0.300"),
        help_text="Share of a plan's price that AI cost should stay under (0.30 = 30%); "
        "used by pricing recommendations.",
    )
    margin_alert_threshold_usd = models.DecimalField(
        "margin alert threshold (USD)",
        max_digits=12,
        decimal_places=2,
        null=True,
        blank=True,
        help_text="Alert when a user's monthly margin falls below this. Blank: no margin alerts.",
    )
    billing_gap_alert_percent = models.PositiveSmallIntegerField(
        "billing gap alert (%)",
        null=True,
        blank=True,
        help_text="Alert when a provider billed a day more than this share above what Weckr "
        "recorded (manage.py weckr_reconcile). Blank: no billing gap alerts.",
    )
    default_output_tokens = models.PositiveIntegerField(
        "output tokens reserved by default",
        default=1024,
        help_text="Before a call that sets no max_tokens, a capped user's budget holds this "
        "many output tokens (plus the prompt) until the call's real cost is known.",
    )

    class Meta:
        verbose_name = "project"
        verbose_name_plural = "projects"
        ordering = ("name",)

    def __str__(self) -> str:
        return self.name


class ApiKey(models.Model):
    project = models.ForeignKey(
        Project, on_delete=models.CASCADE, related_name="api_keys", verbose_name="project"
    )
    name = models.CharField("name", max_length=100, blank=True)
    prefix = models.CharField(
        "prefix", max_length=16, help_text="The key's first characters, shown to tell keys apart."
    )
    key_hash = models.CharField(
        "key hash",
        max_length=64,
        unique=True,
        help_text="SHA-256 of the key. The key itself is shown once and never stored.",
    )
    created_at = models.DateTimeField("created", auto_now_add=True)
    last_used_at = models.DateTimeField("last used", null=True, blank=True)
    revoked_at = models.DateTimeField("revoked", null=True, blank=True)

    objects: ClassVar[ApiKeyManager] = ApiKeyManager()

    class Meta:
        verbose_name = "API key"
        verbose_name_plural = "API keys"
        indexes = (models.Index(fields=("prefix",), name="weckr_apikey_prefix_idx"),)

    def __str__(self) -> str:
        return f"{self.prefix}…"

    @property
    def is_revoked(self) -> bool:
        return self.revoked_at is not None


class Plan(models.Model):
    class CapAction(models.TextChoices):
        BLOCK = "block", "Block the call"
        DOWNGRADE = "downgrade", "Use a cheaper model"

    class Billing(models.TextChoices):
        FLAT = "flat", "Flat: the account (or user) pays the price"
        PER_SEAT = "per_seat", "Per seat: the price times the account's seats"

    project = models.ForeignKey(
        Project, on_delete=models.CASCADE, related_name="plans", verbose_name="project"
    )
    name = models.CharField(
        "name", max_length=100, help_text="The plan name your app passes, e.g. 'pro'."
    )
    monthly_price_usd = models.DecimalField(
        "monthly price (USD)",
        max_digits=12,
        decimal_places=2,
        help_text="What a user on this plan pays per month.",
    )
    monthly_cap_usd = models.DecimalField(
        "monthly AI cap (USD)",
        max_digits=12,
        decimal_places=4,
        null=True,
        blank=True,
        help_text="AI spend per user per calendar month before the cap action applies "
        "(in an account, too). Blank: no cap.",
    )
    account_monthly_cap_usd = models.DecimalField(
        "account monthly AI cap (USD)",
        max_digits=12,
        decimal_places=4,
        null=True,
        blank=True,
        help_text="AI spend per account per calendar month, all its users together, before "
        "the cap action applies. Blank: no account cap.",
    )
    cap_action = models.CharField(
        "cap action", max_length=16, choices=CapAction.choices, default=CapAction.BLOCK
    )
    soft_alert_percent = models.PositiveSmallIntegerField(
        "soft alert at (%)",
        default=80,
        help_text="Alert once a user passes this share of the cap.",
    )
    billing = models.CharField(
        "billing",
        max_length=16,
        choices=Billing.choices,
        default=Billing.FLAT,
        help_text="How an account on this plan pays: the price, or the price per seat "
        "(seats from WECKR['SEATS_RESOLVER'], else the account's active users this month).",
    )

    class Meta:
        verbose_name = "plan"
        verbose_name_plural = "plans"
        ordering = ("project", "monthly_price_usd", "name")
        constraints = (
            # Plan names match ignoring case ("Free" is the plan "free"), so they are
            # unique that way.
            models.UniqueConstraint(
                "project",
                Lower("name"),
                name="weckr_plan_project_name_uniq",
                violation_error_message="This project already has a plan of that name.",
            ),
        )

    def __str__(self) -> str:
        return self.name


class ModelPrice(models.Model):
    """A custom or negotiated price that overrides the price database."""

    model = models.CharField(
        "model", max_length=200, unique=True, help_text="Model name as your calls send it."
    )
    provider = models.CharField("provider", max_length=50, blank=True)
    input_per_mtok = models.DecimalField(
        "input (USD per million tokens)", max_digits=12, decimal_places=6
    )
    output_per_mtok = models.DecimalField(
        "output (USD per million tokens)", max_digits=12, decimal_places=6
    )
    cached_input_per_mtok = models.DecimalField(
        "cache read (USD per million tokens)",
        max_digits=12,
        decimal_places=6,
        null=True,
        blank=True,
        help_text="Blank: the input price.",
    )
    cache_write_per_mtok = models.DecimalField(
        "cache write (USD per million tokens)",
        max_digits=12,
        decimal_places=6,
        null=True,
        blank=True,
        help_text="Blank: the input price.",
    )
    updated_at = models.DateTimeField("updated", auto_now=True)

    class Meta:
        verbose_name = "model price override"
        verbose_name_plural = "model price overrides"
        ordering = ("model",)

    def __str__(self) -> str:
        return self.model


class BilledCost(models.Model):
    """What a provider billed the organization for one day and line item, as its
    admin cost API reports it (``manage.py weckr_reconcile``): the other side of
    the "Recorded vs billed" comparison."""

    project = models.ForeignKey(
        Project, on_delete=models.CASCADE, related_name="billed_costs", verbose_name="project"
    )
    provider = models.CharField("provider", max_length=50)
    day = models.DateField("day", help_text="The provider's billing day (UTC).")
    line_item = models.CharField(
        "line item", max_length=255, blank=True, help_text="Model or line item, as billed."
    )
    model = models.CharField(
        "model", max_length=200, blank=True, help_text="The model, when the bill names one."
    )
    amount_usd = models.DecimalField("amount (USD)", max_digits=20, decimal_places=10)
    fetched_at = models.DateTimeField("fetched", auto_now=True)

    class Meta:
        verbose_name = "billed cost"
        verbose_name_plural = "billed costs"
        constraints = (
            models.UniqueConstraint(
                fields=("project", "provider", "day", "line_item"), name="weckr_billed_uniq"
            ),
        )

    def __str__(self) -> str:
        return f"{self.provider} {self.day} {self.line_item} ${self.amount_usd}"


class ProviderKeyUsage(models.Model):
    """The tokens one of the organization's provider API keys used on one day and
    model, as the provider's admin usage report counts them (``manage.py
    weckr_reconcile``): set beside what Weckr recorded, it shows which keys make calls
    Weckr never sees."""

    project = models.ForeignKey(
        Project, on_delete=models.CASCADE, related_name="key_usage", verbose_name="project"
    )
    provider = models.CharField("provider", max_length=50)
    day = models.DateField("day", help_text="The provider's usage day (UTC).")
    api_key_id = models.CharField(
        "API key id",
        max_length=200,
        blank=True,
        help_text="The provider's id of the key (never the key); blank when it names none.",
    )
    model = models.CharField("model", max_length=200, blank=True)
    tokens = models.BigIntegerField(
        "tokens", help_text="Input (cached and cache writes included) and output tokens."
    )
    fetched_at = models.DateTimeField("fetched", auto_now=True)

    class Meta:
        verbose_name = "provider key usage"
        verbose_name_plural = "provider key usage"
        constraints = (
            models.UniqueConstraint(
                fields=("project", "provider", "day", "api_key_id", "model"),
                name="weckr_key_usage_uniq",
            ),
        )

    def __str__(self) -> str:
        return f"{self.provider} {self.day} {self.api_key_id or '(no key)'} {self.model}"


class ModelAlternative(models.Model):
    """The cheaper model a capped user is moved to, overriding the built-in map."""

    model = models.CharField("model", max_length=200, unique=True)
    alternative = models.CharField(
        "cheaper alternative",
        max_length=200,
        help_text="Same provider only: the call is sent to this model instead.",
    )

    class Meta:
        verbose_name = "model downgrade"
        verbose_name_plural = "model downgrades"
        ordering = ("model",)

    def __str__(self) -> str:
        return f"{self.model} → {self.alternative}"


class UsageEvent(models.Model):
    """One LLM call. No prompt or completion text, ever."""

    class Status(models.TextChoices):
        OK = "ok", "OK"
        ERROR = "error", "Error"

    class Source(models.TextChoices):
        SDK = "sdk", "wk.chat"
        WRAP = "wrap", "Wrapped client"
        LANGCHAIN = "langchain", "LangChain"
        CREWAI = "crewai", "CrewAI"
        MANUAL = "manual", "Manual"
        OTEL = "otel", "OpenTelemetry"

    project = models.ForeignKey(
        Project,
        on_delete=models.CASCADE,
        related_name="events",
        verbose_name="project",
        db_index=False,  # every index below starts with it
    )
    event_id = models.CharField(
        "event id", max_length=64, help_text="Client-generated id; a resend is not counted twice."
    )
    timestamp = models.DateTimeField("time of the call")
    received_at = models.DateTimeField("received", auto_now_add=True)
    user_id = models.CharField("user", max_length=255, null=True, blank=True)
    account_id = models.CharField(
        "account",
        max_length=255,
        null=True,
        blank=True,
        help_text="The paying customer (workspace, team, organisation), when not the user.",
    )
    feature = models.CharField("feature", max_length=255, null=True, blank=True)
    plan_name = models.CharField("plan", max_length=100, null=True, blank=True)
    plan_revenue_usd = models.DecimalField(
        "plan revenue (USD)",
        max_digits=12,
        decimal_places=2,
        null=True,
        blank=True,
        help_text="Monthly price of the user's plan as the client reported it.",
    )
    provider = models.CharField("provider", max_length=50)
    model = models.CharField("model", max_length=200)
    requested_model = models.CharField(
        "requested model",
        max_length=200,
        null=True,
        blank=True,
        help_text="The model asked for, when a cap downgraded the call.",
    )
    input_tokens = models.PositiveBigIntegerField("input tokens", default=0)
    output_tokens = models.PositiveBigIntegerField("output tokens", default=0)
    cached_input_tokens = models.PositiveBigIntegerField(
        "cached input tokens", default=0, help_text="Cache reads, part of the input tokens."
    )
    cache_creation_tokens = models.PositiveBigIntegerField(
        "cache write tokens", default=0, help_text="Cache writes, on top of the input tokens."
    )
    reasoning_tokens = models.PositiveBigIntegerField(
        "reasoning tokens", default=0, help_text="Part of the output tokens."
    )
    cost_usd = models.DecimalField(
        "cost (USD)",
        max_digits=20,
        decimal_places=10,
        help_text="Recomputed by the server from model and tokens.",
    )
    priced = models.BooleanField(
        "priced", default=True, help_text="False when no price is known for the model."
    )
    usage_reported = models.BooleanField(
        "usage reported", default=True, help_text="False when the provider reported no usage."
    )
    latency_ms = models.PositiveIntegerField("latency (ms)", null=True, blank=True)
    status = models.CharField("status", max_length=8, choices=Status.choices, default=Status.OK)
    error_type = models.CharField("error type", max_length=200, null=True, blank=True)
    source = models.CharField("source", max_length=16, choices=Source.choices, default=Source.SDK)
    run_id = models.CharField(
        "run", max_length=64, null=True, blank=True, help_text="Agent run or crew kickoff."
    )
    parent_run_id = models.CharField("parent run", max_length=64, null=True, blank=True)
    agent = models.CharField("agent", max_length=255, null=True, blank=True)
    task = models.CharField("task", max_length=255, null=True, blank=True)
    step = models.CharField("step", max_length=100, null=True, blank=True)
    tags = models.JSONField("tags", default=list, blank=True)

    objects: ClassVar[UsageEventManager] = UsageEventManager()

    class Meta:
        verbose_name = "usage event"
        verbose_name_plural = "usage events"
        ordering = ("-timestamp",)
        constraints = (
            models.UniqueConstraint(
                fields=("project", "event_id"), name="weckr_event_project_event_uniq"
            ),
        )
        indexes = (
            models.Index(fields=("project", "timestamp"), name="weckr_event_proj_ts_idx"),
            models.Index(
                fields=("project", "user_id", "timestamp"), name="weckr_event_proj_user_ts_idx"
            ),
            models.Index(fields=("project", "run_id"), name="weckr_event_proj_run_idx"),
        )

    def __str__(self) -> str:
        return (
            f"{self.model} for {self.user_id or ANONYMOUS_LABEL} at {self.timestamp:%Y-%m-%d %H:%M}"
        )


class _UsageTotals(models.Model):
    """Counters shared by the rollups."""

    cost_usd = models.DecimalField(
        "cost (USD)", max_digits=20, decimal_places=10, default=Decimal(0)
    )
    calls = models.PositiveIntegerField("calls", default=0)
    error_calls = models.PositiveIntegerField("failed calls", default=0)
    unpriced_calls = models.PositiveIntegerField(
        "unpriced calls", default=0, help_text="Calls to models with no known price."
    )
    input_tokens = models.PositiveBigIntegerField("input tokens", default=0)
    output_tokens = models.PositiveBigIntegerField("output tokens", default=0)
    cached_input_tokens = models.PositiveBigIntegerField("cached input tokens", default=0)
    cache_creation_tokens = models.PositiveBigIntegerField("cache write tokens", default=0)
    reasoning_tokens = models.PositiveBigIntegerField("reasoning tokens", default=0)

    class Meta:
        abstract = True


class MonthlyUserSpend(_UsageTotals):
    """Spend of one user in one calendar month (project timezone): a cap check
    reads one row of this table."""

    project = models.ForeignKey(
        Project,
        on_delete=models.CASCADE,
        related_name="monthly_spend",
        verbose_name="project",
        db_index=False,  # the unique key's first column
    )
    user_key = models.CharField(
        "user", max_length=255, help_text="User id; empty for calls made with no user."
    )
    month = models.DateField("month", help_text="First day of the month.")
    plan_name = models.CharField(
        "plan", max_length=100, null=True, blank=True, help_text="The plan of the latest call."
    )
    plan_revenue_usd = models.DecimalField(
        "plan revenue (USD)", max_digits=12, decimal_places=2, null=True, blank=True
    )
    updated_at = models.DateTimeField("updated", auto_now=True)

    class Meta:
        verbose_name = "monthly user spend"
        verbose_name_plural = "monthly user spend"
        constraints = (
            # Month before user: the one index serves a cap check (all three columns)
            # and the dashboard's reads of a month (project and month).
            models.UniqueConstraint(
                fields=("project", "month", "user_key"), name="weckr_monthly_month_user_uniq"
            ),
        )

    def __str__(self) -> str:
        return f"{self.user_key or ANONYMOUS_LABEL} {self.month:%Y-%m}"


class MonthlyAccountSpend(_UsageTotals):
    """Spend of one account (the customer who pays) in one calendar month, all its
    users' calls together."""

    project = models.ForeignKey(
        Project,
        on_delete=models.CASCADE,
        related_name="monthly_account_spend",
        verbose_name="project",
        db_index=False,  # the unique key's first column
    )
    account_key = models.CharField("account", max_length=255)
    month = models.DateField("month", help_text="First day of the month.")
    plan_name = models.CharField(
        "plan", max_length=100, null=True, blank=True, help_text="The plan of the latest call."
    )
    updated_at = models.DateTimeField("updated", auto_now=True)

    class Meta:
        verbose_name = "monthly account spend"
        verbose_name_plural = "monthly account spend"
        constraints = (
            models.UniqueConstraint(
                fields=("project", "month", "account_key"), name="weckr_monthly_account_uniq"
            ),
        )

    def __str__(self) -> str:
        return f"{self.account_key} {self.month:%Y-%m}"


class MonthlyAccountUserSpend(_UsageTotals):
    """Spend of one user within one account in one calendar month: the account's
    active users (its seats, by default) and each one's share of its cost."""

    project = models.ForeignKey(
        Project,
        on_delete=models.CASCADE,
        related_name="monthly_account_user_spend",
        verbose_name="project",
        db_index=False,  # the unique key's first column
    )
    month = models.DateField("month", help_text="First day of the month.")
    account_key = models.CharField("account", max_length=255)
    user_key = models.CharField(
        "user", max_length=255, help_text="User id; empty for calls made with no user."
    )

    class Meta:
        verbose_name = "monthly account user spend"
        verbose_name_plural = "monthly account user spend"
        constraints = (
            models.UniqueConstraint(
                fields=("project", "month", "account_key", "user_key"),
                name="weckr_monthly_account_user_uniq",
            ),
        )

    def __str__(self) -> str:
        return f"{self.account_key} / {self.user_key or ANONYMOUS_LABEL} {self.month:%Y-%m}"


class DailyUsage(_UsageTotals):
    """Usage per day, user, feature and model, for the dashboard and the API."""

    project = models.ForeignKey(
        Project,
        on_delete=models.CASCADE,
        related_name="daily_usage",
        verbose_name="project",
        db_index=False,  # the unique key's first column
    )
    day = models.DateField("day", help_text="Calendar day in the project's timezone.")
    user_key = models.CharField("user", max_length=255)
    feature = models.CharField("feature", max_length=255, help_text="Empty: no feature given.")
    model = models.CharField("model", max_length=200)
    provider = models.CharField("provider", max_length=50, blank=True)
    plan_name = models.CharField("plan", max_length=100, null=True, blank=True)

    class Meta:
        verbose_name = "daily usage"
        verbose_name_plural = "daily usage"
        constraints = (
            models.UniqueConstraint(
                fields=("project", "day", "user_key", "feature", "model"),
                name="weckr_daily_uniq",
            ),
        )  # (project, day, ...) also serves the reads of a range of days

    def __str__(self) -> str:
        return f"{self.day} {self.user_key or ANONYMOUS_LABEL} {self.feature} {self.model}"


class DailyAccountUsage(_UsageTotals):
    """Usage per day, account and feature: an account's daily cost (its spark line)
    and its features, without reading its users' events."""

    project = models.ForeignKey(
        Project,
        on_delete=models.CASCADE,
        related_name="daily_account_usage",
        verbose_name="project",
        db_index=False,  # the unique key's first column
    )
    day = models.DateField("day", help_text="Calendar day in the project's timezone.")
    account_key = models.CharField("account", max_length=255)
    feature = models.CharField("feature", max_length=255, help_text="Empty: no feature given.")

    class Meta:
        verbose_name = "daily account usage"
        verbose_name_plural = "daily account usage"
        constraints = (
            models.UniqueConstraint(
                fields=("project", "account_key", "day", "feature"),
                name="weckr_daily_account_uniq",
            ),
        )  # (project, account, day) serves one account's range of days

    def __str__(self) -> str:
        return f"{self.day} {self.account_key} {self.feature}"


class AgentRunUsage(_UsageTotals):
    """Usage of one agent run (or crew kickoff) in one calendar month, for the
    dashboard's Agents page: a month of runs is read from here, not from the events."""

    project = models.ForeignKey(
        Project,
        on_delete=models.CASCADE,
        related_name="run_usage",
        verbose_name="project",
        db_index=False,  # the unique key's first column
    )
    month = models.DateField("month", help_text="First day of the month.")
    run_id = models.CharField("run", max_length=64)
    user_key = models.CharField(
        "user", max_length=255, help_text="Empty: the run's calls named no user."
    )
    source = models.CharField("source", max_length=16, choices=UsageEvent.Source.choices)
    started_at = models.DateTimeField("first call")
    ended_at = models.DateTimeField("last call")

    class Meta:
        verbose_name = "agent run usage"
        verbose_name_plural = "agent run usage"
        constraints = (
            models.UniqueConstraint(
                fields=("project", "month", "run_id"), name="weckr_run_month_uniq"
            ),
        )

    def __str__(self) -> str:
        return f"{self.run_id} {self.month:%Y-%m}"


class AlertLog(models.Model):
    class Kind(models.TextChoices):
        LOOP = "loop", "Runaway usage (loop velocity)"
        SOFT_CAP = "soft_cap", "Approaching the cap"
        CAP_REACHED = "cap_reached", "Cap reached"
        MARGIN = "margin", "Margin below threshold"
        RUN_STOPPED = "run_stopped", "Agent run stopped by a loop guard"
        UNKNOWN_PLAN = "unknown_plan", "Calls on a plan Weckr does not know"
        BILLING_GAP = "billing_gap", "Billed above recorded"
        TEST = "test", "Test alert"

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        SENT = "sent", "Sent"
        PARTIAL = "partial", "Sent on some channels"
        FAILED = "failed", "Failed"
        NO_CHANNEL = "no_channel", "No channel configured"

    project = models.ForeignKey(
        Project, on_delete=models.CASCADE, related_name="alerts", verbose_name="project"
    )
    kind = models.CharField("kind", max_length=16, choices=Kind.choices)
    user_id = models.CharField("user", max_length=255, null=True, blank=True)
    account_id = models.CharField(
        "account",
        max_length=255,
        null=True,
        blank=True,
        help_text="The account a cap or margin alert is about (then there is no user).",
    )
    window_seconds = models.PositiveIntegerField("window (seconds)", null=True, blank=True)
    window_tokens = models.PositiveBigIntegerField("tokens in window", null=True, blank=True)
    window_cost_usd = models.DecimalField(
        "cost in window (USD)", max_digits=20, decimal_places=10, null=True, blank=True
    )
    details = models.JSONField("details", default=dict, blank=True)
    channels = models.JSONField(
        "channels", default=list, blank=True, help_text="Channels tried, e.g. ['slack', 'email']."
    )
    status = models.CharField(
        "status", max_length=16, choices=Status.choices, default=Status.PENDING
    )
    error = models.TextField("error", blank=True)
    attempts = models.PositiveSmallIntegerField("attempts", default=0)
    created_at = models.DateTimeField("created", auto_now_add=True)
    sent_at = models.DateTimeField("sent", null=True, blank=True)

    class Meta:
        verbose_name = "alert"
        verbose_name_plural = "alert log"
        ordering = ("-created_at",)
        indexes = (
            models.Index(
                fields=("project", "kind", "user_id", "created_at"),
                name="weckr_alert_cooldown_idx",
            ),
        )

    def __str__(self) -> str:
        who = f"account {self.account_id}" if self.account_id else self.user_id or "project"
        return f"{self.get_kind_display()} for {who}"


class CapLock(models.Model):
    """One row per budget (a user's or an account's) and month that reservations lock
    in turn, so that the reservations of one budget are decided one at a time in
    every process."""

    class Scope(models.TextChoices):
        USER = "user", "User"
        ACCOUNT = "account", "Account"

    project = models.ForeignKey(
        Project, on_delete=models.CASCADE, related_name="cap_locks", verbose_name="project"
    )
    scope = models.CharField("scope", max_length=8, choices=Scope.choices, default=Scope.USER)
    budget_key = models.CharField("user or account", max_length=255)
    month = models.DateField("month", help_text="First day of the month.")
    reservations = models.PositiveBigIntegerField(
        "reservations", default=0, help_text="Reservations made against this budget this month."
    )

    class Meta:
        verbose_name = "cap lock"
        verbose_name_plural = "cap locks"
        constraints = (
            models.UniqueConstraint(
                fields=("project", "scope", "budget_key", "month"), name="weckr_caplock_budget_uniq"
            ),
        )

    def __str__(self) -> str:
        return f"{self.scope} {self.budget_key} {self.month:%Y-%m}"


class CapReservation(models.Model):
    """Spend held for one call against its user's and its account's caps: its
    worst-case estimate while the call runs, then its real cost until the call's usage
    event is stored."""

    id = models.CharField("reservation id", max_length=64, primary_key=True)
    project = models.ForeignKey(
        Project, on_delete=models.CASCADE, related_name="cap_reservations", verbose_name="project"
    )
    user_key = models.CharField("user", max_length=255, blank=True)
    account_key = models.CharField("account", max_length=255, blank=True, default="")
    month = models.DateField("month", help_text="First day of the month.")
    amount_usd = models.DecimalField(
        "amount (USD)",
        max_digits=20,
        decimal_places=10,
        help_text="The call's estimate until it is settled, then its real cost.",
    )
    settled = models.BooleanField("settled", default=False)
    expires_at = models.DateTimeField(
        "expires",
        help_text="An unsettled reservation whose caller died stops counting then; a "
        "settled one whose event never arrived, too.",
    )

    class Meta:
        verbose_name = "cap reservation"
        verbose_name_plural = "cap reservations"
        indexes = (
            models.Index(
                fields=("project", "user_key", "month"), name="weckr_capres_user_month_idx"
            ),
            models.Index(
                fields=("project", "account_key", "month"), name="weckr_capres_account_month_idx"
            ),
            models.Index(fields=("expires_at",), name="weckr_capres_expires_idx"),
        )

    def __str__(self) -> str:
        return f"{self.user_key} ${self.amount_usd}"
