"""Which queue a job goes to, and sending it there. Jobs are sent by task name, so the services that create
jobs need not import the task module (which imports the runner, which calls those services)."""
import logging

from celery import current_app
from django.conf import settings
from kombu.exceptions import OperationalError

from workers.models import Job

RUN_JOB_TASK = "workers.tasks.run_job"
# Kinds that do heavy tensor work and go to the GPU queue when one is configured.
GPU_KINDS = frozenset({Job.Kind.QUANTIZE, Job.Kind.ANALYSIS, Job.Kind.LORA, Job.Kind.EVALUATION,
                       Job.Kind.DISTILLATION})


def queue_for(kind: str) -> str:
    return settings.GPU_QUEUE if settings.GPU_QUEUE and kind in GPU_KINDS else "cpu"


logger = logging.getLogger(__name__)


def enqueue_job(job: Job) -> None:
    """Send the job to its queue. A broker that cannot take it does not fail the request that committed the job:
    the row stays queued and the periodic reconciler (workers/reconciler.py) sends it again."""
    try:
        current_app.send_task(RUN_JOB_TASK, args=[job.pk], queue=queue_for(job.kind))
    except (OperationalError, OSError) as error:
        logger.warning("could not send job %s to the broker (%s); the reconciler will send it", job.pk, error)
