"""The reconciler sends again the jobs whose broker message was lost, and what makes a duplicate harmless: the
runner drops a message for a job that is unknown, already finished, or running on another worker (its lock)."""
import base64
import json
import logging
from datetime import timedelta

import psycopg
import pytest
import redis
from django.conf import settings
from django.db import connection
from django.utils import timezone

from workers import reconciler, runner, tasks
from workers.models import Job
from workers.queues import RUN_JOB_TASK

pytestmark = pytest.mark.django_db


def _job(user, *, status=Job.Status.QUEUED, age_seconds=600, **fields) -> Job:
    job = Job.objects.create(kind=Job.Kind.QUANTIZE, params={"method": "int8"}, created_by=user, status=status,
                             **fields)
    then = timezone.now() - timedelta(seconds=age_seconds)
    Job.objects.filter(pk=job.pk).update(created_at=then, started_at=then if status == Job.Status.RUNNING else None)
    return Job.objects.get(pk=job.pk)


def _take_sent_messages(job_ids) -> list[int]:
    """The run_job messages for these jobs now in the broker's cpu queue (the real Redis), removed from it."""
    client = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    queue = settings.CELERY_BROKER_TRANSPORT_OPTIONS.get("global_keyprefix", "") + "cpu"
    found = []
    for raw in client.lrange(queue, 0, -1):
        message = json.loads(raw)
        if message["headers"].get("task") != RUN_JOB_TASK:
            continue
        args = json.loads(base64.b64decode(message["body"]))[0]
        if args[0] in job_ids:
            found.append(args[0])
            client.lrem(queue, 1, raw)
    return sorted(found)


class OtherWorkerSession:
    """A second database session holding a job's lock, as the worker running that job does."""

    def __init__(self, job_id: int):
        info = connection.settings_dict
        self.connection = psycopg.connect(host=info["HOST"] or "127.0.0.1", port=info["PORT"] or 5432,
                                          user=info["USER"] or "postgres", password=info["PASSWORD"] or None,
                                          dbname=info["NAME"], autocommit=True)
        self.connection.execute("SELECT pg_advisory_lock(%s, %s)", [runner.JOB_LOCK_NAMESPACE, job_id])

    def close(self) -> None:
        self.connection.close()  # the session ends, and its lock with it, as when a worker dies


def test_old_queued_jobs_are_sent_again_and_named_in_the_log(engineer, caplog):
    lost = [_job(engineer), _job(engineer)]
    with caplog.at_level(logging.WARNING, logger="workers.reconciler"):
        sent = reconciler.reconcile_queued_jobs(older_than_seconds=120)
    assert sent == [job.pk for job in lost]
    assert _take_sent_messages(sent) == sent
    assert caplog.messages == [f"re-enqueued 2 job(s) still queued after 120 s (their message may be lost): "
                               f"{lost[0].pk}, {lost[1].pk}"]


def test_recent_cancelled_running_and_finished_jobs_are_not_sent(engineer, caplog):
    candidates = [
        _job(engineer, age_seconds=30),  # its message is probably still on its way
        _job(engineer, cancel_requested=True),
        _job(engineer, status=Job.Status.SUCCEEDED),
        _job(engineer, status=Job.Status.CANCELLED),
        _job(engineer, status=Job.Status.FAILED),
    ]
    with caplog.at_level(logging.INFO, logger="workers.reconciler"):
        assert reconciler.reconcile_queued_jobs(older_than_seconds=120) == []
    assert _take_sent_messages([job.pk for job in candidates]) == []
    assert "re-enqueued" not in caplog.text


def test_a_running_job_no_worker_holds_is_sent_again_but_not_one_a_worker_runs(engineer):
    orphan = _job(engineer, status=Job.Status.RUNNING)
    running = _job(engineer, status=Job.Status.RUNNING)
    just_started = _job(engineer, status=Job.Status.RUNNING, age_seconds=5)
    other_worker = OtherWorkerSession(running.pk)
    try:
        assert runner.job_is_running_somewhere(running.pk) and not runner.job_is_running_somewhere(orphan.pk)
        sent = reconciler.reconcile_orphaned_jobs(older_than_seconds=120)
    finally:
        other_worker.close()
    assert sent == [orphan.pk]
    assert _take_sent_messages([orphan.pk, running.pk, just_started.pk]) == [orphan.pk]


def test_the_periodic_task_uses_the_configured_threshold(engineer, settings):
    settings.JOB_RECONCILE_AFTER_SECONDS = 3600
    recent, old = _job(engineer, age_seconds=600), _job(engineer, age_seconds=7200)
    assert tasks.reconcile_queued_jobs.name == "workers.tasks.reconcile_queued_jobs"
    tasks.reconcile_queued_jobs()  # the task body, run here as beat would have a worker run it
    assert _take_sent_messages([recent.pk, old.pk]) == [old.pk]


def test_a_message_for_a_job_that_does_not_exist_is_dropped_with_a_warning_naming_it(caplog):
    with caplog.at_level(logging.INFO, logger="workers.runner"):
        runner.run_job(987654321)
    [record] = [r for r in caplog.records if "987654321" in r.getMessage()]
    assert record.levelno == logging.WARNING and "does not exist in this database" in record.getMessage()


@pytest.mark.parametrize("status", [Job.Status.SUCCEEDED, Job.Status.FAILED, Job.Status.CANCELLED])
def test_a_duplicate_for_a_finished_job_does_nothing_and_says_so_at_info(engineer, caplog, status):
    job = _job(engineer, status=status, attempts=1)
    with caplog.at_level(logging.INFO, logger="workers.runner"):
        runner.run_job(job.pk)
    [record] = [r for r in caplog.records if f"job {job.pk}" in r.getMessage()]
    assert record.levelno == logging.INFO and f"is already {status}" in record.getMessage()
    assert Job.objects.get(pk=job.pk).attempts == 1


def test_a_duplicate_for_a_job_running_on_another_worker_is_dropped_without_claiming_it(engineer, caplog):
    job = _job(engineer, status=Job.Status.RUNNING, attempts=1, worker="gpu-host-1")
    other_worker = OtherWorkerSession(job.pk)
    try:
        with caplog.at_level(logging.INFO, logger="workers.runner"):
            runner.run_job(job.pk)
    finally:
        other_worker.close()
    job.refresh_from_db()
    assert (job.status, job.attempts, job.worker) == ("running", 1, "gpu-host-1")  # claim_job was never called
    assert f"job {job.pk} is running on another worker" in caplog.text


def test_the_runner_releases_the_job_lock_whatever_the_outcome(engineer):
    job = _job(engineer, status=Job.Status.SUCCEEDED)
    runner.run_job(job.pk)
    assert not runner.job_is_running_somewhere(job.pk)
    kindless = _job(engineer)
    Job.objects.filter(pk=kindless.pk).update(kind=Job.Kind.REPORT)  # no executor: an internal error
    runner.run_job(kindless.pk)
    assert Job.objects.get(pk=kindless.pk).status == "failed"
    assert not runner.job_is_running_somewhere(kindless.pk)
