# Aliases and their history moved here from registry (governance moves them); the audit trail moved to foundation.
# Tables, constraints and triggers stay as they are: these operations change only Django's idea of the owners.
import django.core.validators
import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ("governance", "0005_decisions_append_only"),
        ("foundation", "0001_initial"),
        ("workers", "0002_analysis_owned_by_workers"),
        ("registry", "0005_alias_plural"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(state_operations=[
            migrations.DeleteModel(name="AuditEvent"),
            migrations.AlterField(
                model_name="changerequest",
                name="analysis",
                field=models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.PROTECT,
                                        related_name="change_requests", to="workers.analysis"),
            ),
            migrations.CreateModel(
                name="Alias",
                fields=[
                    ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                    ("name", models.CharField(max_length=64, validators=[django.core.validators.RegexValidator(
                        "^[a-z0-9][a-z0-9._-]{0,99}$",
                        "Use 1-100 characters: lowercase letters, digits, '.', '_' or '-', starting with a letter "
                        "or digit.")])),
                    ("since", models.DateTimeField(blank=True, null=True)),
                    ("deploy_stack", models.JSONField(default=list)),
                    ("model", models.ForeignKey(on_delete=django.db.models.deletion.PROTECT, related_name="aliases",
                                                to="registry.registeredmodel")),
                    ("version", models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.PROTECT,
                                                  related_name="+", to="registry.modelversion")),
                ],
                options={"ordering": ["model__name", "name"], "verbose_name_plural": "aliases",
                         "db_table": "registry_alias"},
            ),
            migrations.AddConstraint(
                model_name="alias",
                constraint=models.UniqueConstraint(fields=("model", "name"), name="alias_name_unique_per_model"),
            ),
            migrations.CreateModel(
                name="AliasChange",
                fields=[
                    ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                    ("kind", models.CharField(choices=[("deploy", "Deploy"), ("rollback", "Rollback")], max_length=16)),
                    ("reason", models.TextField(blank=True)),
                    ("created_at", models.DateTimeField(auto_now_add=True)),
                    ("actor", models.ForeignKey(on_delete=django.db.models.deletion.PROTECT, related_name="+",
                                                to=settings.AUTH_USER_MODEL)),
                    ("alias", models.ForeignKey(on_delete=django.db.models.deletion.PROTECT, related_name="changes",
                                                to="governance.alias")),
                    ("change_request", models.ForeignKey(blank=True, null=True,
                                                         on_delete=django.db.models.deletion.PROTECT,
                                                         related_name="alias_changes", to="governance.changerequest")),
                    ("from_version", models.ForeignKey(blank=True, null=True,
                                                       on_delete=django.db.models.deletion.PROTECT, related_name="+",
                                                       to="registry.modelversion")),
                    ("to_version", models.ForeignKey(on_delete=django.db.models.deletion.PROTECT, related_name="+",
                                                     to="registry.modelversion")),
                ],
                options={"ordering": ["-created_at", "-id"], "db_table": "registry_aliaschange"},
            ),
        ]),
    ]
