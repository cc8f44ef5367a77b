"""Checks of the audit chain against its newest anchor, kept so that metrics can report the result and the anchor's
age without walking the chain at every scrape; a check that fails (after one that passed) is announced to webhook
subscribers as audit.verification_failed."""
from datetime import datetime, timedelta

from django.db import transaction
from django.utils import timezone

from foundation.anchoring import verify_anchored_chain
from integrations import events, webhooks
from integrations.models import AuditCheck


def check_audit_chain() -> AuditCheck:
    """Verify the whole chain now and record the result."""
    result, anchor = verify_anchored_chain()
    anchor_at = datetime.fromisoformat(anchor["occurred_at"]) if anchor and anchor.get("occurred_at") else None
    previous = AuditCheck.objects.order_by("-id").first()
    with transaction.atomic():
        check = AuditCheck.objects.create(ok=result.ok, events=result.events, first_bad=result.first_bad,
                                          reason=result.reason[:200], anchor_sequence=anchor and anchor["sequence"],
                                          anchor_at=anchor_at)
    if not check.ok and (previous is None or previous.ok):
        webhooks.publish([events.audit_verification_failed_event(check)])
    return check


def recent_audit_check(*, max_age_seconds: int) -> AuditCheck:
    """The newest check, made now when none is younger than `max_age_seconds`."""
    latest = AuditCheck.objects.order_by("-id").first()
    if latest is None or latest.checked_at < timezone.now() - timedelta(seconds=max_age_seconds):
        return check_audit_chain()
    return latest
