"""``manage.py weckr_reconcile [--project P] [--days 7]``: fetch what OpenAI and
Anthropic billed (their admin cost reports) and compare it with recorded spend."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from django.core.management.base import BaseCommand, CommandError, CommandParser

from weckr_django import alert_rules, reconcile, tasks
from weckr_django.backend import resolve_default_project
from weckr_django.conf import weckr_settings
from weckr_django.management.commands._projects import find_project


class Command(BaseCommand):
    help = (
        "Fetch the providers' bills (OpenAI's Costs API, Anthropic's cost report) for the "
        "last days with the admin keys WECKR['OPENAI_ADMIN_KEY'] / ['ANTHROPIC_ADMIN_KEY'] "
        "(or the OPENAI_ADMIN_KEY / ANTHROPIC_ADMIN_KEY environment variables), store them "
        "and print billed against recorded per day. Run it daily (cron, Celery beat)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--project", help="Project id or name (default: the default one).")
        parser.add_argument(
            "--days", type=int, default=7, help="Days back from today, today included (1-90)."
        )
        # Where the reports are asked for: a proxy in front of the providers, say.
        parser.add_argument("--openai-url", default=reconcile.OPENAI_COSTS_URL)
        parser.add_argument("--anthropic-url", default=reconcile.ANTHROPIC_COST_REPORT_URL)
        # The usage reports per API key: by default beside the cost reports.
        parser.add_argument("--openai-usage-url")
        parser.add_argument("--anthropic-usage-url")

    def handle(self, *args: Any, **options: Any) -> None:
        if not 1 <= options["days"] <= 90:
            raise CommandError("--days must be between 1 and 90.")
        project = (
            find_project(options["project"])
            if options["project"]
            else resolve_default_project(weckr_settings.DEFAULT_PROJECT)
        )
        keys = {
            provider: key
            for provider in reconcile.PROVIDERS
            if (key := weckr_settings.admin_key(provider))
        }
        if not keys:
            raise CommandError(
                "No admin key: set WECKR['OPENAI_ADMIN_KEY'] or WECKR['ANTHROPIC_ADMIN_KEY'] "
                "(or the OPENAI_ADMIN_KEY / ANTHROPIC_ADMIN_KEY environment variables)."
            )
        last = datetime.now(UTC).date()
        first = last - timedelta(days=options["days"] - 1)
        urls = {"openai": options["openai_url"], "anthropic": options["anthropic_url"]}
        usage_urls = {
            provider: options[f"{provider}_usage_url"]
            or reconcile.usage_url_beside(urls[provider], provider)
            for provider in reconcile.PROVIDERS
        }
        with httpx.Client() as client:
            for provider, key in keys.items():
                try:
                    lines = reconcile.fetch(provider, key, first, last, client, url=urls[provider])
                except reconcile.BillingError as error:
                    raise CommandError(f"{provider}: {error}") from None
                stored = reconcile.store(project, lines, first, last, provider)
                self.stdout.write(f"{provider}: {stored} billed line(s) from {first} to {last}.")
                usage_url = usage_urls[provider]
                if usage_url is None:
                    self.stderr.write(
                        f"{provider}: usage per API key not fetched: say where with "
                        f"--{provider}-usage-url (its cost URL is not the provider's path)."
                    )
                    continue
                try:
                    usage = reconcile.fetch_key_usage(
                        provider, key, first, last, client, url=usage_url
                    )
                except reconcile.BillingError as error:
                    # The bill stands without it; say why the keys are not shown.
                    self.stderr.write(f"{provider}: usage per API key not fetched: {error}")
                    continue
                reconcile.store_key_usage(project, usage, first, last, provider)
        days = reconcile.comparison(project, first, last)
        for day in days:
            percent = "" if day.gap_percent is None else f" ({day.gap_percent:.1f}%)"
            self.stdout.write(
                f"{day.day} {day.provider}: billed ${day.billed_usd:.2f}, recorded "
                f"${day.recorded_usd:.2f}, gap ${day.gap_usd:.2f}{percent}"
            )
        for verdict in reconcile.key_verdicts(project, first, last):
            if verdict.instrumented is False:
                self.stdout.write(
                    f"Not instrumented: {verdict.provider} API key "
                    f"{verdict.api_key_id or '(none: the console)'}, {verdict.tokens} tokens "
                    f"on {verdict.days} day(s)."
                )
        alerted = alert_rules.billing_gap_alerts(project, days, send=tasks.send_alert)
        if alerted:
            self.stdout.write(f"{len(alerted)} billing gap alert(s) sent.")
