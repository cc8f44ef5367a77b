"""Job lifecycle (create and enqueue after commit, claim, progress, cancel, finish) and the use cases that start
jobs and record what they made. The only code that writes Job and Analysis rows. Claiming and finishing are
conditional UPDATEs, so a job redelivered after a worker died is picked up exactly where its state says, and a
finished job is never run again."""
import dataclasses
import socket
import tempfile
from pathlib import Path

from django.conf import settings
from django.core.files import File
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from foundation import storage
from foundation.audit import append_event
from foundation.errors import Conflict, InvalidInput, PermissionDenied, Unprocessable
from foundation.roles import ML_ENGINEER, has_role
from registry import services as registry_services
from registry.models import Dataset, ModelVersion
from registry.selectors import module_names_of
from registry.teams import require_team_member
from workers import signals
from workers.models import Analysis, Job
from workers.pipelines import pii
from workers.pipelines.errors import PipelineInputError
from workers.pipelines.specs import (
    AnalysisSpec,
    LoraSpec,
    QuantizeSpec,
    is_skipped,
    validate_analysis_spec,
    validate_lora_spec,
    validate_quantize_spec,
)
from workers.queues import enqueue_job


def _model_name(job: Job) -> str:
    return job.source_version.model.name if job.source_version_id else ""


@transaction.atomic
def create_job(*, kind: str, params: dict, source_version, actor) -> Job:
    """Record a job and enqueue it once the surrounding transaction commits."""
    job = Job.objects.create(kind=kind, params=params, source_version=source_version, created_by=actor,
                             message="Waiting for a worker")
    append_event(actor=actor, action="job.created", object_type="job", object_id=job.pk,
                 model_name=source_version.model.name if source_version else "",
                 after={"kind": kind, "params": params,
                        "source_version": source_version.number if source_version else None})
    transaction.on_commit(lambda: enqueue_job(job))
    return job


def claim_job(*, job_id: int) -> Job | None:
    """Mark a job running on this worker; None when it is gone or already finished (nothing to do)."""
    claimed = (Job.objects.filter(pk=job_id, status__in=[Job.Status.QUEUED, Job.Status.RUNNING],
                                  cancel_requested=False)
               .update(status=Job.Status.RUNNING, worker=socket.gethostname()[:200], attempts=F("attempts") + 1,
                       started_at=timezone.now(), message="Started"))
    if not claimed:
        _finish_cancelled_if_requested(job_id)
        return None
    return Job.objects.select_related("source_version__model", "created_by").get(pk=job_id)


def _finish_cancelled_if_requested(job_id: int) -> None:
    Job.objects.filter(pk=job_id, cancel_requested=True, status__in=[Job.Status.QUEUED, Job.Status.RUNNING]).update(
        status=Job.Status.CANCELLED, message="Cancelled", finished_at=timezone.now())


def record_progress(*, job_id: int, percent: int, message: str) -> bool:
    """Store progress; returns True when the user has asked to cancel (the caller stops at this safe point)."""
    percent = max(0, min(100, int(percent)))
    Job.objects.filter(pk=job_id, status=Job.Status.RUNNING).update(progress=percent, message=message[:500])
    return Job.objects.filter(pk=job_id, cancel_requested=True).exists()


@transaction.atomic
def finish_job(*, job_id: int, result: dict, message: str = "Done") -> None:
    job = (Job.objects.select_for_update(of=("self",), no_key=True).select_related("source_version__model")
           .get(pk=job_id))
    if job.is_finished:
        return
    job.status, job.progress, job.result, job.message = Job.Status.SUCCEEDED, 100, result, message
    job.finished_at = timezone.now()
    job.save(update_fields=["status", "progress", "result", "message", "finished_at"])
    append_event(actor=job.created_by, action="job.succeeded", object_type="job", object_id=job.pk,
                 model_name=_model_name(job), after={"kind": job.kind, "result": result})


@transaction.atomic
def fail_job(*, job_id: int, error: str, cancelled: bool = False) -> None:
    job = (Job.objects.select_for_update(of=("self",), no_key=True).select_related("source_version__model")
           .get(pk=job_id))
    if job.is_finished:
        return
    job.status = Job.Status.CANCELLED if cancelled else Job.Status.FAILED
    job.error = "" if cancelled else error
    job.message = "Cancelled" if cancelled else "Failed"
    job.finished_at = timezone.now()
    job.save(update_fields=["status", "error", "message", "finished_at"])
    _settle_what_waits_on(job)
    append_event(actor=job.created_by, action=f"job.{job.status}", object_type="job", object_id=job.pk,
                 model_name=_model_name(job), after={"kind": job.kind, "error": job.error})


def _settle_what_waits_on(job: Job) -> None:
    """Inside the job's transaction: what waited on a job that will never succeed learns it (change requests on
    their analysis, through the announcement; a dataset on its PII scan)."""
    if job.kind == Job.Kind.ANALYSIS:
        signals.analysis_failed.send(sender=Analysis, analysis_id=job.analysis.pk,
                                     error=job.error or "the analysis was cancelled")
    elif job.kind == Job.Kind.PII_SCAN:
        registry_services.record_pii_scan_failure(dataset_id=job.params["dataset"],
                                                  error=job.error or "the scan was cancelled")


@transaction.atomic
def cancel_job(*, job: Job, actor) -> Job:
    """Ask a job to stop: a queued job is cancelled at once, a running one at its next safe point."""
    job = (Job.objects.select_for_update(of=("self",), no_key=True).select_related("source_version__model__team")
           .get(pk=job.pk))
    if job.source_version_id:
        require_team_member(actor=actor, model=job.source_version.model)
    elif not actor.is_superuser and actor.pk != job.created_by_id:
        raise PermissionDenied(f"Job {job.pk} belongs to no model; only the user who started it may cancel it.")
    if job.is_finished:
        raise Conflict(f"Job {job.pk} has already {job.status}; there is nothing to cancel.")
    job.cancel_requested = True
    fields = ["cancel_requested"]
    if job.status == Job.Status.QUEUED:
        job.status, job.message, job.finished_at = Job.Status.CANCELLED, "Cancelled", timezone.now()
        fields += ["status", "message", "finished_at"]
    else:
        job.message = "Cancelling at the next safe point"
        fields.append("message")
    job.save(update_fields=fields)
    if job.status == Job.Status.CANCELLED:
        _settle_what_waits_on(job)
    append_event(actor=actor, action="job.cancel_requested", object_type="job", object_id=job.pk,
                 model_name=_model_name(job), after={"status": job.status})
    return job


def start_quantization(*, version, method: str, compute_dtype: str, double_quant: bool,
                       skip_modules: list[str], actor) -> Job:
    """Check a quantization request against the source version and queue it."""
    require_team_member(actor=actor, model=version.model)
    if not version.is_sealed:
        raise Conflict(f"{version} is a draft; seal it before quantizing.")
    if version.kind == ModelVersion.Kind.LORA:
        raise Unprocessable(f"{version} is a LoRA adapter; quantize its base version instead.")
    if version.quantization:
        raise Unprocessable(f"{version} is already quantized ({version.quantization.get('method')}); "
                            "quantize the full-precision version it came from.")
    try:
        validate_quantize_spec(QuantizeSpec(method=method, compute_dtype=compute_dtype, double_quant=double_quant,
                                            skip_modules=skip_modules))
    except PipelineInputError as error:
        raise InvalidInput(str(error)) from None
    # The same matcher the pipeline uses (transformers' own), against the module paths recorded at seal time.
    module_names = module_names_of(version)
    unknown = [entry for entry in skip_modules if not any(is_skipped(name, [entry]) for name in module_names)]
    if unknown:
        raise InvalidInput(f"skip_modules names no module of {version}: {', '.join(unknown)}. "
                           "Use module names such as lm_head, embed_tokens or model.layers.0.mlp.",
                           field="skip_modules")
    params = {"method": method, "compute_dtype": compute_dtype, "double_quant": double_quant,
              "skip_modules": skip_modules}
    return create_job(kind=Job.Kind.QUANTIZE, params=params, source_version=version, actor=actor)


def default_reference(version):
    """The version an analysis compares against when none is named: the one it was derived from."""
    edge = version.parent_edges.filter(parent_version__isnull=False).select_related("parent_version__model").first()
    return edge.parent_version if edge else None


def request_analysis(*, candidate, reference=None, dataset, max_tokens: int = 4096, top_k: int = 5, actor):
    """An ML engineer asks for an analysis of one of their team's versions (the API's and the admin's door)."""
    require_team_member(actor=actor, model=candidate.model)
    return start_analysis(candidate=candidate, reference=reference, dataset=dataset, max_tokens=max_tokens,
                          top_k=top_k, actor=actor)


def start_analysis(*, candidate, reference=None, dataset, max_tokens: int = 4096, top_k: int = 5, actor):
    """Check an analysis request and queue it; returns the Analysis (its job is analysis.job). Governance calls
    this directly when gates need an analysis, on behalf of whoever moved the alias."""

    reference = reference or default_reference(candidate)
    if reference is None:
        raise InvalidInput(f"{candidate} has no parent version; name the reference version to compare against.",
                           field="reference")
    for version in (candidate, reference):
        if not version.is_sealed:
            raise Conflict(f"{version} is a draft; seal it before analysing it.")
    if dataset.purpose != Dataset.Purpose.EVALUATION:
        raise InvalidInput(f"Dataset {dataset.pk} ({dataset.name}) is for {dataset.purpose}; analyses need an "
                           "evaluation dataset.", field="dataset")
    try:
        validate_analysis_spec(AnalysisSpec(max_tokens=max_tokens, top_k=top_k))
    except PipelineInputError as error:
        raise InvalidInput(str(error)) from None
    params = {"max_tokens": max_tokens, "top_k": top_k}
    with transaction.atomic():
        job = create_job(kind=Job.Kind.ANALYSIS, params=params, source_version=candidate, actor=actor)
        analysis = Analysis.objects.create(reference=reference, candidate=candidate, dataset=dataset,
                                           params=params, job=job, created_by=actor)
        append_event(actor=actor, action="analysis.requested", object_type="analysis", object_id=analysis.pk,
                     model_name=candidate.model.name,
                     after={"reference": reference.number, "candidate": candidate.number, "dataset": dataset.pk,
                            "params": params})
        return analysis


@transaction.atomic
def record_analysis_result(*, analysis_id: int, result: dict, plots: list[dict]) -> None:
    """Store an analysis's statistics and chart locations (written once, by its job) and announce it."""
    analysis = (Analysis.objects.select_for_update(of=("self",), no_key=True).select_related("candidate__model")
                .get(pk=analysis_id))
    if analysis.result is not None:
        return
    analysis.result, analysis.plots = result, plots
    analysis.save(update_fields=["result", "plots"])
    append_event(actor=None, action="analysis.completed", object_type="analysis", object_id=analysis.pk,
                 model_name=analysis.candidate.model.name,
                 after={key: result.get(key) for key in ("tokens", "ppl_ratio", "top1_agreement")}
                 | {"kl_mean": result["kl"]["mean"]})
    signals.analysis_completed.send(sender=Analysis, analysis_id=analysis.pk)


def start_lora_update(*, base, dataset, lora_settings: dict, actor) -> Job:
    """Check a LoRA update request against its base version and dataset and queue it."""
    require_team_member(actor=actor, model=base.model)
    if not base.is_sealed:
        raise Conflict(f"{base} is a draft; seal it before training on it.")
    if base.kind == ModelVersion.Kind.LORA:
        raise Unprocessable(f"{base} is itself a LoRA adapter; train on the version it was adapted from.")
    if dataset.purpose != Dataset.Purpose.TRAINING:
        raise InvalidInput(f"Dataset {dataset.pk} ({dataset.name}) is for {dataset.purpose}; LoRA updates need a "
                           "training dataset.", field="dataset")
    require_free_of_pii(dataset, use="training")
    try:
        spec = LoraSpec(**{key: value for key, value in lora_settings.items() if value is not None})
        validate_lora_spec(spec)
    except (PipelineInputError, TypeError) as error:
        raise InvalidInput(str(error)) from None
    params = {"dataset": dataset.pk, **{key: value for key, value in lora_settings.items() if value is not None}}
    return create_job(kind=Job.Kind.LORA, params=params, source_version=base, actor=actor)


# --- personal data in datasets ---------------------------------------------------------------------------------

def _pii_scan_spec() -> pii.PiiScanSpec:
    return pii.PiiScanSpec(regions=list(settings.PII_PHONE_REGIONS or pii.DEFAULT_REGIONS),
                           custom_patterns=dict(settings.PII_CUSTOM_PATTERNS))


def _scan_summary_and_findings(result) -> tuple[dict, list[dict]]:
    document = result.as_dict()
    findings = document.pop("findings")
    return document, findings


def scan_dataset_on_registration(*, dataset_id: int) -> None:
    """Scan a newly registered dataset for personal data: at once when it is small (the registration answers with
    the result), else in a job (the dataset stays `scanning` until it is done)."""
    dataset = Dataset.objects.get(pk=dataset_id)
    if dataset.size <= settings.PII_INLINE_SCAN_BYTES:
        raw = storage.read_bytes(dataset.object_key, version_id=dataset.storage_version_id)
        summary, findings = _scan_summary_and_findings(pii.scan_records(raw.splitlines(), _pii_scan_spec()))
        registry_services.record_pii_scan(dataset_id=dataset.pk, summary=summary, findings=findings)
        return
    create_job(kind=Job.Kind.PII_SCAN, params={"dataset": dataset.pk}, source_version=None, actor=dataset.created_by)


def scan_dataset_file(*, dataset_id: int, path, report) -> dict:
    """The PII scan job's work on a downloaded dataset file: scan it streaming, record the result."""
    summary, findings = _scan_summary_and_findings(pii.scan_jsonl(path, _pii_scan_spec(), report=report))
    registry_services.record_pii_scan(dataset_id=dataset_id, summary=summary, findings=findings)
    return {"dataset": dataset_id, "pii_status": summary["status"], "counts": summary["counts"]}


def require_free_of_pii(dataset, *, use: str) -> None:
    """Datasets with personal data train, calibrate or distil nothing unless a superuser recorded an exception."""
    if dataset.pii_status == Dataset.PiiStatus.SCANNING:
        raise Conflict(f"Dataset {dataset.pk} ({dataset.name}) is still being scanned for personal data; retry "
                       f"{use} when its pii.status is clean.", field="dataset")
    if dataset.pii_status == Dataset.PiiStatus.FAILED:
        raise Unprocessable(f"The PII scan of dataset {dataset.pk} ({dataset.name}) failed "
                            f"({(dataset.pii or {}).get('error')}); it cannot be used for {use}.", field="dataset")
    if dataset.has_unexcused_pii:
        counts = ", ".join(f"{count} {kind}" for kind, count in (dataset.pii or {}).get("counts", {}).items()
                           if count)
        raise Unprocessable(
            f"Dataset {dataset.pk} ({dataset.name}) contains personal data ({counts}); it cannot be used for {use}. "
            f"Redact it first (POST /api/v1/datasets/{dataset.pk}/redact with strategy mask, replace or "
            "drop_record) and use the redacted dataset, or ask a superuser to record an exception.",
            field="dataset")


def redact_dataset(*, dataset, strategy: str, types: list[str] | None, actor):
    """Register a redacted copy of a dataset (its own SHA-256, scanned again); the original stays as it was."""
    if not (actor.is_superuser or has_role(actor, ML_ENGINEER)):
        raise PermissionDenied("Redacting a dataset needs the ml_engineer role.")
    if strategy not in pii.STRATEGIES:
        raise InvalidInput(f"strategy must be one of {', '.join(pii.STRATEGIES)}, not {strategy!r}.", field="strategy")
    spec = dataclasses.replace(_pii_scan_spec(), types=types)
    try:
        pii.validate_pii_scan_spec(spec)
    except PipelineInputError as error:
        raise InvalidInput(str(error), field="types") from None
    Path(settings.WORK_DIR).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=settings.WORK_DIR) as scratch:
        source, redacted = Path(scratch) / "source.jsonl", Path(scratch) / "redacted.jsonl"
        storage.download_to(dataset.object_key, source, version_id=dataset.storage_version_id)
        summary = pii.redact_jsonl(source, redacted, strategy, types, spec=spec)
        with redacted.open("rb") as handle:
            return registry_services.register_dataset(
                name=f"{dataset.name} (redacted: {strategy})"[:200], purpose=dataset.purpose,
                uploaded_file=File(handle, name=redacted.name), actor=actor, redacted_from=dataset,
                redaction={"strategy": strategy, "types": types, "counts": summary["counts"],
                           "dropped_records": summary.get("dropped_records", 0)})


def scan_unscanned_datasets() -> int:
    """Scan every dataset still `scanning` that has no scan job waiting or running (datasets registered before
    scans existed, or whose job message was lost); returns how many were started."""
    waiting = {job.params.get("dataset") for job in Job.objects.filter(
        kind=Job.Kind.PII_SCAN, status__in=[Job.Status.QUEUED, Job.Status.RUNNING])}
    started = 0
    for dataset_id in Dataset.objects.filter(pii_status=Dataset.PiiStatus.SCANNING).values_list("pk", flat=True):
        if dataset_id not in waiting:
            with transaction.atomic():
                scan_dataset_on_registration(dataset_id=dataset_id)
            started += 1
    return started
