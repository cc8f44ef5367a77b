"""The four role groups, and database triggers that keep sealed versions immutable even against raw SQL."""
from django.db import migrations

ROLES = ("ml_engineer", "approver", "ops", "regulator")

SEALED_TRIGGERS = """
CREATE OR REPLACE FUNCTION registry_refuse_sealed_version_change() RETURNS trigger AS $$
BEGIN
    IF TG_OP = 'DELETE' AND OLD.status = 'ready' THEN
        RAISE EXCEPTION 'version % is sealed and cannot be deleted', OLD.id USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    IF TG_OP = 'UPDATE' AND OLD.status = 'ready' THEN
        RAISE EXCEPTION 'version % is sealed and cannot be changed', OLD.id USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    RETURN CASE WHEN TG_OP = 'DELETE' THEN OLD ELSE NEW END;
END $$ LANGUAGE plpgsql;

CREATE TRIGGER registry_sealed_version_immutable BEFORE UPDATE OR DELETE ON registry_modelversion
    FOR EACH ROW EXECUTE FUNCTION registry_refuse_sealed_version_change();
ALTER TABLE registry_modelversion ENABLE ALWAYS TRIGGER registry_sealed_version_immutable;

CREATE OR REPLACE FUNCTION registry_refuse_sealed_file_change() RETURNS trigger AS $$
DECLARE
    target_version bigint := CASE WHEN TG_OP = 'INSERT' THEN NEW.version_id ELSE OLD.version_id END;
BEGIN
    IF EXISTS (SELECT 1 FROM registry_modelversion WHERE id = target_version AND status = 'ready') THEN
        RAISE EXCEPTION 'files of sealed version % cannot be added, changed or removed', target_version
            USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    RETURN CASE WHEN TG_OP = 'DELETE' THEN OLD ELSE NEW END;
END $$ LANGUAGE plpgsql;

CREATE TRIGGER registry_sealed_files_immutable BEFORE INSERT OR UPDATE OR DELETE ON registry_versionfile
    FOR EACH ROW EXECUTE FUNCTION registry_refuse_sealed_file_change();
ALTER TABLE registry_versionfile ENABLE ALWAYS TRIGGER registry_sealed_files_immutable;
"""

DROP_SEALED_TRIGGERS = """
DROP TRIGGER IF EXISTS registry_sealed_files_immutable ON registry_versionfile;
DROP FUNCTION IF EXISTS registry_refuse_sealed_file_change();
DROP TRIGGER IF EXISTS registry_sealed_version_immutable ON registry_modelversion;
DROP FUNCTION IF EXISTS registry_refuse_sealed_version_change();
"""


def create_roles(apps, schema_editor):
    Group = apps.get_model("auth", "Group")
    for role in ROLES:
        Group.objects.get_or_create(name=role)


def remove_roles(apps, schema_editor):
    apps.get_model("auth", "Group").objects.filter(name__in=ROLES).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("registry", "0002_initial"),
        ("auth", "0012_alter_user_first_name_max_length"),
    ]

    operations = [
        migrations.RunPython(create_roles, remove_roles),
        migrations.RunSQL(SEALED_TRIGGERS, DROP_SEALED_TRIGGERS),
    ]
