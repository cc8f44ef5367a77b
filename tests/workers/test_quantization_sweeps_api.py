"""Quantization sweep requests judged at request time (every candidate by the quantize endpoint's own checks: a bad
one is a 4xx naming its index and field, and nothing is created), and the table's gates and recommendation as
governance computes them from each recorded row."""
import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from governance.models import Policy
from registry.models import ModelVersion
from tests.conftest import client_for, jsonl, make_user, register_sealed_version
from tests.governance.conftest import make_analysis
from workers import sweep_services
from workers.models import Analysis, Job, QuantizationSweep
from workers.pipelines.tiny_model import SAMPLE_TEXTS

pytestmark = pytest.mark.django_db

URL = "/api/v1/models/credit-llm/versions/1/quantization-sweeps"


@pytest.fixture
def setup(engineer_api, tiny_model_dir):
    register_sealed_version(engineer_api, "credit-llm", tiny_model_dir)
    engineer_api.post("/api/v1/models/credit-llm/versions/", {"description": "draft"}, format="json")  # v2 draft

    def dataset(purpose, texts):
        response = engineer_api.post("/api/v1/datasets/", {
            "name": f"{purpose}-{len(texts)}", "purpose": purpose,
            "file": SimpleUploadedFile("d.jsonl", jsonl([{"text": text} for text in texts]))}, format="multipart")
        assert response.status_code == 201, response.content
        return response.json()["id"]

    return {"evaluation": dataset("evaluation", SAMPLE_TEXTS[:8]),
            "calibration": dataset("calibration", SAMPLE_TEXTS[:20]),
            "small_calibration": dataset("calibration", SAMPLE_TEXTS[:3])}


def _payload(setup, **changes):
    return {"candidates": [{"method": "nf4"}, {"method": "int8"}], "dataset": setup["evaluation"], **changes}


def _nothing_created():
    assert QuantizationSweep.objects.count() == 0 and Job.objects.count() == 0 and Analysis.objects.count() == 0


def test_a_sweep_request_queues_one_job_with_each_candidate_checked(engineer_api, setup,
                                                                     django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        response = engineer_api.post(URL, _payload(setup, candidates=[
            {"method": "nf4", "double_quant": True},
            {"method": "gptq", "bits": 4, "group_size": 32, "calibration_dataset": setup["calibration"]}],
            alias="production", max_tokens=64), format="json")
    assert response.status_code == 202, response.content
    body = engineer_api.get(f"/api/v1/quantization-sweeps/{response.json()['id']}").json()
    assert body["status"] == "queued" and body["job"] == response.json()["job"]
    assert body["source"] == {"model": "credit-llm", "version": 1} and body["alias"] == "production"
    nf4, gptq = body["params"]["candidates"]
    assert nf4 == {"method": "nf4", "compute_dtype": "float32", "double_quant": True, "skip_modules": ["lm_head"]}
    assert gptq["method"] == "gptq" and gptq["sym"] is True and gptq["calibration_dataset"] == setup["calibration"]
    assert body["params"]["analysis"] == {"max_tokens": 64, "top_k": 5}
    assert body["rows"] == [] and body["recommended"] is None
    assert Job.objects.get().kind == "quantization_sweep" and len(callbacks) == 1
    listed = engineer_api.get("/api/v1/quantization-sweeps?model=credit-llm").json()
    assert [item["id"] for item in listed] == [body["id"]]


@pytest.mark.parametrize("changes,status,field,message", [
    ({"candidates": [{"method": "nf4"}, {"method": "int3"}]}, 400, "candidates[1].method", "Candidate 1: method"),
    ({"candidates": [{"method": "nf4", "compute_dtype": "float8"}]}, 400, "candidates[0].compute_dtype",
     "Candidate 0: compute_dtype"),
    ({"candidates": [{"method": "int8"}, {"method": "nf4", "skip_modules": ["no_such_module"]}]}, 400,
     "candidates[1].skip_modules", "no_such_module"),
    ({"candidates": [{"method": "awq", "bits": 8, "calibration_dataset": "calibration"}]}, 400,
     "candidates[0].bits", "Candidate 0: bits must be one of 4 for awq"),
    ({"candidates": [{"method": "gptq", "calibration_dataset": "small_calibration"}]}, 422,
     "candidates[0].calibration_dataset", "at least"),
    ({"candidates": [{"method": "gptq", "calibration_dataset": "evaluation"}]}, 400,
     "candidates[0].calibration_dataset", "needs a calibration dataset"),
    ({"candidates": [{"method": "gptq", "calibration_dataset": 999999}]}, 404, "candidates[0]", "No dataset"),
    ({"candidates": [{"method": "nf4"}, {"method": "nf4", "compute_dtype": "float32"}]}, 400, "candidates[1]",
     "repeats candidate 0"),
    ({"candidates": ["nf4"]}, 400, "candidates[0]", "must be an object"),
    ({"candidates": []}, 400, "candidates", "candidates"),
    ({"candidates": [{"method": "nf4", "compute_dtype": dtype} for dtype in
                     ("float32", "float16", "bfloat16")] * 3}, 400, "candidates", "no more than 8"),
    ({"dataset": "calibration"}, 400, "dataset", "analyses need an evaluation dataset"),
    ({"dataset": 999999}, 404, None, "No dataset"),
    ({"max_tokens": 1}, 400, None, "max_tokens"),
    ({"alias": "Prod uction"}, 400, "alias", "Not an alias name"),
])
def test_a_bad_sweep_request_names_the_input_and_creates_nothing(engineer_api, setup, changes, status, field,
                                                                 message):
    for key in ("dataset",):
        if isinstance(changes.get(key), str):
            changes = {**changes, key: setup[changes[key]]}
    if "candidates" in changes:
        changes = {**changes, "candidates": [
            {**candidate, "calibration_dataset": setup[candidate["calibration_dataset"]]}
            if isinstance(candidate, dict) and isinstance(candidate.get("calibration_dataset"), str) else candidate
            for candidate in changes["candidates"]]}
    versions = ModelVersion.objects.count()
    response = engineer_api.post(URL, _payload(setup, **changes), format="json")
    assert response.status_code == status, response.content
    body = response.json()
    assert message in body["detail"], body
    if field:
        assert body["field"] == field, body
    _nothing_created()
    assert ModelVersion.objects.count() == versions


def test_sweeping_a_draft_is_a_conflict(engineer_api, setup):
    response = engineer_api.post("/api/v1/models/credit-llm/versions/2/quantization-sweeps", _payload(setup),
                                 format="json")
    assert response.status_code == 409 and "seal" in response.json()["detail"]
    _nothing_created()


def test_only_engineers_of_the_models_team_start_a_sweep(setup, regulator, approver, db):
    from foundation.roles import ML_ENGINEER

    outsider = make_user("outsider", ML_ENGINEER, team="other-team")
    for user, status in ((regulator, 403), (approver, 403), (outsider, 403)):
        assert client_for(user).post(URL, _payload(setup), format="json").status_code == status
    _nothing_created()


def _record_measured_row(sweep, index, version, size_ratio, **stats):
    analysis = make_analysis(reference=sweep.source, candidate=version, dataset=sweep.dataset,
                             actor=sweep.created_by, **stats)
    sweep_services.record_sweep_row(sweep_id=sweep.pk, row={
        "index": index, "settings": sweep.params["candidates"][index], "version": version.number,
        "size_ratio": size_ratio, "kl_mean": stats["kl_mean"], "kl_p99": 0.1, "same_top1": stats["top1"],
        "ppl_ratio": 1.0, "flip_rate": None, "gates": None, "analysis": analysis.pk, "error": None})


@pytest.fixture
def production_policy(setup, engineer):
    """The production policy of credit-llm: mean KL at most 0.05, the default top-1 and PPL gates, and an accuracy
    gate a sweep cannot measure (deferred to the change request)."""
    from registry.models import RegisteredModel

    return Policy.objects.create(model=RegisteredModel.objects.get(name="credit-llm"), alias="production",
                                 required_approvals=1, kl_mean_max=0.05, same_top1_min=0.91, ppl_ratio_max=1.03,
                                 accuracy_drop_max=2.0, updated_by=engineer)


def test_rows_are_gated_by_the_aliases_policy_and_the_smallest_passing_is_recommended(
        engineer_api, setup, production_policy, tiny_model_dir):
    sweep_id = engineer_api.post(URL, _payload(setup, candidates=[{"method": "nf4"}, {"method": "fp4"},
                                                                  {"method": "int8"}], alias="production"),
                                 format="json").json()["id"]
    # Two sealed versions stand for the candidates' outputs (tests/e2e/test_quantization_sweep.py makes real ones).
    small, large = (register_sealed_version(engineer_api, "credit-llm", tiny_model_dir)["number"] for _ in range(2))
    sweep = QuantizationSweep.objects.select_related("source__model", "dataset").get(pk=sweep_id)
    versions = {v.number: v for v in ModelVersion.objects.filter(model=sweep.source.model)}
    _record_measured_row(sweep, 0, versions[small], 0.30, kl_mean=0.2, top1=0.95)  # too far: fails kl_mean_max
    _record_measured_row(sweep, 2, versions[large], 0.55, kl_mean=0.01, top1=0.99)
    sweep_services.record_sweep_row(sweep_id=sweep.pk, row={
        "index": 1, "settings": sweep.params["candidates"][1], "version": None, "size_ratio": None, "kl_mean": None,
        "kl_p99": None, "same_top1": None, "ppl_ratio": None, "flip_rate": None, "gates": None, "analysis": None,
        "error": "Internal error (RuntimeError: out of memory)"})
    assert sweep_services.finish_quantization_sweep(sweep_id=sweep.pk) == large

    body = engineer_api.get(f"/api/v1/quantization-sweeps/{sweep_id}").json()
    assert body["policy"]["thresholds"]["kl_mean_max"] == 0.05
    assert body["policy"]["source"] == "policy of credit-llm@production"
    assert body["policy"]["deferred"] == ["accuracy_drop_max"]
    first, failed, last = body["rows"]
    kl_gate = next(gate for gate in first["gates"] if gate["name"] == "kl_mean")
    assert kl_gate == {"name": "kl_mean", "threshold": 0.05, "value": 0.2, "passed": False}
    assert not first["passed"] and last["passed"] and all(gate["passed"] for gate in last["gates"])
    assert {gate["name"] for gate in last["gates"]} == {"kl_mean", "same_top1", "ppl_ratio"}
    assert failed["error"].startswith("Internal error") and failed["gates"] is None and not failed["passed"]
    assert body["recommended"] == large


def test_without_an_alias_the_default_gates_apply_and_none_passing_recommends_nothing(engineer_api, setup,
                                                                                        tiny_model_dir):
    sweep_id = engineer_api.post(URL, _payload(setup), format="json").json()["id"]
    number = register_sealed_version(engineer_api, "credit-llm", tiny_model_dir)["number"]
    sweep = QuantizationSweep.objects.select_related("source__model", "dataset").get(pk=sweep_id)
    version = ModelVersion.objects.get(model=sweep.source.model, number=number)
    _record_measured_row(sweep, 0, version, 0.3, kl_mean=0.05, top1=0.95)  # the default kl_mean_max is 0.035
    assert sweep_services.finish_quantization_sweep(sweep_id=sweep.pk) is None
    body = engineer_api.get(f"/api/v1/quantization-sweeps/{sweep_id}/").json()
    assert body["policy"]["source"] == "default gates" and body["policy"]["thresholds"]["kl_mean_max"] == 0.035
    assert body["rows"][0]["gates"][0] == {"name": "kl_mean", "threshold": 0.035, "value": 0.05, "passed": False}
    assert body["recommended"] is None
