"""Integrations listen to what happened without the lower floors knowing: every audit row appended (each state
change appends one) and every report that turns final become webhook events, published after the transaction
that made the change commits (a change that rolled back announces nothing). A failure here is logged and never
undoes or fails the change it was told about."""
import logging

from django.db import transaction
from django.db.models.signals import post_save

from foundation.models import AuditEvent
from integrations import events, webhooks
from reports.models import Report

logger = logging.getLogger(__name__)


def on_audit_event_saved(sender, instance: AuditEvent, created: bool, **_) -> None:
    if created and events.possible_types(instance.action):
        transaction.on_commit(lambda: _publish_audit_event(instance.pk), robust=True)


def _publish_audit_event(audit_event_id: int) -> None:
    wanted = webhooks.subscribed_types()
    if not wanted:
        return
    audit_event = AuditEvent.objects.filter(pk=audit_event_id).first()
    if audit_event is None or not wanted.intersection(events.possible_types(audit_event.action)):
        return
    webhooks.publish(events.events_for_audit_event(audit_event, wanted))


def on_report_saved(sender, instance, created: bool, update_fields=None, **_) -> None:
    # A final report is never changed again (a database trigger refuses it), so this fires once per report.
    if instance.status == "final" and (created or (update_fields and "status" in update_fields)):
        transaction.on_commit(lambda: _publish_report_final(instance.pk), robust=True)


def _publish_report_final(report_id: int) -> None:
    if "report.final" in webhooks.subscribed_types():
        webhooks.publish([events.report_final_event(report_id)])


def connect() -> None:

    post_save.connect(on_audit_event_saved, sender=AuditEvent, dispatch_uid="integrations.audit_event")
    post_save.connect(on_report_saved, sender=Report, dispatch_uid="integrations.report")
