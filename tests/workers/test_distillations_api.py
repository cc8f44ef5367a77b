"""Distillation requests judged at request time: clear 4xx naming the input at fault, and nothing registered (no
distillation, job, version or dataset) by a refused request."""
import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from foundation.roles import ML_ENGINEER
from registry.models import Dataset, ModelVersion
from tests.conftest import client_for, jsonl, make_user, register_sealed_version
from workers.models import Distillation, Job

pytestmark = pytest.mark.django_db

EVAL = [{"text": "The bank raised its", "label": "interest"}, {"text": "The cat slept on the", "label": "warm"}]
TRAIN = [{"text": f"text {i}", "label": "interest" if i % 2 else "warm"} for i in range(8)]


@pytest.fixture
def setup(engineer_api, tiny_model_dir):
    register_sealed_version(engineer_api, "teacher-llm", tiny_model_dir)
    register_sealed_version(engineer_api, "student-llm", tiny_model_dir)
    engineer_api.post("/api/v1/models/teacher-llm/versions/", {"description": "draft"}, format="json")  # v2 draft

    def dataset(name, purpose, records):
        response = engineer_api.post("/api/v1/datasets/", {
            "name": name, "purpose": purpose, "file": SimpleUploadedFile("d.jsonl", jsonl(records))},
            format="multipart")
        assert response.status_code == 201, response.content
        return response.json()["id"]

    return {
        "eval": dataset("eval", "evaluation", EVAL),
        "train": dataset("train", "training", TRAIN),
        "unlabelled": dataset("texts", "training", [{"text": f"text {i}"} for i in range(8)]),
        "unknown_label": dataset("unknown", "training", [*TRAIN[:6], {"text": "x", "label": "fraud"}]),
        "rare": dataset("rare", "training", [{"text": "w", "label": "warm"},
                                             *({"text": f"i{n}", "label": "interest"} for n in range(5))]),
        "questions": dataset("questions", "evaluation", [{"prompt": "Q", "choices": ["a", "b"], "answer": 0}]),
    }


def _payload(setup, **changes):
    payload = {"teacher": {"model": "teacher-llm", "version": 1}, "students": [{"model": "student-llm", "version": 1}],
               "dataset": setup["train"], "eval_dataset": setup["eval"], "sizes": [2, 6], "lora": {"steps": 2}}
    return {**payload, **changes}


def _nothing_registered(before_versions, before_datasets):
    assert Distillation.objects.count() == 0 and Job.objects.count() == 0
    assert ModelVersion.objects.count() == before_versions and Dataset.objects.count() == before_datasets


def test_a_distillation_request_queues_one_job(engineer_api, setup):
    response = engineer_api.post("/api/v1/distillations", _payload(setup), format="json")
    assert response.status_code == 202, response.content
    body = engineer_api.get(f"/api/v1/distillations/{response.json()['id']}").json()
    assert body["status"] == "queued" and body["job"] == response.json()["job"]
    assert body["teacher"] == {"model": "teacher-llm", "version": 1}
    assert body["students"] == [{"model": "student-llm", "version": 1}]
    assert body["params"]["sizes"] == [2, 6] and body["params"]["labelled_by"] == "dataset"
    assert body["rows"] == [] and body["best"] is None
    assert Job.objects.get().kind == "distillation"


def test_without_labels_the_teacher_labels_the_texts(engineer_api, setup):
    response = engineer_api.post("/api/v1/distillations", _payload(setup, dataset=setup["unlabelled"]), format="json")
    assert response.status_code == 202, response.content
    assert Distillation.objects.get().params["labelled_by"] == "teacher"


@pytest.mark.parametrize("changes,status,field,message", [
    ({"dataset": "unknown_label"}, 422, "dataset", "Record 7 of the training dataset has the label 'fraud'"),
    ({"sizes": [2, 9]}, 400, "sizes", "Size 9 is larger than the training dataset (8 records)"),
    ({"dataset": "rare", "sizes": [2]}, 422, "dataset", "too rare for stratified subsets"),
    ({"sizes": [1]}, 422, "dataset", "cannot keep one record of each of the 2 classes"),
    ({"sizes": [2, 2]}, 400, "sizes", "the same size twice"),
    ({"teacher": {"model": "teacher-llm", "version": 2}}, 409, "teacher", "seal it"),
    ({"eval_dataset": "train"}, 400, "eval_dataset", "evaluations need an evaluation dataset"),
    ({"eval_dataset": "questions"}, 400, "eval_dataset", "not a classification set"),
    ({"dataset": "eval"}, 400, "dataset", "needs a training dataset"),
    ({"lora": {"r": 0}}, 400, "lora", "r must be an integer"),
    ({"lora": {"bogus": 1}}, 400, "lora", "Unknown LoRA setting"),
    ({"lora": {"target_modules": "q_proj"}}, 400, "lora", "target_modules must be a non-empty list"),
    ({"students": [{"model": "teacher-llm", "version": 1}]}, 400, "students", "is the teacher"),
])
def test_bad_distillation_requests_are_4xx_and_register_nothing(engineer_api, setup, changes, status, field,
                                                               message):
    before_versions, before_datasets = ModelVersion.objects.count(), Dataset.objects.count()
    changes = {key: setup.get(value, value) if isinstance(value, str) else value for key, value in changes.items()}
    response = engineer_api.post("/api/v1/distillations", _payload(setup, **changes), format="json")
    assert response.status_code == status, response.content
    assert message in response.json()["detail"] and response.json().get("field") == field
    _nothing_registered(before_versions, before_datasets)


def test_missing_versions_and_other_teams_students_are_refused(engineer_api, setup):
    before_versions, before_datasets = ModelVersion.objects.count(), Dataset.objects.count()
    missing = engineer_api.post("/api/v1/distillations",
                                _payload(setup, students=[{"model": "student-llm", "version": 7}]), format="json")
    assert missing.status_code == 404
    outsider = client_for(make_user("mallory", ML_ENGINEER, team="payments"))
    assert outsider.post("/api/v1/distillations", _payload(setup), format="json").status_code == 403
    assert engineer_api.post("/api/v1/distillations", {"teacher": {}, "students": []},
                             format="json").status_code == 400
    assert engineer_api.get("/api/v1/distillations/999999").status_code == 404
    _nothing_registered(before_versions, before_datasets)
