"""Signed reports, the approvers' signing identities, and regulators' e-mail subscriptions.

A change-impact report is one PDF that grows by incremental updates: rendered and certified by the organisation
when the gates are known (draft), signed by each approver, and closed by the organisation's issue stamp at
deployment (final), when it is stored under object lock. A final report row is never changed or deleted:
a trigger (migration 0002) refuses it, also against raw SQL.
"""
from django.conf import settings
from django.db import models


class Report(models.Model):
    class Kind(models.TextChoices):
        CHANGE_IMPACT = "change_impact", "Change-impact"
        ROLLBACK = "rollback", "Rollback"

    class Status(models.TextChoices):
        DRAFT = "draft"
        FINAL = "final"
        # A draft of an earlier round: the alias moved under the request and its gates were recomputed.
        SUPERSEDED = "superseded"

    kind = models.CharField(max_length=16, choices=Kind.choices)
    model = models.ForeignKey("registry.RegisteredModel", on_delete=models.PROTECT, related_name="reports")
    change_request = models.ForeignKey("governance.ChangeRequest", null=True, blank=True, on_delete=models.PROTECT,
                                       related_name="reports")
    # The change request's round the draft was rendered for (its gates and quorum); 0 for rollbacks.
    round = models.PositiveSmallIntegerField(default=0)
    alias_change = models.ForeignKey("governance.AliasChange", null=True, blank=True, on_delete=models.PROTECT,
                                     related_name="reports")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.DRAFT)
    # The current PDF: drafts are plain objects, replaced by a new key at each signature; the final one is locked.
    object_key = models.CharField(max_length=1024)
    storage_version_id = models.CharField(max_length=256, blank=True)
    sha256 = models.CharField(max_length=64)
    # [{field, label}] of the empty signature fields the draft was certified with, in signing order.
    signature_fields = models.JSONField(default=list)
    # [{field, user_id, username, decision_id, signed_at}] of the fields signed so far.
    signatures = models.JSONField(default=list)
    # The audit chain's head when the report was issued (final: at finalisation; draft: at rendering).
    audit_head_sequence = models.BigIntegerField(null=True, blank=True)
    audit_head_hash = models.CharField(max_length=64, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    finalised_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.UniqueConstraint(fields=["change_request", "round"],
                                    condition=models.Q(kind="change_impact"), name="one_report_per_request_round"),
            models.UniqueConstraint(fields=["alias_change"], condition=models.Q(kind="rollback"),
                                    name="one_report_per_rollback"),
            models.CheckConstraint(
                condition=(models.Q(kind="change_impact", change_request__isnull=False)
                           | models.Q(kind="rollback", alias_change__isnull=False)),
                name="report_names_what_it_reports_on",
            ),
            models.CheckConstraint(
                condition=~models.Q(status="final") | (models.Q(finalised_at__isnull=False) & ~models.Q(sha256="")),
                name="final_report_has_digest_and_time",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} report {self.pk} ({self.status})"

    @property
    def is_final(self) -> bool:
        return self.status == self.Status.FINAL

    @property
    def filename(self) -> str:
        return f"{self.model.name}-{self.kind.replace('_', '-')}-report-{self.pk}.pdf"


class SigningIdentity(models.Model):
    """A person's signing certificate, issued by the organisation root the first time they sign a report.

    The PKCS#12 holds the private key encrypted with settings.REPORT_PKI_PASSPHRASE (PBKDF2 + AES-256), so the
    database alone never yields a usable key."""

    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="signing_identity")
    common_name = models.CharField(max_length=200)
    pkcs12 = models.BinaryField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        verbose_name_plural = "signing identities"

    def __str__(self) -> str:
        return f"signing identity of {self.common_name}"


class ReportSubscription(models.Model):
    """A regulator who wants final reports by e-mail: for one model, or for every model when `model` is empty."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="report_subscriptions")
    model = models.ForeignKey("registry.RegisteredModel", null=True, blank=True, on_delete=models.CASCADE,
                              related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["user", "model"], nulls_distinct=False,
                                               name="one_subscription_per_user_and_model")]

    def __str__(self) -> str:
        return f"{self.user} <- {self.model or 'all models'}"


class ReportDelivery(models.Model):
    """One e-mail sent: what makes delivery idempotent when the task runs twice."""

    report = models.ForeignKey(Report, on_delete=models.PROTECT, related_name="deliveries")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    email = models.EmailField()
    sent_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["report", "user"], name="one_delivery_per_report_and_user")]
