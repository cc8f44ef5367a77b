"""Task evaluation requests judged at request time: the task type read from the dataset's records, clear 4xx
naming what is wrong, team and role checks, and no job or evaluation row left behind by a refused request."""
import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from foundation.models import AuditEvent
from foundation.roles import APPROVER, ML_ENGINEER
from tests.conftest import client_for, jsonl, make_user, register_sealed_version
from workers.models import Evaluation, Job

pytestmark = pytest.mark.django_db

CLASSIFICATION = [{"text": "The bank raised its", "label": "interest"},
                  {"text": "The cat slept on the", "label": "warm"},
                  {"text": "The fraud team blocked the", "label": "card"}]
MULTIPLE_CHOICE = [{"prompt": "The bank raised its", "choices": ["rate", "cat"], "answer": 0}]


@pytest.fixture
def setup(engineer_api, tiny_model_dir):
    register_sealed_version(engineer_api, "credit-llm", tiny_model_dir)
    register_sealed_version(engineer_api, "credit-llm", tiny_model_dir)
    engineer_api.post("/api/v1/models/credit-llm/versions/", {"description": "draft"}, format="json")  # v3, draft

    def dataset(name, purpose, records):
        response = engineer_api.post("/api/v1/datasets/", {
            "name": name, "purpose": purpose, "file": SimpleUploadedFile("d.jsonl", jsonl(records))},
            format="multipart")
        assert response.status_code == 201, response.content
        return response.json()["id"]

    return {
        "classification": dataset("labelled", "evaluation", CLASSIFICATION),
        "multiple_choice": dataset("questions", "evaluation", MULTIPLE_CHOICE),
        "unlabelled": dataset("plain", "evaluation", [{"text": "The bank raised its rate."}]),
        "third_unlabelled": dataset("mixed", "evaluation", [*CLASSIFICATION[:2], {"text": "no label here"}]),
        "one_label": dataset("one-label", "evaluation", [{"text": "a", "label": "x"}, {"text": "b", "label": "x"}]),
        "training": dataset("train", "training", [{"text": "a b c"}]),
    }


def _evaluate(api, payload, version=2):
    return api.post(f"/api/v1/models/credit-llm/versions/{version}/evaluations", payload, format="json")


def test_an_evaluation_request_queues_a_job_and_records_the_task_type(engineer_api, setup):
    response = _evaluate(engineer_api, {"dataset": setup["classification"], "reference": 1, "limit": 2})
    assert response.status_code == 202, response.content
    body = response.json()
    evaluation = engineer_api.get(f"/api/v1/evaluations/{body['evaluation']}").json()
    assert evaluation["status"] == "queued" and evaluation["job"] == body["job"]
    assert evaluation["task_type"] == "classification" and evaluation["limit"] == 2
    assert evaluation["candidate"] == {"model": "credit-llm", "version": 2}
    assert evaluation["reference"] == {"model": "credit-llm", "version": 1}
    assert evaluation["metrics"] is None and evaluation["deltas"] is None
    job = engineer_api.get(f"/api/v1/jobs/{body['job']}").json()
    assert job["kind"] == "evaluation" and job["params"] == {"limit": 2}
    assert AuditEvent.objects.filter(action="evaluation.requested", object_id=str(body["evaluation"])).exists()
    listed = engineer_api.get("/api/v1/models/credit-llm/versions/2/evaluations").json()
    assert [item["id"] for item in listed] == [body["evaluation"]]


def test_a_multiple_choice_set_is_evaluated_without_a_reference(engineer_api, setup):
    response = _evaluate(engineer_api, {"dataset": setup["multiple_choice"]}, version=1)
    assert response.status_code == 202, response.content
    evaluation = engineer_api.get(f"/api/v1/evaluations/{response.json()['evaluation']}/").json()
    assert evaluation["task_type"] == "multiple_choice" and evaluation["reference"] is None


@pytest.mark.parametrize("dataset,extra,status,field,message", [
    ("training", {}, 400, "dataset", "evaluations need an evaluation dataset"),
    ("unlabelled", {}, 422, "dataset", "Record 1 fits no task type (its keys: text)"),
    ("third_unlabelled", {}, 422, "dataset", "Record 3 fits no task type"),
    ("one_label", {}, 422, "dataset", "at least two different labels"),
    ("classification", {"limit": 0}, 400, "limit", "greater than or equal to 1"),
    ("classification", {"batch_size": 100000}, 400, "batch_size", "less than or equal to 256"),
    ("classification", {"classification_prompt": "no placeholder"}, 400, "classification_prompt", "{text}"),
    ("classification", {"classification_prompt": "{text} {other}"}, 400, "classification_prompt", "{text}"),
    ("classification", {"reference": 3}, 409, None, "draft"),
])
def test_bad_evaluation_requests_are_4xx_naming_the_problem_and_create_nothing(engineer_api, setup, dataset, extra,
                                                                               status, field, message):
    response = _evaluate(engineer_api, {"dataset": setup[dataset], **extra})
    assert response.status_code == status, response.content
    body = response.json()
    assert message in body["detail"]
    if field:
        assert body.get("field") == field
    assert Evaluation.objects.count() == 0 and Job.objects.count() == 0


def test_a_draft_candidate_is_refused(engineer_api, setup):
    response = _evaluate(engineer_api, {"dataset": setup["classification"]}, version=3)
    assert response.status_code == 409 and "seal it" in response.json()["detail"]
    assert Evaluation.objects.count() == 0 and Job.objects.count() == 0


def test_missing_versions_datasets_and_evaluations_are_404(engineer_api, setup):
    assert _evaluate(engineer_api, {"dataset": setup["classification"], "reference": 9}).status_code == 404
    assert _evaluate(engineer_api, {"dataset": 999999}).status_code == 404
    assert _evaluate(engineer_api, {"dataset": setup["classification"]}, version=9).status_code == 404
    missing = engineer_api.get("/api/v1/evaluations/999999")
    assert missing.status_code == 404 and missing.json()["error"] == "not_found"
    assert Evaluation.objects.count() == 0 and Job.objects.count() == 0


def test_only_engineers_of_the_models_team_may_evaluate(setup):
    outsider = client_for(make_user("mallory", ML_ENGINEER, team="payments"))
    response = _evaluate(outsider, {"dataset": setup["classification"]})
    assert response.status_code == 403 and response.json()["error"] == "forbidden"
    approver = client_for(make_user("dave", APPROVER))
    assert _evaluate(approver, {"dataset": setup["classification"]}).status_code == 403
    assert _evaluate(client_for(None), {"dataset": setup["classification"]}).status_code == 401
    assert Evaluation.objects.count() == 0 and Job.objects.count() == 0
