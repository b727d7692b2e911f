import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('weckr_django', '0003_caps_reservations'),
    ]

    # Indexes no query needs, each written on every ingest: the project's own index
    # on each table (every composite index starts with the project), the day and
    # month indexes the unique keys serve. The new unique key is made before the
    # old one goes, so ingest's ON CONFLICT always has one.
    operations = [
        migrations.AddConstraint(
            model_name='monthlyuserspend',
            constraint=models.UniqueConstraint(fields=('project', 'month', 'user_key'), name='weckr_monthly_month_user_uniq'),
        ),
        migrations.RemoveConstraint(
            model_name='monthlyuserspend',
            name='weckr_monthly_user_uniq',
        ),
        migrations.RemoveIndex(
            model_name='dailyusage',
            name='weckr_daily_proj_day_idx',
        ),
        migrations.RemoveIndex(
            model_name='monthlyuserspend',
            name='weckr_monthly_proj_month_idx',
        ),
        migrations.AlterField(
            model_name='dailyusage',
            name='project',
            field=models.ForeignKey(db_index=False, on_delete=django.db.models.deletion.CASCADE, related_name='daily_usage', to='weckr_django.project', verbose_name='project'),
        ),
        migrations.AlterField(
            model_name='monthlyuserspend',
            name='project',
            field=models.ForeignKey(db_index=False, on_delete=django.db.models.deletion.CASCADE, related_name='monthly_spend', to='weckr_django.project', verbose_name='project'),
        ),
        migrations.AlterField(
            model_name='usageevent',
            name='project',
            field=models.ForeignKey(db_index=False, on_delete=django.db.models.deletion.CASCADE, related_name='events', to='weckr_django.project', verbose_name='project'),
        ),
    ]
