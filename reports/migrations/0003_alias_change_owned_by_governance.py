# AliasChange moved from registry to governance (same table): the foreign key's target changes in Django's state only.
import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ("reports", "0002_final_reports_are_immutable"),
        ("governance", "0006_aliases_owned_by_governance"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(state_operations=[
            migrations.AlterField(
                model_name="report",
                name="alias_change",
                field=models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.PROTECT,
                                        related_name="reports", to="governance.aliaschange"),
            ),
        ]),
    ]
