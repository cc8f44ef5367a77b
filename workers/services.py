"""Job lifecycle (create and enqueue after commit, claim, progress, cancel, finish) and the use cases that start
jobs and record what they made. The only code that writes Job and Analysis rows. Claiming and finishing are
conditional UPDATEs, so a job redelivered after a worker died is picked up exactly where its state says, and a
finished job is never run again."""
import socket

from django.db import transaction
from django.db.models import F
from django.utils import timezone

from foundation.audit import append_event
from foundation.errors import Conflict, InvalidInput, PermissionDenied, Unprocessable
from registry.models import Dataset, ModelVersion
from registry.selectors import module_names_of
from registry.teams import require_team_member
from workers import signals
from workers.models import Analysis, Job
from workers.pipelines.errors import PipelineInputError
from workers.pipelines.specs import (
    AnalysisSpec, LoraSpec, QuantizeSpec, is_skipped, validate_analysis_spec, validate_lora_spec,
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
    job = Job.objects.select_for_update(of=("self",)).select_related("source_version__model").get(pk=job_id)
    if job.is_finished:
        return
    job.status, job.progress, job.result, job.message = Job.Status.SUCCEEDED, 100, result, message
    job.finished_at = timezone.now()
    job.save(update_fields=["status", "progress", "result", "message", "finished_at"])
    append_event(actor=job.created_by, action="job.succeeded", object_type="job", object_id=job.pk,
                 model_name=_model_name(job), after={"kind": job.kind, "result": result})


@transaction.atomic
def fail_job(*, job_id: int, error: str, cancelled: bool = False) -> None:
    job = Job.objects.select_for_update(of=("self",)).select_related("source_version__model").get(pk=job_id)
    if job.is_finished:
        return
    job.status = Job.Status.CANCELLED if cancelled else Job.Status.FAILED
    job.error = "" if cancelled else error
    job.message = "Cancelled" if cancelled else "Failed"
    job.finished_at = timezone.now()
    job.save(update_fields=["status", "error", "message", "finished_at"])
    _release_waiting_requests(job)
    append_event(actor=job.created_by, action=f"job.{job.status}", object_type="job", object_id=job.pk,
                 model_name=_model_name(job), after={"kind": job.kind, "error": job.error})


def _release_waiting_requests(job: Job) -> None:
    """Announce, inside the job's transaction, that its analysis will never finish (change requests wait on it)."""
    if job.kind == Job.Kind.ANALYSIS:
        signals.analysis_failed.send(sender=Analysis, analysis_id=job.analysis.pk,
                                     error=job.error or "the analysis was cancelled")


@transaction.atomic
def cancel_job(*, job: Job, actor) -> Job:
    """Ask a job to stop: a queued job is cancelled at once, a running one at its next safe point."""
    job = Job.objects.select_for_update(of=("self",)).select_related("source_version__model__team").get(pk=job.pk)
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
        _release_waiting_requests(job)
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
    analysis = Analysis.objects.select_for_update().select_related("candidate__model").get(pk=analysis_id)
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
    try:
        spec = LoraSpec(**{key: value for key, value in lora_settings.items() if value is not None})
        validate_lora_spec(spec)
    except (PipelineInputError, TypeError) as error:
        raise InvalidInput(str(error)) from None
    params = {"dataset": dataset.pk, **{key: value for key, value in lora_settings.items() if value is not None}}
    return create_job(kind=Job.Kind.LORA, params=params, source_version=base, actor=actor)
