"""Analysis and LoRA updates through the API with a real worker process."""
import requests
from peft import PeftModel
from transformers import AutoModelForCausalLM

from registry.models import ModelVersion
from tests.conftest import client_for, jsonl, register_sealed_version
from tests.e2e.conftest import wait_for_job
from workers.pipelines.tiny_model import SAMPLE_TEXTS


def _dataset(api, name, purpose, records):
    from django.core.files.uploadedfile import SimpleUploadedFile

    response = api.post("/api/v1/datasets/", {"name": name, "purpose": purpose,
                                              "file": SimpleUploadedFile(f"{name}.jsonl", jsonl(records))},
                        format="multipart")
    assert response.status_code == 201, response.content
    return response.json()["id"]


def test_analysis_of_a_quantized_version_and_of_a_version_against_itself(worker, e2e_users, unique, tiny_model_dir):
    api = client_for(e2e_users["engineer"])
    model = f"analysed-{unique}"
    register_sealed_version(api, model, tiny_model_dir)
    quantize = api.post(f"/api/v1/models/{model}/versions/1/quantize", {"method": "nf4"}, format="json").json()
    assert wait_for_job(api, quantize["job"])["status"] == "succeeded"
    dataset = _dataset(api, f"eval-{unique}", "evaluation", [{"text": t} for t in SAMPLE_TEXTS])

    started = api.post(f"/api/v1/models/{model}/versions/2/analyses", {"dataset": dataset, "max_tokens": 512},
                       format="json")
    assert started.status_code == 202, started.content
    job = wait_for_job(api, started.json()["job"])
    assert job["status"] == "succeeded", job["error"]
    assert job["result"]["analysis"] == started.json()["analysis"] and job["result"]["peak_rss_bytes"] > 0
    analysis = api.get(f"/api/v1/analyses/{started.json()['analysis']}").json()
    assert analysis["reference"] == {"model": model, "version": 1}  # defaults to the parent
    assert analysis["tokens"] > 0 and analysis["kl"]["mean"] > 0 and analysis["ppl_ratio"] > 0
    assert {"mean", "mean_uncertainty", "p99", "p99_9", "median", "min", "max"} <= set(analysis["kl"])
    assert analysis["layers"] and all("max_error_channel" in layer for layer in analysis["layers"])
    assert {plot["name"] for plot in analysis["plots"]} >= {"kl_distribution", "layer_error"}
    plot = api.get(analysis["plots"][0]["url"])
    assert plot.status_code == 302
    assert requests.get(plot["Location"], timeout=30).content.startswith(b"\x89PNG")

    itself = api.post(f"/api/v1/models/{model}/versions/1/analyses",
                      {"dataset": dataset, "reference": 1, "max_tokens": 256}, format="json").json()
    assert wait_for_job(api, itself["job"])["status"] == "succeeded"
    same = api.get(f"/api/v1/analyses/{itself['analysis']}").json()
    assert same["kl"]["mean"] == 0 and same["top1_agreement"] == 1 and same["ppl_ratio"] == 1


def test_lora_update_registers_an_adapter_version_that_loads_on_its_base(worker, e2e_users, unique,
                                                                        tiny_model_dir, tmp_path):
    api = client_for(e2e_users["engineer"])
    model = f"adapted-{unique}"
    register_sealed_version(api, model, tiny_model_dir)
    training = _dataset(api, f"train-{unique}", "training",
                        [{"prompt": f"Q: risk of {t.split()[1]}?", "completion": " low"} for t in SAMPLE_TEXTS])
    response = api.post(f"/api/v1/models/{model}/versions/1/lora-updates",
                        {"dataset": training, "r": 4, "alpha": 8, "steps": 12, "learning_rate": 0.01, "seed": 3},
                        format="json")
    assert response.status_code == 202, response.content
    job = wait_for_job(api, response.json()["job"])
    assert job["status"] == "succeeded", job["error"]
    detail = api.get(f"/api/v1/models/{model}/versions/2/").json()
    assert detail["kind"] == "lora"
    assert {"model": model, "number": 1, "relation": "adapted_from"} in detail["parents"]
    assert any(p.get("dataset") == training and p["relation"] == "trained_on" for p in detail["parents"])
    paths = {f["path"] for f in detail["files"]}
    assert "adapter_model.safetensors" in paths and "model.safetensors" not in paths  # base weights not copied
    assert detail["lora"]["curve"] and detail["lora"]["eval_loss_after"] is not None
    for item in detail["files"]:
        url = api.get(f"/api/v1/models/{model}/versions/2/files/{item['path']}")["Location"]
        (tmp_path / item["path"]).write_bytes(requests.get(url, timeout=30).content)
    adapted = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), tmp_path)
    assert adapted.peft_config["default"].r == 4

    nothing = api.post(f"/api/v1/models/{model}/versions/1/lora-updates",
                       {"dataset": training, "target_modules": ["no_such_proj"], "steps": 2}, format="json")
    failed = wait_for_job(api, nothing.json()["job"])
    assert failed["status"] == "failed" and "no_such_proj" in failed["error"]
    assert ModelVersion.objects.filter(model__name=model).count() == 2
