"""Decisions and alias history are facts: once written, never changed or removed (also against raw SQL)."""
from django.db import migrations

APPEND_ONLY = """
CREATE OR REPLACE FUNCTION governance_refuse_history_change() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION '% is append-only: % refused', TG_TABLE_NAME, TG_OP USING ERRCODE = 'insufficient_privilege';
END $$ LANGUAGE plpgsql;

CREATE TRIGGER governance_decision_append_only BEFORE UPDATE OR DELETE ON governance_decision
    FOR EACH ROW EXECUTE FUNCTION governance_refuse_history_change();
CREATE TRIGGER governance_decision_no_truncate BEFORE TRUNCATE ON governance_decision
    FOR EACH STATEMENT EXECUTE FUNCTION governance_refuse_history_change();
ALTER TABLE governance_decision ENABLE ALWAYS TRIGGER governance_decision_append_only;
ALTER TABLE governance_decision ENABLE ALWAYS TRIGGER governance_decision_no_truncate;

CREATE TRIGGER registry_aliaschange_append_only BEFORE UPDATE OR DELETE ON registry_aliaschange
    FOR EACH ROW EXECUTE FUNCTION governance_refuse_history_change();
ALTER TABLE registry_aliaschange ENABLE ALWAYS TRIGGER registry_aliaschange_append_only;
"""

DROP = """
DROP TRIGGER IF EXISTS registry_aliaschange_append_only ON registry_aliaschange;
DROP TRIGGER IF EXISTS governance_decision_no_truncate ON governance_decision;
DROP TRIGGER IF EXISTS governance_decision_append_only ON governance_decision;
DROP FUNCTION IF EXISTS governance_refuse_history_change();
"""


class Migration(migrations.Migration):
    dependencies = [
        ("governance", "0004_changerequest_analysis_changerequest_dataset_and_more"),
        ("registry", "0004_alias_aliaschange_analysis_and_more"),
    ]

    operations = [migrations.RunSQL(APPEND_ONLY, DROP)]
