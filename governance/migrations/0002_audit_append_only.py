"""The audit trail is append-only in the database itself: UPDATE, DELETE and TRUNCATE are refused by triggers
that fire ALWAYS (so also under session_replication_role = replica, the usual way to skip triggers)."""
from django.db import migrations

APPEND_ONLY = """
CREATE OR REPLACE FUNCTION governance_refuse_audit_change() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION 'the audit trail is append-only: % refused', TG_OP USING ERRCODE = 'insufficient_privilege';
END $$ LANGUAGE plpgsql;

CREATE TRIGGER governance_audit_no_update_delete BEFORE UPDATE OR DELETE ON governance_auditevent
    FOR EACH ROW EXECUTE FUNCTION governance_refuse_audit_change();
CREATE TRIGGER governance_audit_no_truncate BEFORE TRUNCATE ON governance_auditevent
    FOR EACH STATEMENT EXECUTE FUNCTION governance_refuse_audit_change();
ALTER TABLE governance_auditevent ENABLE ALWAYS TRIGGER governance_audit_no_update_delete;
ALTER TABLE governance_auditevent ENABLE ALWAYS TRIGGER governance_audit_no_truncate;
"""

DROP_APPEND_ONLY = """
DROP TRIGGER IF EXISTS governance_audit_no_truncate ON governance_auditevent;
DROP TRIGGER IF EXISTS governance_audit_no_update_delete ON governance_auditevent;
DROP FUNCTION IF EXISTS governance_refuse_audit_change();
"""


class Migration(migrations.Migration):
    dependencies = [("governance", "0001_initial")]

    operations = [migrations.RunSQL(APPEND_ONLY, DROP_APPEND_ONLY)]
