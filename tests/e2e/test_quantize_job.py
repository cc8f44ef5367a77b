"""Quantization through the API with a real Celery worker process: each method, lineage, crash and retry,
cancellation, bad input."""
import pytest
import torch
from transformers import AutoModelForCausalLM

from registry.models import ModelVersion
from tests.conftest import client_for, register_sealed_version
from tests.e2e.conftest import wait_for_job
from workers.models import Job


def _download(api, model, number, destination):
    import requests

    detail = api.get(f"/api/v1/models/{model}/versions/{number}/").json()
    for item in detail["files"]:
        response = api.get(f"/api/v1/models/{model}/versions/{number}/files/{item['path']}")
        target = destination / item["path"]
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(requests.get(response["Location"], timeout=60).content)
    return detail


def _mean_kl(reference, candidate, input_ids) -> float:
    with torch.no_grad():
        p = torch.log_softmax(reference(input_ids).logits.double(), -1)
        q = torch.log_softmax(candidate(input_ids).logits.double(), -1)
    return float((p.exp() * (p - q)).sum(-1).mean())


@pytest.mark.parametrize("method", ["nf4", "fp4", "int8"])
def test_quantized_version_is_registered_loads_and_stays_close(worker, e2e_users, unique, tiny_model_dir, tmp_path,
                                                               method):
    api = client_for(e2e_users["engineer"])
    model = f"credit-{unique}"
    register_sealed_version(api, model, tiny_model_dir)
    response = api.post(f"/api/v1/models/{model}/versions/1/quantize",
                        {"method": method, "compute_dtype": "float32", "double_quant": method != "int8"},
                        format="json")
    assert response.status_code == 202, response.content
    job = wait_for_job(api, response.json()["job"])
    assert job["status"] == "succeeded", job["error"]
    assert (job["result"]["model"], job["result"]["version"]) == (model, 2) and job["result"]["peak_rss_bytes"] > 0

    detail = _download(api, model, 2, tmp_path / "quantized")
    assert detail["kind"] == "quantized" and detail["status"] == "ready"
    assert detail["parents"] == [{"model": model, "number": 1, "relation": "quantized_from"}]
    quantization = detail["quantization"]
    assert quantization["method"] == method
    assert {"torch", "transformers", "bitsandbytes"} <= set(quantization["library_versions"])
    assert quantization["size_after_bytes"] < quantization["size_before_bytes"]
    assert "lm_head" in quantization["skipped_modules"]
    lineage = api.get(f"/api/v1/models/{model}/versions/1/lineage").json()
    assert {"parent": f"version:{model}:1", "child": f"version:{model}:2", "relation": "quantized_from"} in lineage["edges"]

    reference = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    candidate = AutoModelForCausalLM.from_pretrained(tmp_path / "quantized")
    input_ids = torch.randint(0, reference.config.vocab_size, (1, 48), generator=torch.Generator().manual_seed(0))
    assert _mean_kl(reference, candidate, input_ids) < 0.5


def test_worker_killed_mid_job_then_retried_registers_exactly_one_version(worker, e2e_users, unique,
                                                                         tiny_model_dir):
    api = client_for(e2e_users["engineer"])
    model = f"crash-{unique}"
    register_sealed_version(api, model, tiny_model_dir)
    job_id = api.post(f"/api/v1/models/{model}/versions/1/quantize", {"method": "nf4"}, format="json").json()["job"]
    wait_for_job(api, job_id, until=("running", "succeeded", "failed"), timeout=60)
    worker.kill()
    assert Job.objects.get(pk=job_id).status in ("running", "succeeded")
    # The unacknowledged message comes back to a new worker once the broker's visibility timeout passes.
    worker.start()
    job = wait_for_job(api, job_id, timeout=180)
    assert job["status"] == "succeeded", job["error"]
    assert ModelVersion.objects.filter(model__name=model, kind="quantized").count() == 1
    assert ModelVersion.objects.filter(source_job_id=job_id).count() == 1


def test_running_job_is_cancelled_and_registers_nothing(worker, e2e_users, unique, tiny_model_dir):
    api = client_for(e2e_users["engineer"])
    model = f"cancel-{unique}"
    register_sealed_version(api, model, tiny_model_dir)
    job_id = api.post(f"/api/v1/models/{model}/versions/1/quantize", {"method": "int8"}, format="json").json()["job"]
    assert api.post(f"/api/v1/jobs/{job_id}/cancel").status_code == 200
    job = wait_for_job(api, job_id, timeout=120)
    assert job["status"] == "cancelled"
    assert not ModelVersion.objects.filter(model__name=model, kind="quantized").exists()
    assert api.post(f"/api/v1/jobs/{job_id}/cancel").status_code == 409


def test_corrupt_weights_found_at_load_time_fail_the_job_with_a_clear_error(worker, e2e_users, unique,
                                                                           tiny_model_copy):
    # A header that parses but tensor bytes that do not hold what the config describes.
    config = tiny_model_copy / "config.json"
    import json

    document = json.loads(config.read_text())
    document["hidden_size"] = document["hidden_size"] * 2
    config.write_text(json.dumps(document))
    api = client_for(e2e_users["engineer"])
    model = f"corrupt-{unique}"
    register_sealed_version(api, model, tiny_model_copy)
    job_id = api.post(f"/api/v1/models/{model}/versions/1/quantize", {"method": "nf4"}, format="json").json()["job"]
    job = wait_for_job(api, job_id, timeout=120)
    assert job["status"] == "failed"
    assert job["error"] and "Internal error" not in job["error"]
    assert not ModelVersion.objects.filter(model__name=model, kind="quantized").exists()
