"""Analysis and LoRA requests judged at request time: clear 4xx, no job, no analysis row."""
import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from tests.conftest import jsonl, register_sealed_version
from workers.models import Analysis, Job

pytestmark = pytest.mark.django_db


@pytest.fixture
def setup(engineer_api, tiny_model_dir):
    register_sealed_version(engineer_api, "credit-llm", tiny_model_dir)
    register_sealed_version(engineer_api, "credit-llm", tiny_model_dir)

    def dataset(purpose, records):
        return engineer_api.post("/api/v1/datasets/", {
            "name": purpose, "purpose": purpose, "file": SimpleUploadedFile("d.jsonl", jsonl(records))},
            format="multipart").json()["id"]

    return {"evaluation": dataset("evaluation", [{"text": "a b c"}]),
            "training": dataset("training", [{"text": "a b c"}])}


def test_analysis_request_queues_a_job_and_an_analysis(engineer_api, setup):
    response = engineer_api.post("/api/v1/models/credit-llm/versions/2/analyses",
                                 {"reference": 1, "dataset": setup["evaluation"]}, format="json")
    assert response.status_code == 202
    analysis = engineer_api.get(f"/api/v1/analyses/{response.json()['analysis']}").json()
    assert analysis["status"] == "queued" and analysis["reference"]["version"] == 1


@pytest.mark.parametrize("payload,message", [
    ({"reference": 1, "dataset": "training"}, "evaluation dataset"),
    ({"reference": 1, "dataset": "evaluation", "max_tokens": 5}, "max_tokens"),
    ({"reference": 1, "dataset": "evaluation", "max_tokens": 10**9}, "max_tokens"),
    ({"reference": 1, "dataset": "evaluation", "top_k": 0}, "top_k"),
    ({"dataset": "evaluation"}, "no parent version"),
])
def test_bad_analysis_requests_are_400(engineer_api, setup, payload, message):
    payload = {**payload, "dataset": setup[payload["dataset"]]}
    response = engineer_api.post("/api/v1/models/credit-llm/versions/2/analyses", payload, format="json")
    assert response.status_code == 400 and message in response.json()["detail"]
    assert Analysis.objects.count() == 0 and Job.objects.count() == 0


def test_missing_reference_or_dataset_is_404(engineer_api, setup):
    response = engineer_api.post("/api/v1/models/credit-llm/versions/2/analyses",
                                 {"reference": 9, "dataset": setup["evaluation"]}, format="json")
    assert response.status_code == 404
    response = engineer_api.post("/api/v1/models/credit-llm/versions/2/analyses",
                                 {"reference": 1, "dataset": 999999}, format="json")
    assert response.status_code == 404
    assert Job.objects.count() == 0


@pytest.mark.parametrize("payload,message", [
    ({"dataset": "evaluation"}, "training dataset"),
    ({"dataset": "training", "r": 0}, "r"),
    ({"dataset": "training", "dropout": 1.5}, "dropout"),
    ({"dataset": "training", "steps": 0}, "steps"),
    ({"dataset": "training", "learning_rate": -1}, "learning_rate"),
])
def test_bad_lora_requests_are_400_and_create_no_job(engineer_api, setup, payload, message):
    payload = {**payload, "dataset": setup[payload["dataset"]]}
    response = engineer_api.post("/api/v1/models/credit-llm/versions/1/lora-updates", payload, format="json")
    assert response.status_code == 400 and message in response.json()["detail"]
    assert Job.objects.count() == 0


def test_lora_request_queues_a_job(engineer_api, setup):
    response = engineer_api.post("/api/v1/models/credit-llm/versions/1/lora-updates",
                                 {"dataset": setup["training"], "r": 4, "steps": 5}, format="json")
    assert response.status_code == 202
    assert Job.objects.get().params == {"dataset": setup["training"], "r": 4, "steps": 5}
