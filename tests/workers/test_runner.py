"""The job runner in-process (the same function the Celery task calls): retries after a crash never register
twice, time limits end a job with a clear error, finished jobs are not run again."""
import pytest
from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings

from registry.models import ModelVersion
from tests.conftest import register_sealed_version
from workers import executors, runner
from workers.models import Job

pytestmark = pytest.mark.django_db


@pytest.fixture
def quantize_job(engineer_api, tiny_model_dir):
    register_sealed_version(engineer_api, "credit-llm", tiny_model_dir)
    job_id = engineer_api.post("/api/v1/models/credit-llm/versions/1/quantize", {"method": "int8"},
                               format="json").json()["job"]
    return Job.objects.get(pk=job_id)


def test_retry_after_a_crash_between_registering_and_finishing_registers_once(quantize_job, tmp_path):
    # First attempt: the version got registered, then the worker died before the job was marked succeeded.
    Job.objects.filter(pk=quantize_job.pk).update(status="running")
    executors.execute_quantize(job=Job.objects.get(pk=quantize_job.pk), workdir=tmp_path, report=lambda p, m: None)
    runner.run_job(quantize_job.pk)  # the redelivered message
    job = Job.objects.get(pk=quantize_job.pk)
    assert job.status == "succeeded" and (job.result["model"], job.result["version"]) == ("credit-llm", 2)
    assert job.result["peak_rss_bytes"] > 0  # the worker's memory high-water mark during the job
    assert ModelVersion.objects.filter(kind="quantized").count() == 1
    runner.run_job(quantize_job.pk)  # a duplicate delivery of a finished job does nothing
    assert ModelVersion.objects.filter(kind="quantized").count() == 1


def test_time_limit_fails_the_job_with_advice_and_registers_nothing(quantize_job, monkeypatch):
    def too_slow(**kwargs):
        raise SoftTimeLimitExceeded()

    monkeypatch.setitem(executors.EXECUTORS, "quantize", too_slow)
    runner.run_job(quantize_job.pk)
    job = Job.objects.get(pk=quantize_job.pk)
    assert job.status == "failed" and f"limit of {settings.JOB_TIME_LIMIT_SECONDS} s" in job.error
    assert not ModelVersion.objects.filter(kind="quantized").exists()


def test_scratch_directory_is_removed_whatever_happens(quantize_job):
    runner.run_job(quantize_job.pk)
    assert not list(settings.WORK_DIR.glob(f"job-{quantize_job.pk}-*"))
