"""``manage.py weckr_plan set PROJECT PLAN --price USD [--cap USD] [--account-cap USD]
[--action ...]``."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from weckr_django.management.commands._projects import find_project
from weckr_django.models import Plan


def _amount(value: str, option: str) -> Decimal:
    try:
        amount = Decimal(value)
    except InvalidOperation:
        raise CommandError(f"{option} must be an amount of USD, not {value!r}.") from None
    if not amount.is_finite() or amount < 0:
        raise CommandError(f"{option} must be zero or more, not {value}.")
    return amount


class Command(BaseCommand):
    help = (
        "Create or update a plan: its monthly price and its monthly AI caps, per user and "
        "per account."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        actions = parser.add_subparsers(dest="action", required=True, metavar="{set}")
        set_plan = actions.add_parser("set", help="Create the plan, or update it if it exists.")
        set_plan.add_argument("project", help="Project id or name.")
        set_plan.add_argument("plan", help="Plan name as your app passes it, e.g. 'pro'.")
        set_plan.add_argument("--price", required=True, help="Monthly price in USD.")
        cap = set_plan.add_mutually_exclusive_group()
        cap.add_argument("--cap", help="Monthly AI spend per user in USD before the action.")
        cap.add_argument("--no-cap", action="store_true", help="Remove the cap.")
        account_cap = set_plan.add_mutually_exclusive_group()
        account_cap.add_argument(
            "--account-cap",
            help="Monthly AI spend per account (all its users together) in USD before the action.",
        )
        account_cap.add_argument(
            "--no-account-cap", action="store_true", help="Remove the account cap."
        )
        set_plan.add_argument(
            "--action",
            dest="cap_action",
            choices=[choice.value for choice in Plan.CapAction],
            help="What happens at the cap (default block; kept when updating).",
        )
        set_plan.add_argument(
            "--billing",
            choices=[choice.value for choice in Plan.Billing],
            help="flat: an account pays the price; per_seat: the price per seat (default "
            "flat; kept when updating).",
        )
        set_plan.add_argument(
            "--soft-alert",
            type=int,
            metavar="PERCENT",
            help="Alert once a user passes this share of the cap.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        project = find_project(options["project"])
        name = options["plan"].strip()
        if not name or len(name) > 100:
            raise CommandError("The plan name must be 1 to 100 characters.")
        plan = Plan.objects.filter(project=project, name=name).first() or Plan(
            project=project, name=name
        )
        plan.monthly_price_usd = _amount(options["price"], "--price")
        if options["cap"] is not None:
            plan.monthly_cap_usd = _amount(options["cap"], "--cap")
        elif options["no_cap"]:
            plan.monthly_cap_usd = None
        if options["account_cap"] is not None:
            plan.account_monthly_cap_usd = _amount(options["account_cap"], "--account-cap")
        elif options["no_account_cap"]:
            plan.account_monthly_cap_usd = None
        if options["cap_action"]:
            plan.cap_action = options["cap_action"]
        if options["billing"]:
            plan.billing = options["billing"]
        if options["soft_alert"] is not None:
            if not 1 <= options["soft_alert"] <= 100:
                raise CommandError("--soft-alert must be between 1 and 100.")
            plan.soft_alert_percent = options["soft_alert"]
        created = plan.pk is None
        plan.save()
        caps = [
            f"${amount:.2f} per {who} per month"
            for amount, who in (
                (plan.account_monthly_cap_usd, "account"),
                (plan.monthly_cap_usd, "user"),
            )
            if amount is not None
        ]
        cap = f"cap {' and '.join(caps)}, then {plan.cap_action}" if caps else "no cap"
        self.stdout.write(
            f"{'Created' if created else 'Updated'} plan {plan.name!r} of {project.name!r}: "
            f"${plan.monthly_price_usd:.2f}/month"
            f"{' per seat' if plan.billing == Plan.Billing.PER_SEAT else ''}, {cap}."
        )
