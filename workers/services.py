"""Job lifecycle (create and enqueue after commit, claim, progress, cancel, finish) and the use cases that start
quantization, analysis, evaluation and LoRA jobs and record what they made. The only code that writes Analysis and
Evaluation rows. Claiming and finishing are conditional UPDATEs, so a job redelivered after a worker died is picked up
exactly where its state says, and a finished job is never run again. Distillations (distillation_services.py), PII
scans and redaction (pii_services.py), quantization sweeps (sweep_services.py) and merges (merge_services.py) have
modules of their own."""
import dataclasses
import json
import re
import socket

from django.db import transaction
from django.db.models import F
from django.utils import timezone

from foundation import storage
from foundation.audit import append_event
from foundation.errors import Conflict, InvalidInput, PermissionDenied, Unprocessable
from registry import services as registry_services
from registry.models import Dataset, ModelVersion
from registry.selectors import module_names_of
from registry.teams import require_team_member
from workers import signals
from workers.models import Analysis, Evaluation, Job
from workers.pipelines.calibrated import spec as calibrated_spec
from workers.pipelines.errors import PipelineInputError
from workers.pipelines.evaluation import EvaluationSpec, detect_task_type, validate_evaluation_spec
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
    elif job.kind == Job.Kind.EVALUATION:
        signals.evaluation_failed.send(sender=Evaluation, evaluation_id=job.evaluation.pk,
                                       error=job.error or "the evaluation was cancelled")
    elif job.kind == Job.Kind.DISTILLATION:
        append_event(actor=None, action="distillation.ended", object_type="distillation",
                     object_id=job.distillation.pk, model_name=_model_name(job),
                     after={"status": job.status, "error": job.error, "rows": len(job.distillation.rows)})
    elif job.kind == Job.Kind.QUANTIZATION_SWEEP:
        append_event(actor=None, action="quantization_sweep.ended", object_type="quantization_sweep",
                     object_id=job.quantization_sweep.pk, model_name=_model_name(job),
                     after={"status": job.status, "error": job.error, "rows": len(job.quantization_sweep.rows)})
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


def require_quantizable(*, version, actor) -> None:
    require_team_member(actor=actor, model=version.model)
    if not version.is_sealed:
        raise Conflict(f"{version} is a draft; seal it before quantizing.")
    if version.kind == ModelVersion.Kind.LORA:
        raise Unprocessable(f"{version} is a LoRA adapter; quantize its base version instead.")
    if version.quantization:
        raise Unprocessable(f"{version} is already quantized ({version.quantization.get('method')}); "
                            "quantize the full-precision version it came from.")


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


def start_quantization(*, version, method: str, compute_dtype: str, double_quant: bool,
                       skip_modules: list[str], actor) -> Job:
    """Check a quantization request against the source version and queue it."""
    params = check_quantization(version=version, method=method, compute_dtype=compute_dtype,
                                double_quant=double_quant, skip_modules=skip_modules, actor=actor)
    return create_job(kind=Job.Kind.QUANTIZE, params=params, source_version=version, actor=actor)


def check_quantization(*, version, method: str, compute_dtype: str, double_quant: bool,
                       skip_modules: list[str], actor) -> dict:
    """The job params of a bitsandbytes quantization request, or the domain error refusing it (creates nothing;
    quantization sweeps check each candidate with it)."""
    require_quantizable(version=version, actor=actor)
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
    return {"method": method, "compute_dtype": compute_dtype, "double_quant": double_quant,
            "skip_modules": skip_modules}


def _matrix_module_names(version) -> list[str]:
    """Modules of a sealed version with a 2-D weight other than the embeddings (its Linear layers, as far as the
    tensor headers recorded at seal time tell), in checkpoint order."""
    names = []
    for tensors in version.files.exclude(tensors=None).order_by("path").values_list("tensors", flat=True):
        for tensor_name, header in tensors.items():
            if tensor_name.endswith(".weight") and len(header.get("shape", ())) == 2:
                module = tensor_name[: -len(".weight")]
                if not re.search(r"(^|\.)(embed_tokens|embed_positions|wte|wpe)$", module):
                    names.append(module)
    return names


def _sensitive_modules(*, version, keep_sensitive) -> dict:
    """{analysis, top_n | max_relative_error, modules: [{name, relative_error}]}: the layers an earlier analysis of
    this model found most sensitive (largest local relative error: the top_n, or every one above
    max_relative_error), which the quantization keeps in full precision."""
    if not isinstance(keep_sensitive, dict) or "analysis" not in keep_sensitive \
            or len(set(keep_sensitive) & {"top_n", "max_relative_error"}) != 1 or len(keep_sensitive) != 2:
        raise InvalidInput("keep_sensitive must be {analysis: <id>, top_n: <n>} or {analysis: <id>, "
                           "max_relative_error: <x>}.", field="keep_sensitive")
    analysis_id = keep_sensitive["analysis"]
    top_n, threshold = keep_sensitive.get("top_n"), keep_sensitive.get("max_relative_error")
    if "top_n" in keep_sensitive and (isinstance(top_n, bool) or not isinstance(top_n, int)
                                      or not 1 <= top_n <= calibrated_spec.MAX_KEEP_SENSITIVE):
        raise InvalidInput(f"keep_sensitive.top_n must be a whole number from 1 to "
                           f"{calibrated_spec.MAX_KEEP_SENSITIVE}; got {top_n!r}.", field="keep_sensitive")
    if "max_relative_error" in keep_sensitive and (isinstance(threshold, bool) or not isinstance(
            threshold, (int, float)) or not 0 <= threshold < float("inf")):
        raise InvalidInput(f"keep_sensitive.max_relative_error must be a number of 0 or more, such as 0.05; got "
                           f"{threshold!r}.", field="keep_sensitive")
    analysis = (Analysis.objects.select_related("candidate__model").filter(pk=analysis_id).first()
                if isinstance(analysis_id, int) and not isinstance(analysis_id, bool) else None)
    if analysis is None:
        raise InvalidInput(f"keep_sensitive.analysis {analysis_id!r} is no analysis id.", field="keep_sensitive")
    if analysis.candidate.model_id != version.model_id:
        raise InvalidInput(f"Analysis {analysis.pk} is of model {analysis.candidate.model.name}, not "
                           f"{version.model.name}; name an analysis of this model.", field="keep_sensitive")
    layers = [layer for layer in (analysis.result or {}).get("layers") or []
              if layer.get("relative_error") is not None]
    if not layers:
        raise Unprocessable(f"Analysis {analysis.pk} has no per-layer errors (it has not finished, or ran without "
                            "its per-layer phase); name a finished analysis.", field="keep_sensitive")
    ranked = sorted(layers, key=lambda layer: layer["relative_error"], reverse=True)
    chosen = ranked[:top_n] if top_n is not None else [layer for layer in ranked
                                                        if layer["relative_error"] > threshold]
    selection = {"top_n": top_n} if top_n is not None else {"max_relative_error": threshold}
    return {"analysis": analysis.pk, **selection,
            "modules": [{"name": layer["name"], "relative_error": layer["relative_error"]} for layer in chosen]}


def start_calibrated_quantization(*, version, calibration_dataset, settings: dict, actor) -> Job:
    """Check a GPTQ or AWQ request (settings, calibration dataset, module patterns, sensitive layers) against the source
    version and queue it; every refusal happens here, before a job exists."""
    params = check_calibrated_quantization(version=version, calibration_dataset=calibration_dataset,
                                           settings=settings, actor=actor)
    return create_job(kind=Job.Kind.QUANTIZE, params=params, source_version=version, actor=actor)


def check_calibrated_quantization(*, version, calibration_dataset, settings: dict, actor) -> dict:
    """The job params of a GPTQ or AWQ request, or the domain error refusing it (creates nothing)."""
    require_quantizable(version=version, actor=actor)
    settings = {key: value for key, value in settings.items() if value is not None}
    # Symmetric by default for AWQ too (AutoAWQ's default has a zero point): only symmetric grids reload packed
    # under our compressed-tensors and transformers pins, and a default request should give a servable version.
    settings.setdefault("sym", True)
    keep_sensitive = settings.pop("keep_sensitive", None)
    skip_modules = settings.get("skip_modules")
    if not (skip_modules is None or isinstance(skip_modules, str) or (
            isinstance(skip_modules, list) and all(isinstance(pattern, str) for pattern in skip_modules))):
        raise InvalidInput("skip_modules must be a regular expression or a list of them, such as ['lm_head', "
                           "'down_proj'].", field="skip_modules")
    settings["skip_modules"] = calibrated_spec.skip_patterns(skip_modules)
    sensitive = _sensitive_modules(version=version, keep_sensitive=keep_sensitive) if keep_sensitive else None
    if sensitive:
        settings["keep"] = tuple(item["name"] for item in sensitive["modules"])
    try:
        spec = calibrated_spec.CalibratedQuantizeSpec(**settings)
        calibrated_spec.validate_calibrated_spec(spec)
        calibrated_spec.plan_modules(_matrix_module_names(version), spec)
    except PipelineInputError as error:
        raise InvalidInput(str(error), field=getattr(error, "field", None)) from None
    if calibration_dataset.purpose != Dataset.Purpose.CALIBRATION:
        raise InvalidInput(f"Dataset {calibration_dataset.pk} ({calibration_dataset.name}) is for "
                           f"{calibration_dataset.purpose}; {settings['method']} needs a calibration dataset.",
                           field="calibration_dataset")
    try:
        require_free_of_pii(calibration_dataset, use="calibration")
    except (Conflict, Unprocessable) as error:
        error.field = "calibration_dataset"
        raise
    if calibration_dataset.records < calibrated_spec.MIN_CALIBRATION_RECORDS:
        raise Unprocessable(f"Dataset {calibration_dataset.pk} ({calibration_dataset.name}) has "
                            f"{calibration_dataset.records} records; calibration needs at least "
                            f"{calibrated_spec.MIN_CALIBRATION_RECORDS}.", field="calibration_dataset")
    if spec.calibration_samples is not None and spec.calibration_samples > calibration_dataset.records:
        raise Unprocessable(f"calibration_samples is {spec.calibration_samples} but dataset "
                            f"{calibration_dataset.pk} has only {calibration_dataset.records} records.",
                            field="calibration_samples")
    return {**dataclasses.asdict(spec), "skip_modules": list(spec.skip_modules), "keep": list(spec.keep),
            "calibration_dataset": calibration_dataset.pk, "keep_sensitive": sensitive}


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
    params = check_analysis_inputs(dataset=dataset, max_tokens=max_tokens, top_k=top_k)
    with transaction.atomic():
        job = create_job(kind=Job.Kind.ANALYSIS, params=params, source_version=candidate, actor=actor)
        analysis = Analysis.objects.create(reference=reference, candidate=candidate, dataset=dataset,
                                           params=params, job=job, created_by=actor)
        append_event(actor=actor, action="analysis.requested", object_type="analysis", object_id=analysis.pk,
                     model_name=candidate.model.name,
                     after={"reference": reference.number, "candidate": candidate.number, "dataset": dataset.pk,
                            "params": params})
        return analysis


def check_analysis_inputs(*, dataset, max_tokens: int, top_k: int) -> dict:
    """An analysis's params, or the domain error refusing its dataset or settings (creates nothing)."""
    if dataset.purpose != Dataset.Purpose.EVALUATION:
        raise InvalidInput(f"Dataset {dataset.pk} ({dataset.name}) is for {dataset.purpose}; analyses need an "
                           "evaluation dataset.", field="dataset")
    try:
        validate_analysis_spec(AnalysisSpec(max_tokens=max_tokens, top_k=top_k))
    except PipelineInputError as error:
        raise InvalidInput(str(error)) from None
    return {"max_tokens": max_tokens, "top_k": top_k}


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


# --- task evaluations ------------------------------------------------------------------------------------------

def dataset_records(dataset) -> list[dict]:
    """The records of a registered dataset (its lines were checked as JSON when it was registered)."""
    raw = storage.read_bytes(dataset.object_key, version_id=dataset.storage_version_id, sha256=dataset.sha256)
    return [json.loads(line) for line in raw.splitlines() if line.strip()]


def evaluation_task_type(dataset) -> str:
    """The task an evaluation dataset poses, or a 422 naming the first record that fits no task type."""
    if dataset.purpose != Dataset.Purpose.EVALUATION:
        raise InvalidInput(f"Dataset {dataset.pk} ({dataset.name}) is for {dataset.purpose}; evaluations need an "
                           "evaluation dataset.", field="dataset")
    try:
        return detect_task_type(dataset_records(dataset))
    except PipelineInputError as error:
        raise Unprocessable(f"Dataset {dataset.pk} ({dataset.name}) cannot be evaluated: {error}",
                            field="dataset") from None


def request_evaluation(*, candidate, reference=None, dataset, evaluation_settings: dict | None = None,
                       actor) -> Evaluation:
    """An ML engineer asks for a task evaluation of one of their team's versions (the API's door)."""
    require_team_member(actor=actor, model=candidate.model)
    return start_evaluation(candidate=candidate, reference=reference, dataset=dataset,
                            evaluation_settings=evaluation_settings, actor=actor)


def start_evaluation(*, candidate, reference=None, dataset, evaluation_settings: dict | None = None,
                     actor) -> Evaluation:
    """Check an evaluation request and queue it; returns the Evaluation (its job is evaluation.job). Governance
    calls this directly when task gates need an evaluation, on behalf of whoever opened the change request.

    `evaluation_settings` holds EvaluationSpec fields (limit, batch_size, classification_prompt, max_new_tokens)."""
    chosen = {key: value for key, value in (evaluation_settings or {}).items() if value is not None}
    unknown = sorted(set(chosen) - {field.name for field in dataclasses.fields(EvaluationSpec)})
    if unknown:
        raise InvalidInput(f"Unknown evaluation settings: {', '.join(unknown)}.", field=unknown[0])
    try:
        validate_evaluation_spec(EvaluationSpec(**chosen))
    except PipelineInputError as error:
        raise InvalidInput(str(error), field=next((key for key in chosen if key in str(error)), None)) from None
    for version in (candidate, reference):
        if version is not None and not version.is_sealed:
            raise Conflict(f"{version} is a draft; seal it before evaluating it.")
    task_type = evaluation_task_type(dataset)
    with transaction.atomic():
        job = create_job(kind=Job.Kind.EVALUATION, params=chosen, source_version=candidate, actor=actor)
        evaluation = Evaluation.objects.create(candidate=candidate, reference=reference, dataset=dataset,
                                               task_type=task_type, limit=chosen.get("limit"), params=chosen,
                                               job=job, created_by=actor)
        append_event(actor=actor, action="evaluation.requested", object_type="evaluation", object_id=evaluation.pk,
                     model_name=candidate.model.name,
                     after={"candidate": candidate.number, "reference": reference.number if reference else None,
                            "dataset": dataset.pk, "task_type": task_type, "params": chosen})
        return evaluation


@transaction.atomic
def record_evaluation_result(*, evaluation_id: int, result: dict) -> None:
    """Store an evaluation's metrics (written once, by its job) and announce it."""
    evaluation = (Evaluation.objects.select_for_update(of=("self",), no_key=True).select_related("candidate__model")
                  .get(pk=evaluation_id))
    if evaluation.result is not None:
        return
    evaluation.result = result
    evaluation.save(update_fields=["result"])
    append_event(actor=None, action="evaluation.completed", object_type="evaluation", object_id=evaluation.pk,
                 model_name=evaluation.candidate.model.name,
                 after={"task_type": result["task_type"], "samples": result["samples"],
                        "metrics": {name: metric["value"] for name, metric in result["metrics"].items()},
                        "deltas": {name: delta["delta"] for name, delta in (result.get("deltas") or {}).items()}})
    signals.evaluation_completed.send(sender=Evaluation, evaluation_id=evaluation.pk)


# --- LoRA updates ----------------------------------------------------------------------------------------------

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
