from django.db import migrations, models


class Migration(migrations.Migration):
    """Caps per account: the plan's account-wide cap, locks per budget (a user's or an
    account's), the account a hold counts against, and alerts about an account."""

    dependencies = [
        ("weckr_django", "0007_account_seats"),
    ]

    operations = [
        migrations.AddField(
            model_name="plan",
            name="account_monthly_cap_usd",
            field=models.DecimalField(
                blank=True,
                decimal_places=4,
                help_text="AI spend per account per calendar month, all its users together, "
                "before the cap action applies. Blank: no account cap.",
                max_digits=12,
                null=True,
                verbose_name="account monthly AI cap (USD)",
            ),
        ),
        migrations.AlterField(
            model_name="plan",
            name="monthly_cap_usd",
            field=models.DecimalField(
                blank=True,
                decimal_places=4,
                help_text="AI spend per user per calendar month before the cap action applies "
                "(in an account, too). Blank: no cap.",
                max_digits=12,
                null=True,
                verbose_name="monthly AI cap (USD)",
            ),
        ),
        migrations.RemoveConstraint(model_name="caplock", name="weckr_caplock_uniq"),
        migrations.RenameField(model_name="caplock", old_name="user_key", new_name="budget_key"),
        migrations.AlterField(
            model_name="caplock",
            name="budget_key",
            field=models.CharField(max_length=255, verbose_name="user or account"),
        ),
        migrations.AddField(
            model_name="caplock",
            name="scope",
            field=models.CharField(
                choices=[("user", "User"), ("account", "Account")],
                default="user",
                max_length=8,
                verbose_name="scope",
            ),
        ),
        migrations.AlterField(
            model_name="caplock",
            name="reservations",
            field=models.PositiveBigIntegerField(
                default=0,
                help_text="Reservations made against this budget this month.",
                verbose_name="reservations",
            ),
        ),
        migrations.AddConstraint(
            model_name="caplock",
            constraint=models.UniqueConstraint(
                fields=("project", "scope", "budget_key", "month"),
                name="weckr_caplock_budget_uniq",
            ),
        ),
        migrations.AlterField(
            model_name="capreservation",
            name="user_key",
            field=models.CharField(blank=True, max_length=255, verbose_name="user"),
        ),
        migrations.AddField(
            model_name="capreservation",
            name="account_key",
            field=models.CharField(blank=True, default="", max_length=255, verbose_name="account"),
        ),
        migrations.AddField(
            model_name="alertlog",
            name="account_id",
            field=models.CharField(
                blank=True,
                help_text="The account a cap or margin alert is about (then there is no user).",
                max_length=255,
                null=True,
                verbose_name="account",
            ),
        ),
        migrations.AddIndex(
            model_name="capreservation",
            index=models.Index(
                fields=["project", "account_key", "month"], name="weckr_capres_account_month_idx"
            ),
        ),
    ]
