"""Task gates on change requests: accuracy drop and relative F1 from a task evaluation against the version in
service, waiting for both the analysis and the evaluation, and failing closed when they cannot be measured."""
import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from foundation.models import AuditEvent
from governance.models import ChangeRequest
from registry import services as registry_services
from tests.conftest import client_for, jsonl, make_user
from tests.governance.conftest import make_analysis
from tests.governance.test_change_requests import _deploy_first, _open
from workers import services as worker_services
from workers.models import Evaluation, Job
from workers.pipelines.evaluation import compare

pytestmark = pytest.mark.django_db

LABELLED = [{"text": "The bank raised its", "label": "interest"}, {"text": "The cat slept on the", "label": "warm"}]
QUESTIONS = [{"prompt": "The bank raised its", "choices": ["rate", "cat"], "answer": 0}]


def _register(engineer, name, records, purpose="evaluation"):
    upload = SimpleUploadedFile(f"{name}.jsonl", jsonl(records))
    return registry_services.register_dataset(name=name, purpose=purpose, uploaded_file=upload, actor=engineer)


@pytest.fixture
def labelled(engineer):
    return _register(engineer, "complaints", LABELLED)


@pytest.fixture
def in_production(engineer_api, engineer, versions, approver, second_approver, evaluation_dataset):
    """v1 serves production; the analysis of v2 against it passes every default gate."""
    _deploy_first(engineer_api, approver, second_approver)
    make_analysis(reference=versions[0], candidate=versions[1], dataset=evaluation_dataset, actor=engineer)
    return versions


def _metric(value, stderr=0.01):
    return {"value": value, "stderr": stderr}


def classification_result(accuracy, macro_f1):
    return {"task_type": "classification", "metrics": {"accuracy": _metric(accuracy), "macro_f1": _metric(macro_f1)},
            "samples": 2, "confusion": {"labels": ["interest", "warm"], "matrix": [[1, 0], [0, 1]]},
            "per_class": {}, "seconds": 0.1, "harness": {"name": "lm-eval", "version": "test"}}


def with_reference(candidate: dict, reference: dict) -> dict:
    """An evaluation result as the worker stores it: the candidate's, the reference's and compare()'s deltas."""
    return {**candidate, "reference": {key: reference[key] for key in ("metrics", "per_class", "confusion")},
            "deltas": compare(reference, candidate)}


def make_evaluation(*, reference, candidate, dataset, actor, result, task_type="classification"):
    job = Job.objects.create(kind=Job.Kind.EVALUATION, status=Job.Status.SUCCEEDED, progress=100, created_by=actor,
                             source_version=candidate)
    return Evaluation.objects.create(reference=reference, candidate=candidate, dataset=dataset, job=job,
                                     task_type=task_type, created_by=actor, result=result)


def _gates(body):
    return {gate["name"]: gate for gate in body["gates"]}


def test_an_accuracy_drop_beyond_the_default_two_points_blocks_the_request(engineer_api, engineer, in_production,
                                                                           labelled, approver):
    make_evaluation(reference=in_production[0], candidate=in_production[1], dataset=labelled, actor=engineer,
                    result=with_reference(classification_result(0.77, 0.75), classification_result(0.80, 0.79)))
    body = _open(engineer_api, 2, eval_dataset=labelled.pk).json()
    assert body["status"] == "blocked" and body["status_reason"] == "Gates failed: accuracy_drop."
    drop = _gates(body)["accuracy_drop"]
    assert drop["threshold"] == 2.0 and drop["value"] == pytest.approx(3.0) and drop["passed"] is False
    assert drop["metric"] == "accuracy" and drop["stderr"] == pytest.approx(100 * (0.01**2 * 2) ** 0.5)
    assert body["policy"]["accuracy_drop_max"] == 2.0 and body["eval_dataset"] == labelled.pk
    assert client_for(approver).post(f"/api/v1/change-requests/{body['id']}/decisions",
                                     {"decision": "approve"}, format="json").status_code == 409


def test_a_drop_within_the_threshold_passes_and_the_policys_dataset_is_used(engineer_api, engineer, in_production,
                                                                            labelled):
    admin = client_for(make_user("root-admin", superuser=True))
    policy = admin.put("/api/v1/models/credit-llm/policies/production",
                       {"required_approvals": 2, "allow_override": False, "expiry_days": 7,
                        "gates": {"accuracy_drop_max": 1.5, "f1_relative_min": 0.9}, "eval_dataset": labelled.pk},
                       format="json")
    assert policy.status_code == 200, policy.content
    assert policy.json()["gates"]["accuracy_drop_max"] == 1.5 and policy.json()["eval_dataset"] == labelled.pk
    make_evaluation(reference=in_production[0], candidate=in_production[1], dataset=labelled, actor=engineer,
                    result=with_reference(classification_result(0.79, 0.77), classification_result(0.80, 0.79)))
    body = _open(engineer_api, 2).json()
    assert body["status"] == "pending", body["status_reason"]
    gates = _gates(body)
    assert gates["accuracy_drop"]["value"] == pytest.approx(1.0) and gates["accuracy_drop"]["passed"]
    assert gates["f1_relative"]["value"] == pytest.approx(0.77 / 0.79) and gates["f1_relative"]["passed"]
    assert body["evaluation"] is not None


def test_a_relative_f1_below_the_policys_minimum_blocks(engineer_api, engineer, in_production, labelled):
    admin = client_for(make_user("root-admin", superuser=True))
    admin.put("/api/v1/models/credit-llm/policies/production",
              {"required_approvals": 2, "allow_override": False, "expiry_days": 7, "gates": {"f1_relative_min": 0.9}},
              format="json")
    make_evaluation(reference=in_production[0], candidate=in_production[1], dataset=labelled, actor=engineer,
                    result=with_reference(classification_result(0.80, 0.64), classification_result(0.80, 0.80)))
    body = _open(engineer_api, 2, eval_dataset=labelled.pk).json()
    assert body["status"] == "blocked" and "f1_relative" in body["status_reason"]
    assert _gates(body)["f1_relative"]["value"] == pytest.approx(0.8)
    assert _gates(body)["accuracy_drop"]["passed"]  # the default accuracy gate holds: no drop


def test_task_gates_without_an_evaluation_dataset_fail_closed(engineer_api, in_production):
    admin = client_for(make_user("root-admin", superuser=True))
    admin.put("/api/v1/models/credit-llm/policies/production",
              {"required_approvals": 2, "allow_override": False, "expiry_days": 7, "gates": {"accuracy_drop_max": 1}},
              format="json")
    body = _open(engineer_api, 2).json()
    assert body["status"] == "blocked" and body["evaluation"] is None
    drop = _gates(body)["accuracy_drop"]
    assert drop["passed"] is False and drop["value"] is None and "no evaluation dataset was named" in drop["note"]
    assert Evaluation.objects.count() == 0


def test_a_multiple_choice_set_cannot_measure_f1_and_fails_closed(engineer_api, engineer, in_production):
    questions = _register(engineer, "questions", QUESTIONS)
    admin = client_for(make_user("root-admin", superuser=True))
    admin.put("/api/v1/models/credit-llm/policies/production",
              {"required_approvals": 2, "allow_override": False, "expiry_days": 7, "gates": {"f1_relative_min": 0.9}},
              format="json")
    mc = {"task_type": "multiple_choice", "metrics": {"acc": _metric(1.0), "acc_norm": _metric(1.0)}, "samples": 1}
    make_evaluation(reference=in_production[0], candidate=in_production[1], dataset=questions, actor=engineer,
                    task_type="multiple_choice", result={**mc, "reference": {"metrics": mc["metrics"]},
                                                         "deltas": compare(mc, mc)})
    body = _open(engineer_api, 2, eval_dataset=questions.pk).json()
    assert body["status"] == "blocked"
    gates = _gates(body)
    assert gates["accuracy_drop"]["passed"] and gates["accuracy_drop"]["metric"] == "acc"
    assert gates["f1_relative"]["passed"] is False and "multiple-choice set has no F1" in gates["f1_relative"]["note"]


def test_gates_wait_for_the_evaluation_then_come_from_it(engineer_api, engineer, in_production, labelled):
    body = _open(engineer_api, 2, eval_dataset=labelled.pk).json()
    assert body["status"] == "analysing" and body["gates"] == []
    evaluation = Evaluation.objects.get(pk=body["evaluation"])
    assert (evaluation.reference.number, evaluation.candidate.number, evaluation.limit) == (1, 2, None)
    assert evaluation.job.kind == Job.Kind.EVALUATION and evaluation.task_type == "classification"

    # What the worker does when the evaluation finishes: record the result, which announces it.
    worker_services.record_evaluation_result(
        evaluation_id=evaluation.pk,
        result=with_reference(classification_result(0.70, 0.70), classification_result(0.80, 0.80)))
    gated = engineer_api.get(f"/api/v1/change-requests/{body['id']}/").json()
    assert gated["status"] == "blocked" and _gates(gated)["accuracy_drop"]["value"] == pytest.approx(10.0)
    assert AuditEvent.objects.filter(action="change_request.gated", object_id=str(body["id"])).exists()


def test_a_failed_evaluation_blocks_the_waiting_request_with_the_reason(engineer_api, in_production, labelled):
    body = _open(engineer_api, 2, eval_dataset=labelled.pk).json()
    evaluation = Evaluation.objects.get(pk=body["evaluation"])
    worker_services.fail_job(job_id=evaluation.job_id, error="The model in /x cannot be loaded")
    blocked = ChangeRequest.objects.get(pk=body["id"])
    assert blocked.status == "blocked"
    assert "task evaluation failed" in blocked.status_reason and "cannot be loaded" in blocked.status_reason


def test_an_evaluation_dataset_that_poses_no_task_is_refused(engineer_api, engineer, in_production,
                                                             evaluation_dataset):
    before = ChangeRequest.objects.count()
    refused = _open(engineer_api, 2, eval_dataset=evaluation_dataset.pk)  # {"text"} records: no labels
    assert refused.status_code == 422 and "Record 1 fits no task type" in refused.json()["detail"]
    assert refused.json()["field"] == "eval_dataset"
    training = _register(engineer, "train", [{"text": "a b"}], purpose="training")
    assert _open(engineer_api, 2, eval_dataset=training.pk).status_code == 400
    assert _open(engineer_api, 2, eval_dataset=999999).status_code == 404
    assert ChangeRequest.objects.count() == before and Evaluation.objects.count() == 0

    admin = client_for(make_user("root-admin", superuser=True))
    bad_policy = admin.put("/api/v1/models/credit-llm/policies/production",
                           {"required_approvals": 2, "allow_override": False, "expiry_days": 7, "gates": {},
                            "eval_dataset": evaluation_dataset.pk}, format="json")
    assert bad_policy.status_code == 422 and bad_policy.json()["field"] == "eval_dataset"
    out_of_range = admin.put("/api/v1/models/credit-llm/policies/production",
                             {"required_approvals": 2, "allow_override": False, "expiry_days": 7,
                              "gates": {"accuracy_drop_max": -1}}, format="json")
    assert out_of_range.status_code == 400 and "accuracy points" in out_of_range.json()["detail"]
    assert admin.get("/api/v1/models/credit-llm/policies/production").json()["eval_dataset"] is None


def test_when_the_alias_moves_the_evaluation_is_redone_against_the_new_version(engineer_api, engineer, in_production,
                                                                              labelled, evaluation_dataset, approver,
                                                                              second_approver):
    v1, v2, v3 = in_production
    make_analysis(reference=v1, candidate=v3, dataset=evaluation_dataset, actor=engineer)
    make_evaluation(reference=v1, candidate=v3, dataset=labelled, actor=engineer,
                    result=with_reference(classification_result(0.80, 0.79), classification_result(0.80, 0.79)))
    waiting = _open(engineer_api, 3, eval_dataset=labelled.pk).json()
    assert waiting["status"] == "pending"
    moved = _open(engineer_api, 2).json()
    for user in (approver, second_approver):
        client_for(user).post(f"/api/v1/change-requests/{moved['id']}/decisions", {"decision": "approve"},
                              format="json")

    stale = engineer_api.get(f"/api/v1/change-requests/{waiting['id']}/").json()
    assert stale["status"] == "stale" and stale["from_version"] == 2
    redone = Evaluation.objects.get(pk=stale["evaluation"])
    assert (redone.reference.number, redone.candidate.number, redone.result) == (2, 3, None)
    assert redone.job.status == "queued"


def test_a_new_adapter_is_evaluated_on_the_production_policys_labelled_set(engineer, in_production, labelled,
                                                                          tiny_model_dir, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from governance import services as governance_services
    from registry.models import LineageEdge, ModelVersion

    admin = client_for(make_user("root-admin", superuser=True))
    admin.put("/api/v1/models/credit-llm/policies/production",
              {"required_approvals": 2, "allow_override": False, "expiry_days": 7, "gates": {},
               "eval_dataset": labelled.pk}, format="json")
    adapter_dir = tmp_path / "adapter"
    get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                   LoraConfig(r=2, target_modules=["q_proj"])).save_pretrained(str(adapter_dir))
    job = Job.objects.create(kind=Job.Kind.LORA, status=Job.Status.SUCCEEDED, created_by=engineer,
                             source_version=in_production[0])
    adapter = registry_services.register_derived_version(
        parent=in_production[0], job=job, local_dir=adapter_dir, kind=ModelVersion.Kind.LORA,
        relation=LineageEdge.Relation.ADAPTED_FROM, metadata={}, actor=engineer)

    governance_services.compare_adapter_with_production(version=adapter)
    evaluation = Evaluation.objects.get(candidate=adapter)
    assert (evaluation.reference, evaluation.dataset, evaluation.job.status) == (in_production[0], labelled, "queued")
    governance_services.compare_adapter_with_production(version=adapter)  # once only
    assert Evaluation.objects.filter(candidate=adapter).count() == 1
