"""Governance facts: policies per alias, change requests and their decisions, and the hash-chained audit trail."""
from dataclasses import dataclass

from django.conf import settings
from django.db import models

from registry.models import model_name_validator


@dataclass(frozen=True)
class Gate:
    """One policy gate: the policy field holding its threshold, the measured value's name, and which way passes."""

    threshold_field: str
    measure: str
    bound: str  # "max": the measure must be at most the threshold; "min": at least


# The one list of gates: policies, their API, the gate computation and the reports all read it.
GATES = (
    Gate("kl_mean_max", "kl_mean", "max"),
    Gate("kl_p99_max", "kl_p99", "max"),
    Gate("same_top1_min", "same_top1", "min"),
    Gate("ppl_ratio_max", "ppl_ratio", "max"),
    Gate("flip_rate_max", "flip_rate", "max"),
    # Task gates, measured by an evaluation on a labelled set (workers.Evaluation), not by the analysis.
    Gate("accuracy_drop_max", "accuracy_drop", "max"),  # reference accuracy minus candidate's, in points
    Gate("f1_relative_min", "f1_relative", "min"),  # candidate F1 / reference F1
)
GATE_THRESHOLD_FIELDS = tuple(gate.threshold_field for gate in GATES)
TASK_GATE_MEASURES = ("accuracy_drop", "f1_relative")
# Defaults from published llama.cpp quantization figures (perplexity/KL tables for Q4-class quantizations):
# mean KL <= 0.035, same top-1 >= 0.91, perplexity ratio <= 1.03.
DEFAULT_GATES = {"kl_mean_max": 0.035, "kl_p99_max": None, "same_top1_min": 0.91, "ppl_ratio_max": 1.03,
                 "flip_rate_max": None, "accuracy_drop_max": None, "f1_relative_min": None}
# The accuracy gate a change request gets when an evaluation dataset is named and the policy sets none: the
# "accuracy must not drop by more than 2 points after quantization" rule of bank validators (the EvalScope CMMLU check).
DEFAULT_ACCURACY_DROP_MAX = 2.0


class Policy(models.Model):
    model = models.ForeignKey("registry.RegisteredModel", on_delete=models.PROTECT, related_name="policies")
    alias = models.CharField(max_length=64)
    required_approvals = models.PositiveSmallIntegerField()
    kl_mean_max = models.FloatField(null=True, blank=True)
    kl_p99_max = models.FloatField(null=True, blank=True)
    same_top1_min = models.FloatField(null=True, blank=True)
    ppl_ratio_max = models.FloatField(null=True, blank=True)
    flip_rate_max = models.FloatField(null=True, blank=True)
    accuracy_drop_max = models.FloatField(null=True, blank=True)
    f1_relative_min = models.FloatField(null=True, blank=True)
    # The labelled set the task gates are measured on when a change request names none.
    eval_dataset = models.ForeignKey("registry.Dataset", null=True, blank=True, on_delete=models.PROTECT,
                                     related_name="+")
    allow_override = models.BooleanField(default=False)
    expiry_days = models.PositiveSmallIntegerField(default=7)
    # An alarm (Alertmanager or a health report) may roll this alias back without a person when this is set.
    auto_rollback = models.BooleanField(default=False)
    # Relative rise of the error rate over its baseline that a health report treats as an alarm (0.05 = 5 %).
    max_error_increase = models.FloatField(default=0.05)
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
        WITHDRAWN = "withdrawn"

    OPEN = (Status.ANALYSING, Status.PENDING, Status.BLOCKED, Status.STALE)

    model = models.ForeignKey("registry.RegisteredModel", on_delete=models.PROTECT, related_name="change_requests")
    alias = models.CharField(max_length=64)
    from_version = models.ForeignKey("registry.ModelVersion", null=True, blank=True, on_delete=models.PROTECT,
                                     related_name="+")
    to_version = models.ForeignKey("registry.ModelVersion", on_delete=models.PROTECT, related_name="change_requests")
    justification = models.TextField()
    requested_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    status = models.CharField(max_length=16, choices=Status.choices)
    analysis = models.ForeignKey("workers.Analysis", null=True, blank=True, on_delete=models.PROTECT,
                                 related_name="change_requests")
    dataset = models.ForeignKey("registry.Dataset", null=True, blank=True, on_delete=models.PROTECT,
                                related_name="+")
    # The task evaluation the accuracy / F1 gates come from, and the labelled set it runs on (None: no task gates).
    evaluation = models.ForeignKey("workers.Evaluation", null=True, blank=True, on_delete=models.PROTECT,
                                   related_name="change_requests")
    eval_dataset = models.ForeignKey("registry.Dataset", null=True, blank=True, on_delete=models.PROTECT,
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


class Alias(models.Model):
    """A named pointer (production, staging, ...) to one version of a model; moved only by governance."""

    model = models.ForeignKey("registry.RegisteredModel", on_delete=models.PROTECT, related_name="aliases")
    name = models.CharField(max_length=64, validators=[model_name_validator])
    version = models.ForeignKey("registry.ModelVersion", null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    since = models.DateTimeField(null=True, blank=True)
    # Versions deployed here through approved change requests, oldest first, minus those rolled back away from:
    # a plain rollback returns to the one below the top, so rolling back twice goes two steps back.
    deploy_stack = models.JSONField(default=list)

    class Meta:
        db_table = "registry_alias"  # the table it had when registry owned it: moving it changed no data
        ordering = ["model__name", "name"]
        verbose_name_plural = "aliases"
        constraints = [models.UniqueConstraint(fields=["model", "name"], name="alias_name_unique_per_model")]

    def __str__(self) -> str:
        return f"{self.model.name}@{self.name}"


class AliasChange(models.Model):
    class Kind(models.TextChoices):
        DEPLOY = "deploy"
        ROLLBACK = "rollback"

    alias = models.ForeignKey(Alias, on_delete=models.PROTECT, related_name="changes")
    kind = models.CharField(max_length=16, choices=Kind.choices)
    from_version = models.ForeignKey("registry.ModelVersion", null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    to_version = models.ForeignKey("registry.ModelVersion", on_delete=models.PROTECT, related_name="+")
    change_request = models.ForeignKey(ChangeRequest, null=True, blank=True, on_delete=models.PROTECT,
                                       related_name="alias_changes")
    actor = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    reason = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        db_table = "registry_aliaschange"  # append-only triggers (governance/0005) are attached to this table
        ordering = ["-created_at", "-id"]
