"""The audit trail's rows: one event per state change anywhere in the system, hash-chained (foundation.audit)."""
from django.conf import settings
from django.db import models


class AuditEvent(models.Model):
    """One state change anywhere in the system. Never updated or deleted: triggers refuse it (migration governance/0002, which made the table)."""

    sequence = models.BigIntegerField(unique=True)
    occurred_at = models.DateTimeField()
    actor = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    # The username as it was when the event happened, so the trail reads the same if the user is renamed.
    actor_name = models.CharField(max_length=150, blank=True)
    action = models.CharField(max_length=64)
    model_name = models.CharField(max_length=100, blank=True, db_index=True)
    object_type = models.CharField(max_length=64)
    object_id = models.CharField(max_length=64)
    before = models.JSONField(null=True, blank=True)
    after = models.JSONField(null=True, blank=True)
    prev_hash = models.CharField(max_length=64)
    hash = models.CharField(max_length=64, unique=True)

    class Meta:
        db_table = "governance_auditevent"  # its append-only triggers (governance/0002) are attached to this table
        ordering = ["-sequence"]

    def __str__(self) -> str:
        return f"#{self.sequence} {self.action} {self.object_type}:{self.object_id}"
