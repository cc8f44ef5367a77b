"""Registered models, their immutable versions, the files in object storage, datasets and lineage.

Rows here change only through registry.services. Sealed versions and their files are frozen by database
triggers (migration 0002) as well as by the services, so not even raw SQL edits a sealed version.
"""
from django.conf import settings
from django.core.validators import RegexValidator
from django.db import models

MODEL_NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,99}$"
model_name_validator = RegexValidator(
    MODEL_NAME_PATTERN,
    "Use 1-100 characters: lowercase letters, digits, '.', '_' or '-', starting with a letter or digit.",
)


class Team(models.Model):
    """The people who own models: only its ml_engineer members write to the team's models."""

    name = models.CharField(max_length=100, unique=True, validators=[model_name_validator])
    members = models.ManyToManyField(settings.AUTH_USER_MODEL, related_name="model_teams", blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class RegisteredModel(models.Model):
    name = models.CharField(max_length=100, unique=True, validators=[model_name_validator])
    description = models.TextField(blank=True)
    team = models.ForeignKey(Team, on_delete=models.PROTECT, related_name="models")
    # Version numbers are handed out from this counter under a row lock, so a number is never reused.
    last_version_number = models.PositiveIntegerField(default=0)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]
        verbose_name = "model"

    def __str__(self) -> str:
        return self.name


class ModelVersion(models.Model):
    class Status(models.TextChoices):
        DRAFT = "draft"
        READY = "ready"

    class Kind(models.TextChoices):
        UPLOAD = "upload"
        QUANTIZED = "quantized"
        LORA = "lora"
        MERGED = "merged"

    model = models.ForeignKey(RegisteredModel, on_delete=models.PROTECT, related_name="versions")
    number = models.PositiveIntegerField()
    description = models.TextField(blank=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.DRAFT)
    kind = models.CharField(max_length=16, choices=Kind.choices, default=Kind.UPLOAD)
    manifest_sha256 = models.CharField(max_length=64, blank=True)
    quantization = models.JSONField(null=True, blank=True)
    lora = models.JSONField(null=True, blank=True)
    # The job that produced a derived version: unique, so a retried job can never register twice.
    source_job = models.OneToOneField(
        "workers.Job", null=True, blank=True, on_delete=models.PROTECT, related_name="registered_version"
    )
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    sealed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["model__name", "number"]
        verbose_name = "version"
        constraints = [
            models.UniqueConstraint(fields=["model", "number"], name="version_number_unique_per_model"),
            models.CheckConstraint(
                condition=models.Q(status="draft") | ~models.Q(manifest_sha256=""),
                name="sealed_version_has_manifest",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.model.name} v{self.number}"

    @property
    def is_sealed(self) -> bool:
        return self.status == self.Status.READY


class VersionFile(models.Model):
    version = models.ForeignKey(ModelVersion, on_delete=models.PROTECT, related_name="files")
    path = models.CharField(max_length=512)
    size = models.BigIntegerField()
    sha256 = models.CharField(max_length=64)
    object_key = models.CharField(max_length=1024)
    storage_version_id = models.CharField(max_length=256, blank=True)
    # For safetensors files: {tensor name: {dtype, shape}} from the header read at seal time.
    tensors = models.JSONField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["path"]
        constraints = [models.UniqueConstraint(fields=["version", "path"], name="file_path_unique_per_version")]

    def __str__(self) -> str:
        return self.path


class Dataset(models.Model):
    class Purpose(models.TextChoices):
        CALIBRATION = "calibration"
        EVALUATION = "evaluation"
        TRAINING = "training"

    class PiiStatus(models.TextChoices):
        SCANNING = "scanning"
        CLEAN = "clean"
        FOUND = "found"
        FAILED = "failed"

    name = models.CharField(max_length=200)
    purpose = models.CharField(max_length=16, choices=Purpose.choices)
    sha256 = models.CharField(max_length=64)
    records = models.PositiveIntegerField()
    size = models.BigIntegerField()
    # "text", "prompt_completion", "multiple_choice" or "generation": what the lines hold, so jobs can refuse a wrong fit early.
    record_format = models.CharField(max_length=32)
    object_key = models.CharField(max_length=1024)
    storage_version_id = models.CharField(max_length=256, blank=True)
    # Personal data: set by the scan that runs at registration (inline for small files, a job for large ones).
    pii_status = models.CharField("PII status", max_length=16, choices=PiiStatus.choices, default=PiiStatus.SCANNING)
    # {counts: {type: n}, scanned_records, records_with_pii, engine: {...}, findings_truncated, error?}
    pii = models.JSONField(null=True, blank=True)
    # A superuser's recorded decision to use a dataset with findings anyway: {reason, by, at}.
    pii_exception = models.JSONField("PII exception", null=True, blank=True)
    redacted_from = models.ForeignKey("self", null=True, blank=True, on_delete=models.PROTECT,
                                      related_name="redactions")
    # How it was redacted from `redacted_from`: {strategy, types, counts, dropped_records}.
    redaction = models.JSONField(null=True, blank=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.name} ({self.purpose})"

    @property
    def has_unexcused_pii(self) -> bool:
        return self.pii_status == self.PiiStatus.FOUND and not self.pii_exception


class DatasetPiiFinding(models.Model):
    """Where a scan found personal data; `masked` never holds the full value."""

    dataset = models.ForeignKey(Dataset, on_delete=models.CASCADE, related_name="pii_findings")
    record = models.PositiveIntegerField()  # 1-based line number
    field = models.CharField(max_length=500)
    type = models.CharField(max_length=64)
    start = models.PositiveIntegerField()
    end = models.PositiveIntegerField()
    masked = models.CharField(max_length=300)

    class Meta:
        ordering = ["record", "start", "pk"]


class LineageEdge(models.Model):
    class Relation(models.TextChoices):
        QUANTIZED_FROM = "quantized_from"
        ADAPTED_FROM = "adapted_from"
        TRAINED_ON = "trained_on"
        CALIBRATED_ON = "calibrated_on"
        MERGED_FROM = "merged_from"

    child = models.ForeignKey(ModelVersion, on_delete=models.PROTECT, related_name="parent_edges")
    parent_version = models.ForeignKey(
        ModelVersion, null=True, blank=True, on_delete=models.PROTECT, related_name="child_edges"
    )
    parent_dataset = models.ForeignKey(
        Dataset, null=True, blank=True, on_delete=models.PROTECT, related_name="child_edges"
    )
    relation = models.CharField(max_length=32, choices=Relation.choices)

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=(models.Q(parent_version__isnull=False) & models.Q(parent_dataset__isnull=True))
                | (models.Q(parent_version__isnull=True) & models.Q(parent_dataset__isnull=False)),
                name="lineage_edge_has_exactly_one_parent",
            ),
        ]
