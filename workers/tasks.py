"""Celery tasks: thin. They take a job id, and the runner does the rest."""
from celery import shared_task
from django.conf import settings

from registry.errors import StorageUnavailable
from workers import runner

# Kinds that do heavy tensor work and go to the GPU queue when one is configured.
GPU_KINDS = {"quantize", "analysis", "lora"}


def enqueue_job(job) -> None:
    queue = settings.GPU_QUEUE if settings.GPU_QUEUE and job.kind in GPU_KINDS else "cpu"
    run_job.apply_async(args=[job.pk], queue=queue)


@shared_task(
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
