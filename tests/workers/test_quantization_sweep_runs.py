"""A quantization sweep's job in-process (the function the Celery task calls): cancelling it stops the candidate
being quantized and the sweep, and registers nothing."""
import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from registry.models import ModelVersion
from tests.conftest import jsonl, register_sealed_version
from workers import executors, runner
from workers.models import Job, QuantizationSweep
from workers.pipelines.tiny_model import SAMPLE_TEXTS

pytestmark = pytest.mark.django_db


@pytest.fixture
def sweep(engineer_api, tiny_model_dir):
    register_sealed_version(engineer_api, "credit-llm", tiny_model_dir)
    dataset = engineer_api.post("/api/v1/datasets/", {
        "name": "eval", "purpose": "evaluation",
        "file": SimpleUploadedFile("e.jsonl", jsonl([{"text": text} for text in SAMPLE_TEXTS[:4]]))},
        format="multipart").json()["id"]
    response = engineer_api.post("/api/v1/models/credit-llm/versions/1/quantization-sweeps", {
        "candidates": [{"method": "nf4"}, {"method": "int8"}], "dataset": dataset, "max_tokens": 16},
        format="json")
    assert response.status_code == 202, response.content
    return QuantizationSweep.objects.get(pk=response.json()["id"])


def test_cancelling_a_running_sweep_cancels_its_candidate_job_and_registers_nothing(sweep, monkeypatch):
    def cancelled_while_quantizing(*, job, workdir, report):
        Job.objects.filter(pk=sweep.job_id).update(cancel_requested=True)  # the user pressed cancel
        report(50, "Quantizing")  # the next safe point
        raise AssertionError("report should have stopped the candidate")

    monkeypatch.setattr(executors, "execute_quantize", cancelled_while_quantizing)
    runner.run_job(sweep.job_id)

    sweep.refresh_from_db()
    assert Job.objects.get(pk=sweep.job_id).status == "cancelled"
    candidate_job = Job.objects.get(pk=sweep.cells["0"]["quantize_job"])
    assert candidate_job.kind == "quantize" and candidate_job.status == "cancelled"
    assert sweep.rows == [] and sweep.recommended is None and "1" not in sweep.cells
    assert not ModelVersion.objects.filter(kind="quantized").exists()
