"""Runs one job: claim it, give the executor a scratch directory and a progress callback, record the outcome.

The plain function behind the Celery task, so tests can call it directly.

A job runs on one worker at a time. `claim_job` accepts a job that is already running (that is how a message
redelivered after a worker died picks the job up again), so on its own it would also let a second message for a
job that is still running elsewhere (a duplicate sent by workers.reconciler, or a redelivery once the broker's
visibility timeout ran out during a long job) run it a second time, concurrently. The runner therefore holds a
session-level advisory lock on the job for the whole run and drops a message whose job is locked. The lock lives
in the worker's database session, so it goes when the worker dies (Postgres ends the session when the socket
closes) and never keeps a killed worker's job from being retried.
"""
import contextlib
import logging
import shutil
import uuid

from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.db import connection

from foundation.errors import DomainError, StorageUnavailable
from workers import executors, services, sweep_executor
# JOB_LOCK_NAMESPACE and job_is_running_somewhere stay importable from here, where the lock was first described.
from workers.job_locks import DATABASE_LOST, JOB_LOCK_NAMESPACE, job_is_running_somewhere, job_lock  # noqa: F401
from workers.models import Job
from workers.pipelines.errors import JobCancelled, PipelineInputError

logger = logging.getLogger(__name__)
MAX_TRANSIENT_RETRIES = 3
_INT4_MAX = 2**31 - 1  # the two-key advisory lock takes int4 keys


def run_job(job_id: int) -> None:
    """Run one job here, unless it is running on another worker, has already ended, or does not exist."""
    if not 0 < int(job_id) <= _INT4_MAX:
        logger.warning("job %s does not exist in this database (no job can have that id); message dropped", job_id)
        return
    try:
        with job_lock(job_id) as acquired:
            if not acquired:
                logger.info("job %s is running on another worker; this duplicate message is dropped", job_id)
                return
            _claim_and_run(job_id)
    except DATABASE_LOST:
        # Drop the broken connection, so that the retry (and the next task in this process) connects afresh.
        with contextlib.suppress(*DATABASE_LOST):
            connection.close()
        raise


def _executor(kind: str):
    # A sweep runs the other kinds' executors for each of its candidates, so it is kept beside them, not among them.
    if kind == Job.Kind.QUANTIZATION_SWEEP:
        return sweep_executor.execute_quantization_sweep
    return executors.EXECUTORS[kind]


def _claim_and_run(job_id: int) -> None:
    job = services.claim_job(job_id=job_id)
    if job is None:
        _log_nothing_to_do(job_id)
        return
    workdir = settings.WORK_DIR / f"job-{job_id}-{uuid.uuid4().hex[:8]}"
    workdir.mkdir(parents=True, exist_ok=True)

    def report(percent: int, message: str) -> None:
        if services.record_progress(job_id=job_id, percent=percent, message=message):
            raise JobCancelled()

    try:
        result = _executor(job.kind)(job=job, workdir=workdir, report=report)
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
    except DATABASE_LOST as error:
        # What the job wrote in its unfinished transaction was rolled back with the session; the retry redoes it
        # (registering is idempotent per job). Recording the outcome needs a fresh connection in any case.
        with contextlib.suppress(*DATABASE_LOST):
            connection.close()
        if job.attempts <= MAX_TRANSIENT_RETRIES:
            logger.warning("job %s lost its database connection (%s); retrying", job_id, error)
            raise  # the task retries with back-off
        services.fail_job(job_id=job_id, error=(
            f"The database connection was lost during each of {job.attempts} attempts; nothing was registered. "
            "Start the job again when the database is stable."))
    except Exception as error:  # an unexpected failure must still end the job visibly
        logger.exception("job %s failed", job_id)
        services.fail_job(job_id=job_id, error=f"Internal error ({type(error).__name__}: {error}). "
                                               "Nothing was registered; the administrators have the log.")
    else:
        services.finish_job(job_id=job_id, result=result)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _log_nothing_to_do(job_id: int) -> None:
    status = Job.objects.filter(pk=job_id).values_list("status", flat=True).first()
    if status is None:
        # Not ours: a message from another deployment sharing this broker, or a job deleted since it was sent.
        logger.warning("job %s does not exist in this database; message dropped (is another deployment sending "
                       "to this broker?)", job_id)
    else:
        logger.info("job %s is already %s; nothing to do", job_id, status)
