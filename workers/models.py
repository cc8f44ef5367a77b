"""A Job row per long-running request (what the API and the admin show while Celery does the work), and the
analyses and evaluations those jobs compute."""
from django.conf import settings
from django.db import models


class Job(models.Model):
    class Kind(models.TextChoices):
        QUANTIZE = "quantize"
        ANALYSIS = "analysis"
        LORA = "lora"
        REPORT = "report"
        PII_SCAN = "pii_scan"
        EVALUATION = "evaluation"
        DISTILLATION = "distillation"
        QUANTIZATION_SWEEP = "quantization_sweep"
        MERGE = "merge"

    class Status(models.TextChoices):
        QUEUED = "queued"
        RUNNING = "running"
        SUCCEEDED = "succeeded"
        FAILED = "failed"
        CANCELLED = "cancelled"

    FINISHED = (Status.SUCCEEDED, Status.FAILED, Status.CANCELLED)

    kind = models.CharField(max_length=32, choices=Kind.choices)
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


class Evaluation(models.Model):
    """How well a candidate version does a labelled task (accuracy, F1...), and how far from a reference's score."""

    candidate = models.ForeignKey("registry.ModelVersion", on_delete=models.PROTECT, related_name="evaluations")
    # The version the candidate is compared with; None for an evaluation of the candidate alone.
    reference = models.ForeignKey("registry.ModelVersion", null=True, blank=True, on_delete=models.PROTECT,
                                  related_name="evaluations_as_reference")
    dataset = models.ForeignKey("registry.Dataset", on_delete=models.PROTECT, related_name="evaluations")
    # multiple_choice, classification or generation: detected from the dataset's records when it was requested.
    task_type = models.CharField(max_length=32)
    # The first `limit` records only; None for the whole dataset (the only kind the policy gates accept).
    limit = models.PositiveIntegerField(null=True, blank=True)
    params = models.JSONField(default=dict)
    # {task_type, metrics, per_class, confusion, samples, seconds, harness, reference: {...}|None, deltas}
    result = models.JSONField(null=True, blank=True)
    # The job that computes it: its status, progress and error are the evaluation's.
    job = models.OneToOneField(Job, on_delete=models.PROTECT, related_name="evaluation")
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.CheckConstraint(condition=models.Q(limit__isnull=True) | models.Q(limit__gte=1),
                                   name="evaluation_limit_at_least_1"),
        ]

    def __str__(self) -> str:
        against = f" vs v{self.reference.number}" if self.reference_id else ""
        return f"evaluation {self.pk}: {self.candidate}{against}"


class Distillation(models.Model):
    """A distillation experiment: students trained with LoRA on stratified subsets of teacher-labelled data, each
    judged by its F1 relative to the teacher's on a labelled evaluation set."""

    teacher = models.ForeignKey("registry.ModelVersion", on_delete=models.PROTECT, related_name="distillations")
    # Student base versions' ids, in the order requested.
    students = models.JSONField(default=list)
    dataset = models.ForeignKey("registry.Dataset", on_delete=models.PROTECT, related_name="distillations")
    eval_dataset = models.ForeignKey("registry.Dataset", on_delete=models.PROTECT, related_name="+")
    # {sizes, label_field, lora, f1_relative_min, classification_prompt, batch_size}
    params = models.JSONField(default=dict)
    # What the job has done so far, so a retried job does only what is missing:
    # teacher: {f1, accuracy, latency_ms_per_sample, params, labelled_by}; subsets: {size: dataset id};
    # cells: {"<student id>:<size>": job id of the registered LoRA version}; rows: the table, one per cell.
    teacher_result = models.JSONField(null=True, blank=True)
    subsets = models.JSONField(default=dict)
    cells = models.JSONField(default=dict)
    rows = models.JSONField(default=list)
    best = models.JSONField(null=True, blank=True)
    job = models.OneToOneField(Job, on_delete=models.PROTECT, related_name="distillation")
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"distillation {self.pk} from {self.teacher}"


class QuantizationSweep(models.Model):
    """Several quantizations of one source version, each analysed against it on the same evaluation dataset and
    gated by an alias's policy: the table a validator reads to choose the smallest quantization that passes."""

    source = models.ForeignKey("registry.ModelVersion", on_delete=models.PROTECT, related_name="quantization_sweeps")
    dataset = models.ForeignKey("registry.Dataset", on_delete=models.PROTECT, related_name="quantization_sweeps")
    # Whose policy gates the rows; blank: the default gates (governance.models.DEFAULT_GATES).
    alias = models.CharField(max_length=64, blank=True)
    # {candidates: [quantize job params, as the quantize endpoint validated them], analysis: {max_tokens, top_k}}
    params = models.JSONField(default=dict)
    # The policy thresholds every row was gated with, taken when the first row was gated (null until then).
    policy = models.JSONField(null=True, blank=True)
    # What the job has done so far, so a retried sweep does only what is missing:
    # {"<index>": {"quantize_job": id, "analysis": id}}; rows: the table, one per finished candidate, by index.
    cells = models.JSONField(default=dict)
    rows = models.JSONField(default=list)
    # The number of the smallest version passing every gate, set when the sweep finishes (null: none passed).
    recommended = models.PositiveIntegerField(null=True, blank=True)
    job = models.OneToOneField(Job, on_delete=models.PROTECT, related_name="quantization_sweep")
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"quantization sweep {self.pk} of {self.source}"
