"""A failed audit-chain verification: the metrics say so and webhook subscribers are told (once, when it starts
failing)."""
import json

import pytest
from django.db import connection, transaction
from django.test import Client

from foundation.audit import append_event
from foundation.models import AuditEvent
from integrations import audit_checks, webhooks
from integrations.models import WebhookDelivery
from tests.integrations.test_metrics import sample

pytestmark = pytest.mark.django_db


def _sql(statement, params=()):
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
        cursor.execute(statement, params)


def test_a_broken_chain_is_reported_by_metrics_and_webhooks(engineer, superuser, settings):
    settings.WEBHOOK_ALLOW_PRIVATE_NETWORKS = True
    settings.METRICS_TOKEN = "audit-metrics-token-0123456789"
    settings.METRICS_AUDIT_VERIFY_SECONDS = 0
    webhooks.create_subscription(url="http://127.0.0.1:9/hooks", events=["audit.verification_failed"],
                                 secret="audit-hook-secret-0123", actor=superuser)
    with transaction.atomic():
        for number in range(3):
            append_event(actor=engineer, action="test.event", object_type="thing", object_id=number,
                         after={"n": number})
    assert audit_checks.check_audit_chain().ok
    second = AuditEvent.objects.order_by("sequence")[1]
    _sql("ALTER TABLE governance_auditevent DISABLE TRIGGER USER")
    _sql("UPDATE governance_auditevent SET after = %s WHERE sequence = %s", ['{"n": 999}', second.sequence])
    for trigger in ("governance_audit_no_update_delete", "governance_audit_no_truncate"):
        _sql(f"ALTER TABLE governance_auditevent ENABLE ALWAYS TRIGGER {trigger}")

    text = Client(HTTP_AUTHORIZATION="Bearer audit-metrics-token-0123456789").get("/metrics").content.decode()
    assert sample(text, "registry_audit_chain_ok") == 0
    audit_checks.check_audit_chain()  # still failing: no second announcement
    delivery = WebhookDelivery.objects.get()
    payload = json.loads(delivery.body)
    assert payload["type"] == "audit.verification_failed" and payload["object"]["first_bad"] == second.sequence
    assert payload["links"]["verification"].endswith("/api/v1/audit-events/verification")
