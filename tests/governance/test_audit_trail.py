"""The audit trail: append-only in the database, hash-chained, anchored in object-locked storage."""
import pytest
from django.db import DatabaseError, connection, transaction

from foundation.anchoring import anchor_chain_head, latest_anchor
from foundation.audit import append_event, verify_chain
from foundation.models import AuditEvent
from tests.conftest import client_for

pytestmark = pytest.mark.django_db


@pytest.fixture
def chain(engineer):
    with transaction.atomic():
        for number in range(5):
            append_event(actor=engineer, action="test.event", object_type="thing", object_id=number,
                         model_name="credit-llm", before={"n": number - 1}, after={"n": number, "x": 0.1 * number})
    return AuditEvent.objects.order_by("sequence")


def _sql(statement, params=()):
    with transaction.atomic(), connection.cursor() as cursor:
        # The test's own inserts leave deferred FK checks pending, which would block ALTER/TRUNCATE.
        cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
        cursor.execute(statement, params)


def _reenable_triggers():
    for trigger in ("governance_audit_no_update_delete", "governance_audit_no_truncate"):
        _sql(f"ALTER TABLE governance_auditevent ENABLE ALWAYS TRIGGER {trigger}")


@pytest.mark.parametrize("statement", [
    "UPDATE governance_auditevent SET action = 'forged'",
    "DELETE FROM governance_auditevent",
    "TRUNCATE governance_auditevent CASCADE",
])
def test_changing_the_trail_is_refused_even_for_a_superuser(chain, statement):
    with connection.cursor() as cursor:
        cursor.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
        assert cursor.fetchone()[0] is True
    with pytest.raises(DatabaseError, match="append-only"):
        _sql(statement)
    assert AuditEvent.objects.count() == 5


def test_changing_the_trail_is_refused_for_an_unprivileged_application_role(chain):
    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'registry_app_test') "
                       "THEN CREATE ROLE registry_app_test NOSUPERUSER; END IF; END $$")
        cursor.execute("GRANT SELECT, INSERT, UPDATE, DELETE ON governance_auditevent TO registry_app_test")
        cursor.execute("SET LOCAL ROLE registry_app_test")
        cursor.execute("UPDATE governance_auditevent SET action = 'forged'")


def test_triggers_stay_active_in_replica_mode(chain):
    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SET LOCAL session_replication_role = replica")
        cursor.execute("DELETE FROM governance_auditevent")


def test_untouched_chain_verifies(chain):
    result = verify_chain()
    assert result.ok and result.events == 5 and result.first_bad is None


def test_events_of_any_content_link_and_verify(engineer):
    """The database links and hashes each event (foundation/0002); verification recomputes the same bytes."""
    awkward = [None, {"reason": "Zürich desk — 信用 \u2028 \"quoted\" \\ back"}, {"prev_hash": "f" * 64, "sequence": 1},
               {"nested": {"b": [1, 2.5, None, True], "a": {"z": -0.0001}}}, {"big": 10**18, "small": 1e-12}]
    with transaction.atomic():
        events = [append_event(actor=engineer if index % 2 else None, action="test.awkward", object_type="thing",
                               object_id=index, before=value, after=value)
                  for index, value in enumerate(awkward)]
    assert [e.sequence for e in events] == [1, 2, 3, 4, 5]
    assert all(later.prev_hash == earlier.hash for earlier, later in zip(events, events[1:]))
    stored = AuditEvent.objects.get(sequence=2)
    assert (stored.actor, stored.after, stored.hash) == (engineer, awkward[1], events[1].hash)
    assert verify_chain().ok


def test_edit_with_triggers_disabled_is_named_by_verification(chain, regulator):
    third = chain[2]
    _sql("ALTER TABLE governance_auditevent DISABLE TRIGGER USER")
    _sql("UPDATE governance_auditevent SET after = %s WHERE sequence = %s", ['{"n": 999}', third.sequence])
    _reenable_triggers()
    result = client_for(regulator).get("/api/v1/audit-events/verification").json()
    assert result["ok"] is False and result["first_bad"] == third.sequence


def test_deleted_tail_is_detected_by_the_storage_anchor(chain):
    anchor = anchor_chain_head()
    assert anchor["sequence"] == chain.last().sequence and latest_anchor()["hash"] == anchor["hash"]
    _sql("ALTER TABLE governance_auditevent DISABLE TRIGGER USER")
    _sql("DELETE FROM governance_auditevent WHERE sequence >= %s", [chain[3].sequence])
    _reenable_triggers()
    assert verify_chain().ok  # what is left is internally consistent...
    result = verify_chain(expected_head=(anchor["sequence"], anchor["hash"]))
    assert not result.ok and result.first_bad == anchor["sequence"] and "deleted" in result.reason


def test_verification_does_not_depend_on_the_session_time_zone(chain):
    with connection.cursor() as cursor:
        cursor.execute("SET TIME ZONE 'Asia/Kathmandu'")
    try:
        assert verify_chain().ok
    finally:
        with connection.cursor() as cursor:
            cursor.execute("SET TIME ZONE 'UTC'")


def test_registry_changes_are_in_the_trail_newest_first(engineer_api, regulator):
    engineer_api.post("/api/v1/models/", {"name": "credit-llm"}, format="json")
    engineer_api.post("/api/v1/models/credit-llm/versions/", {}, format="json")
    events = client_for(regulator).get("/api/v1/audit-events/?model=credit-llm").json()
    assert [e["action"] for e in events] == ["version.created", "model.created"]
    assert events[0]["prev_hash"] == events[1]["hash"] and events[1]["actor"] == "alice"


def test_manage_verify_audit_reports_the_first_bad_event(chain):
    from django.core.management import CommandError, call_command

    call_command("verify_audit")
    _sql("ALTER TABLE governance_auditevent DISABLE TRIGGER USER")
    _sql("UPDATE governance_auditevent SET actor_name = 'eve' WHERE sequence = %s", [chain[1].sequence])
    _reenable_triggers()
    with pytest.raises(CommandError, match=f"event {chain[1].sequence}"):
        call_command("verify_audit")
