"""Rows of the platform integrations: webhook subscriptions and their delivery log, the alarms received (and what
was done about each), and the last audit-chain check the metrics report."""
import uuid

from django.conf import settings
from django.db import models

# Every event a subscription may ask for (payload `type`, header X-Registry-Event).
EVENT_TYPES = (
    "version.sealed",
    "job.succeeded",
    "job.failed",
    "analysis.finished",
    "evaluation.finished",
    "change_request.opened",
    "change_request.blocked",
    "change_request.approved",
    "change_request.rejected",
    "change_request.deployed",
    "change_request.expired",
    "alias.rolled_back",
    "report.final",
    "audit.verification_failed",
)


class WebhookSubscription(models.Model):
    url = models.URLField(max_length=2000)
    events = models.JSONField(default=list)
    # The signing secret, encrypted with integrations.encryption (Fernet); never stored or logged in clear.
    secret_encrypted = models.TextField()
    active = models.BooleanField(default=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-id"]
        permissions = [("manage_webhooks", "Manage webhook subscriptions (platform team)")]

    def __str__(self) -> str:
        return f"webhook {self.pk} -> {self.url}"


class WebhookDelivery(models.Model):
    class Status(models.TextChoices):
        PENDING = "pending"
        RETRYING = "retrying"
        SUCCEEDED = "succeeded"
        FAILED = "failed"

    subscription = models.ForeignKey(WebhookSubscription, on_delete=models.CASCADE, related_name="deliveries")
    # The event's id (the same for every subscription it goes to; receivers de-duplicate on it) and this
    # delivery's own (X-Registry-Delivery, the same on every attempt).
    event_id = models.UUIDField()
    delivery_id = models.UUIDField(default=uuid.uuid4, unique=True)
    event_type = models.CharField(max_length=64)
    # The exact body sent, so every attempt sends (and signs) the same bytes.
    body = models.TextField()
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    attempts = models.PositiveSmallIntegerField(default=0)
    response_code = models.PositiveSmallIntegerField(null=True, blank=True)
    last_error = models.CharField(max_length=500, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    last_attempt_at = models.DateTimeField(null=True, blank=True)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    delivered_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-id"]
        verbose_name_plural = "webhook deliveries"
        constraints = [models.UniqueConstraint(fields=["subscription", "event_id"], name="one_delivery_per_event")]

    def __str__(self) -> str:
        return f"{self.event_type} to webhook {self.subscription_id} ({self.status})"


class Alarm(models.Model):
    """One alarm received (an Alertmanager alert or a health report) and what was done about it."""

    class Source(models.TextChoices):
        ALERTMANAGER = "alertmanager"
        HEALTH = "health"

    class Action(models.TextChoices):
        ROLLED_BACK = "rolled_back"
        IGNORED = "ignored"

    source = models.CharField(max_length=16, choices=Source.choices)
    # Alertmanager: the alert's fingerprint and start, which name it across repeated deliveries.
    fingerprint = models.CharField(max_length=128, blank=True)
    starts_at = models.CharField(max_length=64, blank=True)
    status = models.CharField(max_length=16)  # firing | resolved (a health report above its limit: firing)
    name = models.CharField(max_length=200, blank=True)
    model_name = models.CharField(max_length=100, blank=True)
    alias = models.CharField(max_length=64, blank=True)
    details = models.JSONField(default=dict)  # labels and annotations, or the reported error rates
    action = models.CharField(max_length=16, choices=Action.choices)
    reason = models.TextField()
    alias_change = models.ForeignKey("governance.AliasChange", null=True, blank=True, on_delete=models.PROTECT,
                                     related_name="+")
    received_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    received_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-id"]
        constraints = [
            # The same firing alert delivered again (Alertmanager repeats it) is one alarm: it rolls back once.
            models.UniqueConstraint(fields=["fingerprint", "starts_at"], name="one_alarm_per_firing_alert",
                                    condition=models.Q(source="alertmanager", status="firing")),
        ]

    def __str__(self) -> str:
        return f"{self.source} alarm {self.pk}: {self.name or self.model_name} ({self.action})"


class AuditCheck(models.Model):
    """A verification of the audit chain against its newest anchor, as the metrics report it."""

    ok = models.BooleanField()
    events = models.BigIntegerField()
    first_bad = models.BigIntegerField(null=True, blank=True)
    reason = models.CharField(max_length=200, blank=True)
    anchor_sequence = models.BigIntegerField(null=True, blank=True)
    anchor_at = models.DateTimeField(null=True, blank=True)
    checked_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-id"]
