"""Celery tasks: thin. They take a job id, and the runner does the rest; beat runs the reconciler."""
from celery import shared_task
from django.conf import settings

from foundation.errors import StorageUnavailable
from workers import reconciler, runner
from workers.queues import RUN_JOB_TASK

RECONCILE_TASK = "workers.tasks.reconcile_queued_jobs"


@shared_task(
    name=RUN_JOB_TASK,
    acks_late=True,
    reject_on_worker_lost=True,
    # Only transient outages of the two services a job needs; the runner fails the job for good after
    # MAX_TRANSIENT_RETRIES attempts.
    autoretry_for=(StorageUnavailable, *runner.DATABASE_LOST),
    retry_backoff=5,
    retry_backoff_max=120,
    max_retries=runner.MAX_TRANSIENT_RETRIES,
    soft_time_limit=settings.JOB_TIME_LIMIT_SECONDS,
    time_limit=settings.JOB_TIME_LIMIT_SECONDS + 60,
)
def run_job(job_id: int) -> None:
    runner.run_job(job_id)


@shared_task(name=RECONCILE_TASK, ignore_result=True)
def reconcile_queued_jobs() -> None:
    """Send again the jobs whose message the broker lost (periodic, from beat; missing a run is harmless)."""
    threshold = settings.JOB_RECONCILE_AFTER_SECONDS
    reconciler.reconcile_queued_jobs(older_than_seconds=threshold)
    reconciler.reconcile_orphaned_jobs(older_than_seconds=threshold)
