# Analyses now belong to workers and aliases to governance (their tables unchanged): drop them from registry's state.
from django.db import migrations


class Migration(migrations.Migration):

    dependencies = [
        ("registry", "0005_alias_plural"),
        ("workers", "0002_analysis_owned_by_workers"),
        ("governance", "0006_aliases_owned_by_governance"),
        ("reports", "0003_alias_change_owned_by_governance"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(state_operations=[
            migrations.DeleteModel(name="AliasChange"),
            migrations.DeleteModel(name="Alias"),
            migrations.DeleteModel(name="Analysis"),
        ]),
    ]
