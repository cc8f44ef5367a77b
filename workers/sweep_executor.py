"""What a quantization sweep's job does: for each candidate in turn, run its quantize job and then its analysis
job here (the executors every other job uses), record its row, and go on to the next one even when a candidate
fails; at the end, record the recommended candidate.

A retried sweep skips the rows it recorded and the jobs that succeeded (their version or analysis is reused).
"""
import logging
import shutil
from pathlib import Path

from celery.exceptions import SoftTimeLimitExceeded

from foundation.errors import DomainError, StorageUnavailable
from registry.models import ModelVersion
from workers import executors, services, sweep_services
from workers.job_locks import DATABASE_LOST, job_lock
from workers.models import Analysis, Job
from workers.pipelines.errors import JobCancelled, PipelineInputError

logger = logging.getLogger(__name__)
# Failures the whole sweep's job retries (the runner's transient errors) or stops on; any other failure of a
# candidate is recorded in its row and the sweep goes on.
_NOT_A_CANDIDATE_FAILURE = (JobCancelled, StorageUnavailable, SoftTimeLimitExceeded, *DATABASE_LOST)


class CandidateFailed(Exception):
    """One candidate's quantization or analysis failed; its message goes into the candidate's row."""


def _run_inline(job: Job, executor, *, workdir: Path, report) -> dict:
    """Run one of the sweep's own jobs here, as the runner would, and record its outcome on that job."""
    if job.status == Job.Status.SUCCEEDED:
        return job.result
    if job.is_finished:
        raise CandidateFailed(job.error or f"its {job.kind} job was {job.status}")
    with job_lock(job.pk) as acquired:
        if not acquired:
            raise CandidateFailed(f"its {job.kind} job {job.pk} is running on another worker")
        try:
            result = executor(job=job, workdir=workdir, report=report)
        except JobCancelled:
            services.fail_job(job_id=job.pk, error="", cancelled=True)
            raise
        except _NOT_A_CANDIDATE_FAILURE:
            raise  # the job stays running; the sweep's retry runs it again
        except Exception as error:
            message = str(error)
            if not isinstance(error, (PipelineInputError, DomainError)):  # as the runner words them
                logger.exception("job %s of a quantization sweep failed", job.pk)
                message = f"Internal error ({type(error).__name__}: {error})"
            services.fail_job(job_id=job.pk, error=message)
            raise CandidateFailed(message) from None
        services.finish_job(job_id=job.pk, result=result)
        return result


def _measured_row(analysis: Analysis, version: ModelVersion) -> dict:
    result = analysis.result
    flips = result.get("flips") or {}
    return {"version": version.number, "size_ratio": (version.quantization or {}).get("size_ratio"),
            "kl_mean": result["kl"]["mean"], "kl_p99": result["kl"]["p99"], "same_top1": result["top1_agreement"],
            "ppl_ratio": result["ppl_ratio"], "flip_rate": flips.get("rate"), "analysis": analysis.pk}


def _run_candidate(sweep, index: int, *, workdir: Path, progress) -> dict:
    """Quantize, register and analyse one candidate; its row (with `error` when a step failed)."""
    row = {"index": index, "settings": sweep.params["candidates"][index], "version": None, "size_ratio": None,
           "kl_mean": None, "kl_p99": None, "same_top1": None, "ppl_ratio": None, "flip_rate": None,
           "gates": None, "analysis": None, "error": None}
    quantize_job = sweep_services.sweep_quantize_job(sweep_id=sweep.pk, index=index)
    row["quantize_job"] = quantize_job.pk
    try:
        result = _run_inline(quantize_job, executors.execute_quantize, workdir=workdir / "quantize",
                             report=progress(0, 55, "quantizing"))
        version = ModelVersion.objects.select_related("model").get(model__name=result["model"],
                                                                   number=result["version"])
        row["version"] = version.number
        analysis = sweep_services.sweep_analysis(sweep_id=sweep.pk, index=index, candidate=version)
        row["analysis"] = analysis.pk
        analysis_job = Job.objects.select_related("source_version__model", "created_by").get(pk=analysis.job_id)
        _run_inline(analysis_job, executors.execute_analysis, workdir=workdir / "analysis",
                    report=progress(55, 45, "analysing"))
        analysis.refresh_from_db(fields=["result"])
        row.update(_measured_row(analysis, version))
    except CandidateFailed as error:
        row["error"] = str(error)
    return row


def execute_quantization_sweep(*, job, workdir: Path, report) -> dict:
    sweep = job.quantization_sweep
    candidates = sweep.params["candidates"]
    done = {row["index"] for row in sweep.rows}
    span = 96 / len(candidates)
    for index, settings in enumerate(candidates):
        if index in done:
            continue
        start = 2 + index * span
        label = f"Candidate {index + 1}/{len(candidates)} ({sweep_services.describe(settings)})"

        def progress(offset: float, width: float, step: str, start=start, label=label):
            def scaled(percent: int, message: str) -> None:
                report(int(start + (offset + percent * width / 100) * span / 100), f"{label}: {step}: {message}")
            return scaled

        candidate_dir = workdir / f"candidate-{index}"
        row = _run_candidate(sweep, index, workdir=candidate_dir, progress=progress)
        sweep_services.record_sweep_row(sweep_id=sweep.pk, row=row)
        shutil.rmtree(candidate_dir, ignore_errors=True)  # the next candidate's download needs the disk
    report(98, "Choosing the recommended candidate")
    recommended = sweep_services.finish_quantization_sweep(sweep_id=sweep.pk)
    sweep.refresh_from_db(fields=["rows"])
    return {"quantization_sweep": sweep.pk, "recommended": recommended,
            "failed": sum(1 for row in sweep.rows if row.get("error"))}
