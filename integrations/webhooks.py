"""Webhook subscriptions and deliveries: subscribe, publish an event to every subscription that wants it, and make
one delivery attempt (the Celery task in integrations.tasks calls it, and retries with back-off).

Signatures follow the scheme MLflow's (and Standard Webhooks') use: `v1,<base64 HMAC-SHA256>` over
"<delivery id>.<unix timestamp>.<body>" with the subscription's secret; receivers check it and refuse stale
timestamps. Each event goes to a subscription once (one delivery row per event and subscription); a delivery is
sent at least once, and every attempt carries the same event id, delivery id and body.
"""
import base64
import hashlib
import hmac
import json
import logging
import secrets
import time
from datetime import timedelta
from urllib.parse import urlsplit

from celery import current_app
from django.conf import settings
from django.core.serializers.json import DjangoJSONEncoder
from django.db import transaction
from django.utils import timezone
from kombu.exceptions import OperationalError

from foundation.audit import append_event
from foundation.errors import InvalidInput, NotFound, PermissionDenied
from integrations import webhook_transport
from integrations.encryption import decrypt_secret, encrypt_secret
from integrations.events import Event
from integrations.models import EVENT_TYPES, WebhookDelivery, WebhookSubscription

logger = logging.getLogger(__name__)

DELIVER_TASK = "integrations.deliver_webhook"
MIN_SECRET_LENGTH = 16


def may_manage_webhooks(user) -> bool:
    return bool(user and user.is_authenticated and (user.is_superuser or user.has_perm("integrations.manage_webhooks")))


def create_subscription(*, url: str, events: list[str], secret: str | None, actor) -> tuple[WebhookSubscription, str]:
    """Subscribe `url` to `events`; returns the subscription and its secret (generated when none was given)."""
    if not may_manage_webhooks(actor):
        raise PermissionDenied("Webhook subscriptions are managed by superusers (or holders of the "
                               "integrations.manage_webhooks permission).")
    unknown = sorted(set(events) - set(EVENT_TYPES))
    if not events or unknown:
        raise InvalidInput(f"Unknown events: {', '.join(unknown)}. Choose from: {', '.join(EVENT_TYPES)}."
                           if unknown else f"Name at least one event: {', '.join(EVENT_TYPES)}.", field="events")
    if secret is not None and len(secret) < MIN_SECRET_LENGTH:
        raise InvalidInput(f"The secret must be at least {MIN_SECRET_LENGTH} characters (or leave it out and one "
                           "is generated).", field="secret")
    webhook_transport.check_url(url)
    secret = secret or secrets.token_urlsafe(32)
    with transaction.atomic():
        subscription = WebhookSubscription.objects.create(
            url=url, events=sorted(set(events)), secret_encrypted=encrypt_secret(secret), created_by=actor)
        # The host only: some receivers (chat tools) carry a credential in the URL's path or query.
        append_event(actor=actor, action="webhook.subscribed", object_type="webhook", object_id=subscription.pk,
                     after={"host": urlsplit(url).hostname, "events": subscription.events})
    return subscription, secret


@transaction.atomic
def deactivate_subscription(*, subscription_id: int, actor) -> WebhookSubscription:
    """Stop sending to a subscription; its delivery log stays."""
    if not may_manage_webhooks(actor):
        raise PermissionDenied("Webhook subscriptions are managed by superusers.")
    subscription = WebhookSubscription.objects.select_for_update().filter(pk=subscription_id).first()
    if subscription is None:
        raise NotFound(f"No webhook subscription with id {subscription_id}.")
    if subscription.active:
        subscription.active = False
        subscription.save(update_fields=["active"])
        append_event(actor=actor, action="webhook.deactivated", object_type="webhook", object_id=subscription.pk,
                     before={"active": True}, after={"active": False})
    return subscription


def subscribed_types() -> set[str]:
    """Every event type some active subscription wants."""
    wanted: set[str] = set()
    for events in WebhookSubscription.objects.filter(active=True).values_list("events", flat=True):
        wanted.update(events)
    return wanted


def publish(events: list[Event]) -> list[int]:
    """Record a delivery per event and subscription that wants it, then queue them; returns the delivery ids."""
    if not events:
        return []
    created: list[int] = []
    now = timezone.now()
    with transaction.atomic():
        subscriptions = list(WebhookSubscription.objects.filter(active=True))
        for event in events:
            body = json.dumps({"id": str(event.id), "type": event.type, "time": now, "object": event.object,
                               "links": event.links}, cls=DjangoJSONEncoder, sort_keys=True, separators=(",", ":"))
            for subscription in subscriptions:
                if event.type not in subscription.events:
                    continue
                delivery, is_new = WebhookDelivery.objects.get_or_create(
                    subscription=subscription, event_id=event.id, defaults={"event_type": event.type, "body": body})
                if is_new:
                    created.append(delivery.pk)
    for delivery_id in created:
        _enqueue(delivery_id)
    return created


def _enqueue(delivery_id: int, countdown: float | None = None) -> None:
    # Sent by task name: the task module imports this one, never the other way round.
    try:
        current_app.send_task(DELIVER_TASK, args=[delivery_id], queue=settings.WEBHOOK_QUEUE, countdown=countdown)
    except (OperationalError, OSError):
        # The row stays pending; resend_pending_deliveries() (the beat task in integrations.tasks) sends it again.
        logger.exception("could not queue webhook delivery %s; it stays pending", delivery_id)


def signature(secret: str, *, delivery_id: str, timestamp: str, body: bytes) -> str:
    """The X-Registry-Signature value: v1,<base64 HMAC-SHA256 of "<delivery>.<timestamp>.<body>">."""
    digest = hmac.new(secret.encode(), f"{delivery_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def backoff_seconds(attempt: int, retry_after: int | None = None) -> float:
    """Seconds before attempt `attempt + 1`: base x 2^(attempt-1), at most the cap; a receiver's Retry-After wins
    when it asks for longer (within the cap)."""
    delay = min(settings.WEBHOOK_RETRY_BACKOFF_SECONDS * 2 ** (attempt - 1), settings.WEBHOOK_RETRY_BACKOFF_MAX_SECONDS)
    if retry_after:
        delay = max(delay, min(retry_after, settings.WEBHOOK_RETRY_BACKOFF_MAX_SECONDS))
    return delay


def attempt_delivery(*, delivery_id: int) -> float | None:
    """Send one delivery once; returns the seconds to wait before the next attempt, or None when it is done."""
    with transaction.atomic():
        delivery = (WebhookDelivery.objects.select_for_update(of=("self",)).select_related("subscription")
                    .filter(pk=delivery_id).first())
        if delivery is None or delivery.status in (WebhookDelivery.Status.SUCCEEDED, WebhookDelivery.Status.FAILED):
            return None
        if not delivery.subscription.active:
            delivery.status, delivery.last_error = WebhookDelivery.Status.FAILED, "the subscription was deactivated"
            delivery.save(update_fields=["status", "last_error"])
            return None
        delivery.attempts += 1
        delivery.last_attempt_at = timezone.now()
        delivery.save(update_fields=["attempts", "last_attempt_at"])
        subscription = delivery.subscription
    try:
        secret = decrypt_secret(subscription.secret_encrypted)
    except RuntimeError as error:
        delivery.status, delivery.last_error = WebhookDelivery.Status.FAILED, str(error)[:500]
        delivery.save(update_fields=["status", "last_error"])
        return None
    body = delivery.body.encode()
    timestamp = str(int(time.time()))
    delivery_key = str(delivery.delivery_id)
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "llm-registry-webhooks/1",
        "X-Registry-Event": delivery.event_type,
        "X-Registry-Delivery": delivery_key,
        "X-Registry-Timestamp": timestamp,
        "X-Registry-Signature": signature(secret, delivery_id=delivery_key, timestamp=timestamp, body=body),
    }
    answer = webhook_transport.post(subscription.url, body=body, headers=headers)
    retryable = answer.status is None or answer.status == 429 or answer.status >= 500
    delivery.response_code = answer.status
    delivery.next_attempt_at = None
    delay = None
    if answer.status is not None and 200 <= answer.status < 300:
        delivery.status, delivery.last_error, delivery.delivered_at = (WebhookDelivery.Status.SUCCEEDED, "",
                                                                       timezone.now())
    elif retryable and delivery.attempts < settings.WEBHOOK_MAX_ATTEMPTS:
        delay = backoff_seconds(delivery.attempts, answer.retry_after)
        delivery.status = WebhookDelivery.Status.RETRYING
        delivery.next_attempt_at = timezone.now() + timedelta(seconds=delay)
        delivery.last_error = answer.error or f"HTTP {answer.status}"
    else:
        delivery.status = WebhookDelivery.Status.FAILED
        delivery.last_error = (answer.error or (f"HTTP {answer.status} (redirects are not followed)"
                                                if 300 <= answer.status < 400 else f"HTTP {answer.status}"))
    delivery.save(update_fields=["status", "response_code", "last_error", "delivered_at", "next_attempt_at"])
    logger.info("webhook delivery %s (%s) attempt %d: %s", delivery.pk, delivery.event_type, delivery.attempts,
                delivery.status)
    return delay


def resend_pending_deliveries(*, older_than_seconds: int = 300) -> int:
    """Queue again deliveries whose message the broker lost (pending, or retrying past their next attempt)."""
    cutoff = timezone.now() - timedelta(seconds=older_than_seconds)
    stuck = list(WebhookDelivery.objects.filter(status=WebhookDelivery.Status.PENDING, created_at__lte=cutoff)
                 .values_list("pk", flat=True))
    stuck += list(WebhookDelivery.objects.filter(status=WebhookDelivery.Status.RETRYING, next_attempt_at__lte=cutoff)
                  .values_list("pk", flat=True))
    for delivery_id in stuck:
        _enqueue(delivery_id)
    return len(stuck)
