# The audit trail moved here from governance. Its table (governance_auditevent) and the append-only triggers on
# it were made by governance/0001 and 0002 and stay as they are: only Django's idea of which app owns it changes.
import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models


class Migration(migrations.Migration):

    initial = True

    dependencies = [
        ("governance", "0005_decisions_append_only"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(state_operations=[
            migrations.CreateModel(
                name="AuditEvent",
                fields=[
                    ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                    ("sequence", models.BigIntegerField(unique=True)),
                    ("occurred_at", models.DateTimeField()),
                    ("actor_name", models.CharField(blank=True, max_length=150)),
                    ("action", models.CharField(max_length=64)),
                    ("model_name", models.CharField(blank=True, db_index=True, max_length=100)),
                    ("object_type", models.CharField(max_length=64)),
                    ("object_id", models.CharField(max_length=64)),
                    ("before", models.JSONField(blank=True, null=True)),
                    ("after", models.JSONField(blank=True, null=True)),
                    ("prev_hash", models.CharField(max_length=64)),
                    ("hash", models.CharField(max_length=64, unique=True)),
                    ("actor", models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.PROTECT,
                                                related_name="+", to=settings.AUTH_USER_MODEL)),
                ],
                options={"ordering": ["-sequence"], "db_table": "governance_auditevent"},
            ),
        ]),
    ]
