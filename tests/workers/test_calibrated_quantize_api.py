"""GPTQ requests judged at request time: a bad setting is a 400/422 naming its field, and creates no job."""
import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from tests.conftest import client_for, jsonl, register_sealed_version
from workers.models import Analysis, Job
from workers.pipelines.tiny_model import SAMPLE_TEXTS

pytestmark = pytest.mark.django_db

URL = "/api/v1/models/credit-llm/versions/1/quantize"


@pytest.fixture
def setup(engineer_api, tiny_model_dir):
    register_sealed_version(engineer_api, "credit-llm", tiny_model_dir)

    def dataset(purpose, texts):
        response = engineer_api.post("/api/v1/datasets/", {
            "name": f"{purpose}-{len(texts)}", "purpose": purpose,
            "file": SimpleUploadedFile("d.jsonl", jsonl([{"text": text} for text in texts]))}, format="multipart")
        assert response.status_code == 201, response.content
        return response.json()["id"]

    return {"calibration": dataset("calibration", SAMPLE_TEXTS[:20]),
            "small": dataset("calibration", SAMPLE_TEXTS[:3]),
            "evaluation": dataset("evaluation", SAMPLE_TEXTS[:20])}


def test_gptq_request_queues_a_job_with_its_settings(engineer_api, setup, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        response = engineer_api.post(URL, {"method": "gptq", "bits": 4, "group_size": 32, "desc_act": True,
                                           "calibration_dataset": setup["calibration"], "modules": "mlp"},
                                     format="json")
    assert response.status_code == 202, response.content
    params = engineer_api.get(f"/api/v1/jobs/{response.json()['job']}").json()["params"]
    assert params["method"] == "gptq" and params["bits"] == 4 and params["group_size"] == 32
    assert params["desc_act"] is True and params["sym"] is True and params["damping"] == 0.01
    assert params["calibration_dataset"] == setup["calibration"] and params["modules"] == "mlp"
    assert params["skip_modules"] and params["keep_sensitive"] is None
    assert len(callbacks) == 1


@pytest.mark.parametrize("settings,status,field", [
    ({"method": "rtn"}, 400, "method"),
    ({"method": "awq", "bits": 8}, 400, "bits"),
    ({"method": "awq", "desc_act": True}, 400, "desc_act"),
    ({"bits": 5}, 400, "bits"),
    ({"bits": 16}, 400, "bits"),
    ({"group_size": 48}, 400, "group_size"),
    ({"damping": 0}, 400, "damping"),
    ({"max_length": 1}, 400, "max_length"),
    ({"calibration_dataset": "evaluation"}, 400, "calibration_dataset"),
    ({"calibration_dataset": "small"}, 422, "calibration_dataset"),
    ({"calibration_samples": 500}, 422, "calibration_samples"),
    ({"modules": "no_such_layer"}, 400, "modules"),
    ({"modules": "("}, 400, "modules"),
    ({"skip_modules": ["no_such_layer"]}, 400, "skip_modules"),
    ({"skip_modules": ".*"}, 400, "skip_modules"),
    ({"skip_modules": {"a": 1}}, 400, "skip_modules"),
    ({"keep_sensitive": [1]}, 400, "keep_sensitive"),
    ({"keep_sensitive": {"analysis": 999999, "top_n": 2}}, 400, "keep_sensitive"),
])
def test_bad_gptq_settings_are_refused_naming_the_field_and_create_no_job(engineer_api, setup, settings, status,
                                                                          field):
    payload = {"method": "gptq", "calibration_dataset": setup["calibration"], **settings}
    if isinstance(payload["calibration_dataset"], str):
        payload["calibration_dataset"] = setup[payload["calibration_dataset"]]
    response = engineer_api.post(URL, payload, format="json")
    assert response.status_code == status, response.content
    assert response.json()["field"] == field
    assert Job.objects.filter(kind="quantize").count() == 0


def test_keep_sensitive_names_the_analysis_top_layers(engineer_api, setup, tiny_model_dir):
    register_sealed_version(engineer_api, "credit-llm", tiny_model_dir)
    started = engineer_api.post("/api/v1/models/credit-llm/versions/2/analyses",
                                {"reference": 1, "dataset": setup["evaluation"]}, format="json")
    analysis_id = started.json()["analysis"]
    layers = [{"name": "model.layers.0.mlp.down_proj", "relative_error": 0.3},
              {"name": "model.layers.1.self_attn.v_proj", "relative_error": 0.5},
              {"name": "model.layers.0.self_attn.q_proj", "relative_error": 0.01}]
    Analysis.objects.filter(pk=analysis_id).update(result={"layers": layers})  # as a finished analysis stores it
    response = engineer_api.post(URL, {"method": "gptq", "calibration_dataset": setup["calibration"],
                                       "keep_sensitive": {"analysis": analysis_id, "top_n": 2}}, format="json")
    assert response.status_code == 202, response.content
    params = Job.objects.get(pk=response.json()["job"]).params
    assert params["keep"] == ["model.layers.1.self_attn.v_proj", "model.layers.0.mlp.down_proj"]
    assert params["keep_sensitive"]["analysis"] == analysis_id

    response = engineer_api.post(URL, {"method": "gptq", "calibration_dataset": setup["calibration"],
                                       "keep_sensitive": {"analysis": analysis_id, "max_relative_error": 0.4}},
                                 format="json")
    assert response.status_code == 202, response.content
    assert Job.objects.get(pk=response.json()["job"]).params["keep"] == ["model.layers.1.self_attn.v_proj"]
    for bad in ({"analysis": analysis_id}, {"analysis": analysis_id, "top_n": 1, "max_relative_error": 0.1},
                {"analysis": analysis_id, "max_relative_error": -1}):
        response = engineer_api.post(URL, {"method": "gptq", "calibration_dataset": setup["calibration"],
                                           "keep_sensitive": bad}, format="json")
        assert response.status_code == 400 and response.json()["field"] == "keep_sensitive"


def test_only_engineers_of_the_team_start_gptq(setup, regulator, approver):
    for user in (regulator, approver):
        response = client_for(user).post(URL, {"method": "gptq", "calibration_dataset": setup["calibration"]},
                                         format="json")
        assert response.status_code == 403
    assert Job.objects.filter(kind="quantize").count() == 0
