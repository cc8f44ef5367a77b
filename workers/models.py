"""A Job row per long-running request (what the API and the admin show while Celery does the work), and the
analyses those jobs compute."""
from django.conf import settings
from django.db import models


class Job(models.Model):
    class Kind(models.TextChoices):
        QUANTIZE = "quantize"
        ANALYSIS = "analysis"
        LORA = "lora"
        REPORT = "report"
        PII_SCAN = "pii_scan"

    class Status(models.TextChoices):
        QUEUED = "queued"
        RUNNING = "running"
        SUCCEEDED = "succeeded"
        FAILED = "failed"
        CANCELLED = "cancelled"

    FINISHED = (Status.SUCCEEDED, Status.FAILED, Status.CANCELLED)

    kind = models.CharField(max_length=16, choices=Kind.choices)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.QUEUED)
    progress = models.PositiveSmallIntegerField(default=0)
    message = models.CharField(max_length=500, blank=True)
    # What to do: the validated request (method, settings, dataset ids...). Never changes after creation.
    params = models.JSONField(default=dict)
    result = models.JSONField(null=True, blank=True)
    error = models.TextField(blank=True)
    source_version = models.ForeignKey(
        "registry.ModelVersion", null=True, blank=True, on_delete=models.PROTECT, related_name="jobs"
    )
    cancel_requested = models.BooleanField(default=False)
    attempts = models.PositiveSmallIntegerField(default=0)
    worker = models.CharField(max_length=200, blank=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.CheckConstraint(condition=models.Q(progress__lte=100), name="job_progress_at_most_100"),
        ]

    def __str__(self) -> str:
        return f"{self.kind} job {self.pk} ({self.status})"

    @property
    def is_finished(self) -> bool:
        return self.status in self.FINISHED


class Analysis(models.Model):
    """How far a candidate version's behaviour moved from a reference version's on a dataset."""

    reference = models.ForeignKey("registry.ModelVersion", on_delete=models.PROTECT, related_name="analyses_as_reference")
    candidate = models.ForeignKey("registry.ModelVersion", on_delete=models.PROTECT, related_name="analyses_as_candidate")
    dataset = models.ForeignKey("registry.Dataset", on_delete=models.PROTECT, related_name="analyses")
    params = models.JSONField(default=dict)
    result = models.JSONField(null=True, blank=True)
    # [{name, object_key}] of the chart PNGs stored beside the result.
    plots = models.JSONField(default=list)
    # The job that computes it: its status, progress and error are the analysis's.
    job = models.OneToOneField(Job, on_delete=models.PROTECT, related_name="analysis")
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        db_table = "registry_analysis"  # the table it had when registry owned it: moving it changed no data
        ordering = ["-created_at"]
        verbose_name_plural = "analyses"

    def __str__(self) -> str:
        return f"analysis {self.pk}: {self.candidate} vs v{self.reference.number}"
