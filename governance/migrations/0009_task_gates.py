"""Task gates: policies gain accuracy_drop_max, f1_relative_min and an evaluation dataset; change requests record
the evaluation their task gates come from and the labelled set it runs on."""
import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ("governance", "0008_policy_alarm_rollback"),
        ("registry", "0008_dataset_pii"),
        ("workers", "0004_evaluations"),
    ]

    operations = [
        migrations.AddField(
            model_name="policy",
            name="accuracy_drop_max",
            field=models.FloatField(blank=True, null=True),
        ),
        migrations.AddField(
            model_name="policy",
            name="f1_relative_min",
            field=models.FloatField(blank=True, null=True),
        ),
        migrations.AddField(
            model_name="policy",
            name="eval_dataset",
            field=models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.PROTECT,
                                    related_name="+", to="registry.dataset"),
        ),
        migrations.AddField(
            model_name="changerequest",
            name="evaluation",
            field=models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.PROTECT,
                                    related_name="change_requests", to="workers.evaluation"),
        ),
        migrations.AddField(
            model_name="changerequest",
            name="eval_dataset",
            field=models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.PROTECT,
                                    related_name="+", to="registry.dataset"),
        ),
    ]
