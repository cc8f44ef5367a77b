# Every model belongs to a team. Models registered before teams existed go to a personal team of the user who
# registered them (named after that user), which is what a creator in no team gets from now on as well.
import re

import django.core.validators
import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models


def personal_teams_for_existing_models(apps, schema_editor):
    Team = apps.get_model("registry", "Team")
    RegisteredModel = apps.get_model("registry", "RegisteredModel")
    for model in RegisteredModel.objects.select_related("created_by"):
        slug = re.sub(r"[^a-z0-9._-]+", "-", model.created_by.username.lower()).strip("-._")[:100]
        team, _ = Team.objects.get_or_create(name=slug or "personal")
        team.members.add(model.created_by)
        RegisteredModel.objects.filter(pk=model.pk).update(team=team)


class Migration(migrations.Migration):

    dependencies = [
        ("registry", "0006_analyses_and_aliases_moved_out"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.CreateModel(
            name="Team",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("name", models.CharField(max_length=100, unique=True, validators=[django.core.validators.RegexValidator(
                    "^[a-z0-9][a-z0-9._-]{0,99}$",
                    "Use 1-100 characters: lowercase letters, digits, '.', '_' or '-', starting with a letter or "
                    "digit.")])),
                ("created_at", models.DateTimeField(auto_now_add=True)),
                ("members", models.ManyToManyField(blank=True, related_name="model_teams",
                                                   to=settings.AUTH_USER_MODEL)),
            ],
            options={"ordering": ["name"]},
        ),
        migrations.AddField(
            model_name="registeredmodel",
            name="team",
            field=models.ForeignKey(null=True, on_delete=django.db.models.deletion.PROTECT, related_name="models",
                                    to="registry.team"),
        ),
        migrations.RunPython(personal_teams_for_existing_models, migrations.RunPython.noop),
        migrations.AlterField(
            model_name="registeredmodel",
            name="team",
            field=models.ForeignKey(on_delete=django.db.models.deletion.PROTECT, related_name="models",
                                    to="registry.team"),
        ),
    ]
