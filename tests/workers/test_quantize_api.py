"""Quantization requests that can be judged at request time get a clear 4xx and create no job."""
import pytest

from tests.conftest import client_for, register_sealed_version
from workers.models import Job

pytestmark = pytest.mark.django_db


@pytest.fixture
def sealed(engineer_api, tiny_model_dir):
    return register_sealed_version(engineer_api, "credit-llm", tiny_model_dir)


URL = "/api/v1/models/credit-llm/versions/1/quantize"


def test_quantize_request_queues_a_job_with_progress_fields(engineer_api, sealed, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        response = engineer_api.post(URL, {"method": "nf4", "double_quant": True}, format="json")
    assert response.status_code == 202
    job = engineer_api.get(f"/api/v1/jobs/{response.json()['job']}").json()
    assert job["kind"] == "quantize" and job["status"] == "queued" and job["progress"] == 0
    assert job["params"] == {"method": "nf4", "compute_dtype": "float32", "double_quant": True,
                             "skip_modules": ["lm_head"]}
    assert len(callbacks) == 1  # enqueued only once the transaction commits


@pytest.mark.parametrize("payload,field", [
    ({"method": "int3"}, "method"),
    ({"method": "nf4", "compute_dtype": "float8"}, "compute_dtype"),
    ({"method": "nf4", "skip_modules": ["no_such_module"]}, "no_such_module"),
    ({}, "method"),
])
def test_bad_quantize_settings_are_a_400_and_create_no_job(engineer_api, sealed, payload, field):
    response = engineer_api.post(URL, payload, format="json")
    assert response.status_code == 400
    assert field in response.json()["detail"]
    assert Job.objects.count() == 0


def test_quantizing_a_draft_is_a_conflict(engineer_api):
    engineer_api.post("/api/v1/models/", {"name": "credit-llm"}, format="json")
    engineer_api.post("/api/v1/models/credit-llm/versions/", {}, format="json")
    response = engineer_api.post(URL, {"method": "nf4"}, format="json")
    assert response.status_code == 409 and "seal" in response.json()["detail"]
    assert Job.objects.count() == 0


def test_only_engineers_start_quantization(sealed, regulator, approver):
    for user in (regulator, approver):
        assert client_for(user).post(URL, {"method": "nf4"}, format="json").status_code == 403
    assert Job.objects.count() == 0


def test_cancelling_a_queued_job_cancels_it_at_once(engineer_api, sealed):
    job_id = engineer_api.post(URL, {"method": "nf4"}, format="json").json()["job"]
    assert engineer_api.post(f"/api/v1/jobs/{job_id}/cancel").json()["status"] == "cancelled"
    assert engineer_api.post(f"/api/v1/jobs/{job_id}/cancel").status_code == 409


def test_unknown_job_is_404(engineer_api):
    assert engineer_api.get("/api/v1/jobs/999999").status_code == 404
