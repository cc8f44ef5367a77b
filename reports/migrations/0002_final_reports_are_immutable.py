"""A final report is a fact: once issued, its row is never changed or deleted (also against raw SQL).

Drafts may still change (each approver's signature replaces the stored PDF) and become final once; no report
row is ever deleted, so the history of drafts stays too.
"""
from django.db import migrations

IMMUTABLE = """
CREATE OR REPLACE FUNCTION reports_refuse_report_change() RETURNS trigger AS $$
BEGIN
    IF TG_OP = 'DELETE' OR TG_OP = 'TRUNCATE' THEN
        RAISE EXCEPTION 'reports are never deleted: % refused', TG_OP USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF OLD.status = 'final' THEN
        RAISE EXCEPTION 'report % is final and cannot be changed', OLD.id USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN NEW;
END $$ LANGUAGE plpgsql;

CREATE TRIGGER reports_report_immutable BEFORE UPDATE OR DELETE ON reports_report
    FOR EACH ROW EXECUTE FUNCTION reports_refuse_report_change();
CREATE TRIGGER reports_report_no_truncate BEFORE TRUNCATE ON reports_report
    FOR EACH STATEMENT EXECUTE FUNCTION reports_refuse_report_change();
ALTER TABLE reports_report ENABLE ALWAYS TRIGGER reports_report_immutable;
ALTER TABLE reports_report ENABLE ALWAYS TRIGGER reports_report_no_truncate;
"""

DROP = """
DROP TRIGGER IF EXISTS reports_report_no_truncate ON reports_report;
DROP TRIGGER IF EXISTS reports_report_immutable ON reports_report;
DROP FUNCTION IF EXISTS reports_refuse_report_change();
"""


class Migration(migrations.Migration):
    dependencies = [("reports", "0001_initial")]

    operations = [migrations.RunSQL(IMMUTABLE, DROP)]
