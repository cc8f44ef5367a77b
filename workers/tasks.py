"""Celery tasks: thin. They take a job id, and the runner does the rest."""
from celery import shared_task
from django.conf import settings

from foundation.errors import StorageUnavailable
from workers import runner
from workers.queues import RUN_JOB_TASK


@shared_task(
    name=RUN_JOB_TASK,
    acks_late=True,
    reject_on_worker_lost=True,
    autoretry_for=(StorageUnavailable,),
    retry_backoff=5,
    retry_backoff_max=120,
    max_retries=runner.MAX_TRANSIENT_RETRIES,
    soft_time_limit=settings.JOB_TIME_LIMIT_SECONDS,
    time_limit=settings.JOB_TIME_LIMIT_SECONDS + 60,
)
def run_job(job_id: int) -> None:
    runner.run_job(job_id)
