# Analyses moved here from registry: they are made by jobs. The table (registry_analysis) stays as it is; only
# Django's idea of which app owns it changes (registry/0006 drops it from registry's state).
import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ("registry", "0005_alias_plural"),
        ("workers", "0001_initial"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(state_operations=[
            migrations.CreateModel(
                name="Analysis",
                fields=[
                    ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                    ("params", models.JSONField(default=dict)),
                    ("result", models.JSONField(blank=True, null=True)),
                    ("plots", models.JSONField(default=list)),
                    ("created_at", models.DateTimeField(auto_now_add=True)),
                    ("candidate", models.ForeignKey(on_delete=django.db.models.deletion.PROTECT,
                                                    related_name="analyses_as_candidate", to="registry.modelversion")),
                    ("created_by", models.ForeignKey(on_delete=django.db.models.deletion.PROTECT, related_name="+",
                                                     to=settings.AUTH_USER_MODEL)),
                    ("dataset", models.ForeignKey(on_delete=django.db.models.deletion.PROTECT, related_name="analyses",
                                                  to="registry.dataset")),
                    ("job", models.OneToOneField(on_delete=django.db.models.deletion.PROTECT, related_name="analysis",
                                                 to="workers.job")),
                    ("reference", models.ForeignKey(on_delete=django.db.models.deletion.PROTECT,
                                                    related_name="analyses_as_reference", to="registry.modelversion")),
                ],
                options={"verbose_name_plural": "analyses", "ordering": ["-created_at"],
                         "db_table": "registry_analysis"},
            ),
        ]),
    ]
