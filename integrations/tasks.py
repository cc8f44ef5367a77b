"""Celery tasks of the integrations: thin, they take ids and call integrations.webhooks."""
from celery import shared_task

from integrations import audit_checks, webhooks


@shared_task(name=webhooks.DELIVER_TASK, bind=True, acks_late=True, ignore_result=True, max_retries=None)
def deliver_webhook(self, delivery_id: int) -> None:
    """One attempt; a timeout, a refused connection, 429 or 5xx is tried again after an exponential back-off
    (webhooks.attempt_delivery counts attempts and gives up after WEBHOOK_MAX_ATTEMPTS)."""
    delay = webhooks.attempt_delivery(delivery_id=delivery_id)
    if delay is not None:
        raise self.retry(countdown=delay)


@shared_task(name="integrations.resend_pending_deliveries", ignore_result=True)
def resend_pending_deliveries() -> None:
    """Periodic (beat): queue again deliveries whose broker message was lost."""
    webhooks.resend_pending_deliveries()


@shared_task(name="integrations.verify_audit_chain", ignore_result=True)
def verify_audit_chain() -> None:
    """Periodic (beat): verify the audit chain against its newest anchor; a failure is sent to webhooks."""
    audit_checks.check_audit_chain()
