"""Sends again the jobs whose message the broker lost.

A job's message is sent when its row commits (services.create_job), and that message can be lost: the broker was
down at commit (the web request still succeeds), or Redis restarted and, keeping nothing on disk, forgot its
queues and the unacknowledged messages of running jobs. The Job rows are the truth, so beat runs
`workers.tasks.reconcile_queued_jobs` periodically, which sends once more:
- every job still queued (and not being cancelled) after the threshold;
- every job marked running since before the threshold that no worker is running (nobody holds its lock, see
  workers.runner): its worker died and its message is gone, or has not come back yet.

A duplicate message is harmless: `claim_job` does nothing for a finished or cancelled job, and the runner drops a
message whose job another worker is running. The cost of a duplicate is one message and one lookup, so while
jobs wait in a long queue (a busy GPU) each run of the reconciler adds one more message per waiting job: keep
the threshold above the usual wait (JOB_RECONCILE_AFTER_SECONDS).
"""
import logging
from datetime import timedelta

from django.utils import timezone

from workers.models import Job
from workers.queues import enqueue_job
from workers.job_locks import job_is_running_somewhere

logger = logging.getLogger(__name__)


def reconcile_queued_jobs(*, older_than_seconds: int) -> list[int]:
    """Re-enqueue the jobs still queued after `older_than_seconds`; returns their ids."""
    cutoff = timezone.now() - timedelta(seconds=older_than_seconds)
    jobs = list(Job.objects.filter(status=Job.Status.QUEUED, cancel_requested=False, created_at__lt=cutoff)
                .order_by("pk"))
    for job in jobs:
        enqueue_job(job)
    if jobs:
        logger.warning("re-enqueued %d job(s) still queued after %s s (their message may be lost): %s", len(jobs),
                       older_than_seconds, ", ".join(str(job.pk) for job in jobs))
    return [job.pk for job in jobs]


def reconcile_orphaned_jobs(*, older_than_seconds: int) -> list[int]:
    """Re-enqueue the jobs marked running since before `older_than_seconds` that no worker runs; their ids."""
    cutoff = timezone.now() - timedelta(seconds=older_than_seconds)
    running = Job.objects.filter(status=Job.Status.RUNNING, started_at__lt=cutoff).order_by("pk")
    # A job between two attempts (a retry waiting for its back-off) also looks orphaned; sending it again only
    # makes it retry sooner.
    jobs = [job for job in running if not job_is_running_somewhere(job.pk)]
    for job in jobs:
        enqueue_job(job)
    if jobs:
        logger.warning("re-enqueued %d job(s) marked running that no worker runs (their worker died): %s",
                       len(jobs), ", ".join(str(job.pk) for job in jobs))
    return [job.pk for job in jobs]
