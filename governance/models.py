"""Governance facts: policies per alias, change requests and their decisions, and the hash-chained audit trail."""
from django.conf import settings
from django.db import models

# Defaults from published llama.cpp quantization figures (perplexity/KL tables for Q4-class quantizations):
# mean KL <= 0.035, same top-1 >= 0.91, perplexity ratio <= 1.03.
DEFAULT_GATES = {"kl_mean_max": 0.035, "kl_p99_max": None, "same_top1_min": 0.91, "ppl_ratio_max": 1.03,
                 "flip_rate_max": None}


class Policy(models.Model):
    model = models.ForeignKey("registry.RegisteredModel", on_delete=models.PROTECT, related_name="policies")
    alias = models.CharField(max_length=64)
    required_approvals = models.PositiveSmallIntegerField()
    kl_mean_max = models.FloatField(null=True, blank=True)
    kl_p99_max = models.FloatField(null=True, blank=True)
    same_top1_min = models.FloatField(null=True, blank=True)
    ppl_ratio_max = models.FloatField(null=True, blank=True)
    flip_rate_max = models.FloatField(null=True, blank=True)
    allow_override = models.BooleanField(default=False)
    expiry_days = models.PositiveSmallIntegerField(default=7)
    updated_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name_plural = "policies"
        constraints = [
            models.UniqueConstraint(fields=["model", "alias"], name="policy_unique_per_alias"),
            models.CheckConstraint(condition=models.Q(required_approvals__gte=1), name="policy_needs_an_approval"),
        ]

    def __str__(self) -> str:
        return f"policy {self.model.name}@{self.alias}"


class ChangeRequest(models.Model):
    class Status(models.TextChoices):
        ANALYSING = "analysing"
        PENDING = "pending"
        BLOCKED = "blocked"
        APPROVED = "approved"
        DEPLOYED = "deployed"
        REJECTED = "rejected"
        EXPIRED = "expired"
        STALE = "stale"

    OPEN = (Status.ANALYSING, Status.PENDING, Status.BLOCKED, Status.STALE)

    model = models.ForeignKey("registry.RegisteredModel", on_delete=models.PROTECT, related_name="change_requests")
    alias = models.CharField(max_length=64)
    from_version = models.ForeignKey("registry.ModelVersion", null=True, blank=True, on_delete=models.PROTECT,
                                     related_name="+")
    to_version = models.ForeignKey("registry.ModelVersion", on_delete=models.PROTECT, related_name="change_requests")
    justification = models.TextField()
    requested_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    status = models.CharField(max_length=16, choices=Status.choices)
    analysis = models.ForeignKey("registry.Analysis", null=True, blank=True, on_delete=models.PROTECT,
                                 related_name="change_requests")
    dataset = models.ForeignKey("registry.Dataset", null=True, blank=True, on_delete=models.PROTECT,
                                related_name="+")
    gates = models.JSONField(default=list)
    # The policy as it stood when the gates were computed: what the approvers are asked to sign against.
    policy_snapshot = models.JSONField(default=dict)
    required_approvals = models.PositiveSmallIntegerField()
    override = models.BooleanField(default=False)
    # Incremented when the alias moves under a pending request: decisions of earlier rounds no longer count.
    round = models.PositiveSmallIntegerField(default=1)
    status_reason = models.TextField(blank=True)
    expires_at = models.DateTimeField()
    created_at = models.DateTimeField(auto_now_add=True)
    deployed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"change request {self.pk}: {self.model.name}@{self.alias} -> v{self.to_version.number}"


class Decision(models.Model):
    class Verdict(models.TextChoices):
        APPROVE = "approve"
        REJECT = "reject"

    change_request = models.ForeignKey(ChangeRequest, on_delete=models.PROTECT, related_name="decisions")
    decided_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    decision = models.CharField(max_length=8, choices=Verdict.choices)
    comment = models.TextField(blank=True)
    round = models.PositiveSmallIntegerField(default=1)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["created_at"]
        constraints = [
            models.UniqueConstraint(fields=["change_request", "decided_by", "round"],
                                    name="one_decision_per_person_per_round"),
        ]


class AuditEvent(models.Model):
    """One state change anywhere in the system. Never updated or deleted: triggers refuse it (migration 0002)."""

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
        ordering = ["-sequence"]

    def __str__(self) -> str:
        return f"#{self.sequence} {self.action} {self.object_type}:{self.object_id}"
