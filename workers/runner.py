"""Runs one job: claim it, give the executor a scratch directory and a progress callback, record the outcome.

The plain function behind the Celery task, so tests can call it directly.
"""
import logging
import shutil
import uuid

from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings

from foundation.errors import DomainError, StorageUnavailable
from workers import executors, services
from workers.pipelines.errors import JobCancelled, PipelineInputError

logger = logging.getLogger(__name__)
MAX_TRANSIENT_RETRIES = 3


def run_job(job_id: int) -> None:
    job = services.claim_job(job_id=job_id)
    if job is None:
        logger.info("job %s is gone, finished or cancelled; nothing to do", job_id)
        return
    workdir = settings.WORK_DIR / f"job-{job_id}-{uuid.uuid4().hex[:8]}"
    workdir.mkdir(parents=True, exist_ok=True)

    def report(percent: int, message: str) -> None:
        if services.record_progress(job_id=job_id, percent=percent, message=message):
            raise JobCancelled()

    try:
        result = executors.EXECUTORS[job.kind](job=job, workdir=workdir, report=report)
    except JobCancelled:
        services.fail_job(job_id=job_id, error="", cancelled=True)
    except StorageUnavailable as error:
        if job.attempts <= MAX_TRANSIENT_RETRIES:
            services.record_progress(job_id=job_id, percent=job.progress, message="Storage unavailable; retrying")
            raise  # the task retries with back-off
        services.fail_job(job_id=job_id, error=error.message)
    except (PipelineInputError, DomainError) as error:
        services.fail_job(job_id=job_id, error=str(error))
    except SoftTimeLimitExceeded:
        services.fail_job(job_id=job_id, error=(
            f"The job ran longer than its limit of {settings.JOB_TIME_LIMIT_SECONDS} s and was stopped; nothing "
            "was registered. Use fewer steps or tokens, or raise JOB_TIME_LIMIT_SECONDS."))
    except Exception as error:  # an unexpected failure must still end the job visibly
        logger.exception("job %s failed", job_id)
        services.fail_job(job_id=job_id, error=f"Internal error ({type(error).__name__}: {error}). "
                                               "Nothing was registered; the administrators have the log.")
    else:
        services.finish_job(job_id=job_id, result=result)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


