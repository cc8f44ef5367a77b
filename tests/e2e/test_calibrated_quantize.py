"""GPTQ and AWQ through the API with a real Celery worker: the version is registered with its calibration lineage and
metadata, loads with plain from_pretrained and stays close to its source; sensitive layers are kept."""
import json

import pytest
import torch
from django.core.files.uploadedfile import SimpleUploadedFile
from transformers import AutoModelForCausalLM

from tests.conftest import client_for, jsonl, register_sealed_version
from tests.e2e.conftest import wait_for_job
from tests.e2e.test_quantize_job import _download, _mean_kl
from workers.models import Analysis
from workers.pipelines.tiny_model import SAMPLE_TEXTS

pytestmark = pytest.mark.e2e


def _calibration_dataset(api, unique) -> dict:
    response = api.post("/api/v1/datasets/", {
        "name": f"finance_qa_{unique}", "purpose": "calibration",
        "file": SimpleUploadedFile("calibration.jsonl", jsonl([{"text": text} for text in SAMPLE_TEXTS]))},
        format="multipart")
    assert response.status_code == 201, response.content
    return response.json()


@pytest.mark.parametrize("method", ["gptq", "awq"])
def test_calibrated_version_is_registered_with_calibration_lineage_and_loads(worker, e2e_users, unique,
                                                                             tiny_model_dir, tmp_path, method):
    api = client_for(e2e_users["engineer"])
    model = f"{method}-{unique}"
    register_sealed_version(api, model, tiny_model_dir)
    dataset = _calibration_dataset(api, unique)
    response = api.post(f"/api/v1/models/{model}/versions/1/quantize",
                        {"method": method, "bits": 4, "group_size": 32, "calibration_dataset": dataset["id"],
                         "calibration_samples": 24, "max_length": 64}, format="json")
    assert response.status_code == 202, response.content
    job = wait_for_job(api, response.json()["job"])
    assert job["status"] == "succeeded", job["error"]
    assert (job["result"]["model"], job["result"]["version"]) == (model, 2) and job["result"]["peak_rss_bytes"] > 0

    detail = _download(api, model, 2, tmp_path / method)
    assert detail["kind"] == "quantized" and detail["status"] == "ready"
    assert {"model": model, "number": 1, "relation": "quantized_from"} in detail["parents"]
    assert {"dataset": dataset["id"], "name": dataset["name"], "relation": "calibrated_on"} in detail["parents"]
    quantization = detail["quantization"]
    assert quantization["method"] == method and quantization["bits"] == 4 and quantization["group_size"] == 32
    assert quantization["sym"] is True  # symmetric by default for both, so both are packed for serving
    assert quantization["calibration_dataset"] == {"id": dataset["id"], "sha256": dataset["sha256"]}
    assert quantization["calibration"]["samples"] == 24 and quantization["calibration"]["tokens"] > 24
    assert set(quantization["module_loss"]) == set(quantization["quantized_modules"])
    assert "lm_head" in quantization["skipped_modules"]
    assert quantization["packed_size_bytes"] < quantization["size_before_bytes"]
    assert quantization["device"] and quantization["wall_seconds"] > 0
    # Both are packed in the format serving engines read from config.json; AWQ's scales went into the norms.
    config = json.loads((tmp_path / method / "config.json").read_text())
    assert quantization["format"] == "pack-quantized"
    assert config["quantization_config"]["quant_method"] == "compressed-tensors"
    assert quantization["size_after_bytes"] == quantization["packed_size_bytes"]
    if method == "awq":
        assert quantization["awq_folded_into"]["model.layers.0.self_attn.q_proj"] == "model.layers.0.input_layernorm"
    assert detail["serving"]["command"] == f"vllm serve ./{model}-v2"

    reference = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    candidate = AutoModelForCausalLM.from_pretrained(tmp_path / method)
    input_ids = torch.randint(0, reference.config.vocab_size, (1, 48), generator=torch.Generator().manual_seed(0))
    assert _mean_kl(reference, candidate, input_ids) < 0.5


def test_a_lora_update_on_a_packed_gptq_version_is_registered_like_on_a_bitsandbytes_one(
        worker, e2e_users, unique, tiny_model_dir):
    api = client_for(e2e_users["engineer"])
    model = f"gptq-lora-{unique}"
    register_sealed_version(api, model, tiny_model_dir)
    dataset = _calibration_dataset(api, unique)
    gptq = api.post(f"/api/v1/models/{model}/versions/1/quantize",
                    {"method": "gptq", "bits": 4, "group_size": 32, "calibration_dataset": dataset["id"],
                     "calibration_samples": 16, "max_length": 32}, format="json")
    assert wait_for_job(api, gptq.json()["job"])["status"] == "succeeded"
    training = api.post("/api/v1/datasets/", {
        "name": f"train_{unique}", "purpose": "training",
        "file": SimpleUploadedFile("train.jsonl", jsonl([{"prompt": f"Q: {text}", "completion": " ok"}
                                                         for text in SAMPLE_TEXTS]))}, format="multipart").json()
    lora = api.post(f"/api/v1/models/{model}/versions/2/lora-updates",
                    {"dataset": training["id"], "r": 4, "steps": 4, "learning_rate": 0.01}, format="json")
    job = wait_for_job(api, lora.json()["job"])
    assert job["status"] == "succeeded", job["error"]

    adapter = api.get(f"/api/v1/models/{model}/versions/3/").json()
    assert adapter["kind"] == "lora" and {"model": model, "number": 2, "relation": "adapted_from"} in adapter["parents"]
    assert adapter["lora"]["settings"]["qlora"] is True
    assert adapter["lora"]["base_quantization"]["method"] == "compressed-tensors-int4"
    assert adapter["serving"]["command"] == (f"vllm serve ./{model}-v2 --enable-lora "
                                             f"--lora-modules {model}-v3=./{model}-v3")
    refused = api.post(f"/api/v1/models/{model}/versions/3/merge", format="json")
    assert refused.status_code == 422 and "quantized (gptq)" in refused.json()["detail"]


def test_keep_sensitive_keeps_the_analysis_top_layers_out_of_gptq(worker, e2e_users, unique, tiny_model_dir):
    api = client_for(e2e_users["engineer"])
    model = f"gptq-keep-{unique}"
    register_sealed_version(api, model, tiny_model_dir)
    register_sealed_version(api, model, tiny_model_dir)
    dataset = _calibration_dataset(api, unique)
    evaluation = api.post("/api/v1/datasets/", {
        "name": f"eval_{unique}", "purpose": "evaluation",
        "file": SimpleUploadedFile("e.jsonl", jsonl([{"text": text} for text in SAMPLE_TEXTS[:8]]))},
        format="multipart").json()
    analysis_id = api.post(f"/api/v1/models/{model}/versions/2/analyses",
                           {"reference": 1, "dataset": evaluation["id"]}, format="json").json()["analysis"]
    layers = [{"name": "model.layers.1.mlp.down_proj", "relative_error": 0.4},
              {"name": "model.layers.0.self_attn.q_proj", "relative_error": 0.02}]
    Analysis.objects.filter(pk=analysis_id).update(result={"layers": layers})  # as a finished analysis stores it
    response = api.post(f"/api/v1/models/{model}/versions/1/quantize",
                        {"method": "gptq", "calibration_dataset": dataset["id"], "max_length": 32,
                         "keep_sensitive": {"analysis": analysis_id, "top_n": 1}}, format="json")
    assert response.status_code == 202, response.content
    job = wait_for_job(api, response.json()["job"])
    assert job["status"] == "succeeded", job["error"]
    quantization = api.get(f"/api/v1/models/{model}/versions/{job['result']['version']}/").json()["quantization"]
    assert quantization["keep_sensitive"]["kept"] == ["model.layers.1.mlp.down_proj"]
    assert {"name": "model.layers.1.mlp.down_proj", "reason": "keep_sensitive"} in quantization["kept_modules"]
    assert "model.layers.1.mlp.down_proj" not in quantization["quantized_modules"]
