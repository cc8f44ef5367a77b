"""Which queue a job goes to, and sending it there. Jobs are sent by task name, so the services that create
jobs need not import the task module (which imports the runner, which calls those services)."""
from celery import current_app
from django.conf import settings

from workers.models import Job

RUN_JOB_TASK = "workers.tasks.run_job"
# Kinds that do heavy tensor work and go to the GPU queue when one is configured.
GPU_KINDS = frozenset({Job.Kind.QUANTIZE, Job.Kind.ANALYSIS, Job.Kind.LORA})


def queue_for(kind: str) -> str:
    return settings.GPU_QUEUE if settings.GPU_QUEUE and kind in GPU_KINDS else "cpu"


def enqueue_job(job: Job) -> None:
    current_app.send_task(RUN_JOB_TASK, args=[job.pk], queue=queue_for(job.kind))
