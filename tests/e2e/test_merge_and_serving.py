"""Merging a LoRA version into its base through the API with a real worker, the refusals that leave nothing
behind, and the serving commands a version's detail document carries."""
import json

import requests
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

from registry.models import LineageEdge, ModelVersion
from foundation.roles import ML_ENGINEER
from tests.conftest import client_for, jsonl, make_user, register_sealed_version
from tests.e2e.conftest import wait_for_job
from workers.models import Job
from workers.pipelines.tiny_model import SAMPLE_TEXTS

PROMPT_IDS = torch.tensor([[1, 17, 42, 99, 7, 250, 31, 64]])


def _training_dataset(api, name):
    from django.core.files.uploadedfile import SimpleUploadedFile

    records = [{"prompt": f"Q: risk of {text.split()[1]}?", "completion": " low"} for text in SAMPLE_TEXTS]
    response = api.post("/api/v1/datasets/", {"name": name, "purpose": "training",
                                              "file": SimpleUploadedFile(f"{name}.jsonl", jsonl(records))},
                        format="multipart")
    assert response.status_code == 201, response.content
    return response.json()["id"]


def _download(api, model, number, directory):
    directory.mkdir()
    for item in api.get(f"/api/v1/models/{model}/versions/{number}/").json()["files"]:
        url = api.get(f"/api/v1/models/{model}/versions/{number}/files/{item['path']}")["Location"]
        (directory / item["path"]).write_bytes(requests.get(url, timeout=30).content)
    return directory


def _logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=PROMPT_IDS).logits


def test_merge_registers_a_version_equal_to_base_plus_adapter_that_loads_without_peft(
        worker, e2e_users, unique, tiny_model_dir, tmp_path):
    api = client_for(e2e_users["engineer"])
    model = f"merged-{unique}"
    register_sealed_version(api, model, tiny_model_dir)
    training = _training_dataset(api, f"train-{unique}")
    lora = api.post(f"/api/v1/models/{model}/versions/1/lora-updates",
                    {"dataset": training, "r": 4, "alpha": 8, "steps": 12, "learning_rate": 0.01, "seed": 3},
                    format="json")
    assert wait_for_job(api, lora.json()["job"])["status"] == "succeeded"
    adapter = api.get(f"/api/v1/models/{model}/versions/2/").json()
    assert adapter["serving"]["command"] == (f"vllm serve ./{model}-v1 --enable-lora "
                                             f"--lora-modules {model}-v2=./{model}-v2")
    assert adapter["serving"]["download"] == [f"llmreg pull {model} 1 ./{model}-v1",
                                              f"llmreg pull {model} 2 ./{model}-v2"]

    response = api.post(f"/api/v1/models/{model}/versions/2/merge", format="json")
    assert response.status_code == 202, response.content
    job = wait_for_job(api, response.json()["job"])
    assert job["status"] == "succeeded", job["error"]
    assert job["kind"] == "merge" and job["result"]["version"] == 3

    merged = api.get(f"/api/v1/models/{model}/versions/3/").json()
    assert merged["kind"] == "merged" and merged["status"] == "ready"
    assert sorted((p["number"], p["relation"]) for p in merged["parents"]) == [(1, "merged_from"), (2, "merged_from")]
    assert merged["lora"]["merge"]["base"] == {"model": model, "number": 1}
    assert merged["serving"]["command"] == f"vllm serve ./{model}-v3"
    paths = {item["path"] for item in merged["files"]}
    assert "model.safetensors" in paths and "adapter_config.json" not in paths

    merged_dir = _download(api, model, 3, tmp_path / "merged")
    plain = AutoModelForCausalLM.from_pretrained(merged_dir).eval()  # no peft involved
    assert type(plain).__name__ == "LlamaForCausalLM"
    assert not any("lora" in name for name, _ in plain.named_parameters())
    assert json.loads((merged_dir / "config.json").read_text())["dtype"] == "float32"  # the base's dtype
    adapter_dir = _download(api, model, 2, tmp_path / "adapter")
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    base_logits = _logits(base)
    with_adapter = PeftModel.from_pretrained(base, adapter_dir).eval()
    expected = _logits(with_adapter)
    assert not torch.allclose(expected, base_logits, atol=1e-4)  # the adapter does change the outputs
    assert torch.allclose(_logits(plain), expected, atol=1e-4, rtol=0)


def test_merge_refusals_create_nothing(worker, e2e_users, unique, tiny_model_dir):
    api = client_for(e2e_users["engineer"])
    model = f"unmerged-{unique}"
    register_sealed_version(api, model, tiny_model_dir)
    upload = ModelVersion.objects.get(model__name=model, number=1)
    # A LoRA on a quantized base, and a LoRA still a draft, as the registry would hold them.
    quantized = ModelVersion.objects.create(model=upload.model, number=2, kind=ModelVersion.Kind.QUANTIZED,
                                            status=ModelVersion.Status.READY, manifest_sha256="0" * 64,
                                            quantization={"method": "nf4"}, created_by=upload.created_by)
    on_quantized = ModelVersion.objects.create(model=upload.model, number=3, kind=ModelVersion.Kind.LORA,
                                               status=ModelVersion.Status.READY, manifest_sha256="0" * 64,
                                               created_by=upload.created_by)
    LineageEdge.objects.create(child=on_quantized, parent_version=quantized,
                               relation=LineageEdge.Relation.ADAPTED_FROM)
    draft = ModelVersion.objects.create(model=upload.model, number=4, kind=ModelVersion.Kind.LORA,
                                        created_by=upload.created_by)
    LineageEdge.objects.create(child=draft, parent_version=upload, relation=LineageEdge.Relation.ADAPTED_FROM)
    jobs_before, versions_before = Job.objects.count(), ModelVersion.objects.filter(model=upload.model).count()

    not_lora = api.post(f"/api/v1/models/{model}/versions/1/merge", format="json")
    assert not_lora.status_code == 422 and "not a LoRA adapter" in not_lora.json()["detail"]
    quantized_base = api.post(f"/api/v1/models/{model}/versions/3/merge", format="json")
    assert quantized_base.status_code == 422
    assert "quantized (nf4)" in quantized_base.json()["detail"] and "precision" in quantized_base.json()["detail"]
    not_ready = api.post(f"/api/v1/models/{model}/versions/4/merge", format="json")
    assert not_ready.status_code == 409 and not_ready.json()["error"] == "conflict"
    missing = api.post(f"/api/v1/models/{model}/versions/9/merge", format="json")
    assert missing.status_code == 404
    other_team = client_for(make_user(f"eve-{unique}", ML_ENGINEER, team=f"other-{unique}"))
    assert other_team.post(f"/api/v1/models/{model}/versions/3/merge", format="json").status_code == 403
    regulator = client_for(e2e_users["regulator"])
    assert regulator.post(f"/api/v1/models/{model}/versions/3/merge", format="json").status_code == 403

    assert Job.objects.count() == jobs_before
    assert ModelVersion.objects.filter(model=upload.model).count() == versions_before

    serving = api.get(f"/api/v1/models/{model}/versions/2/").json()["serving"]
    assert serving["command"] == f"vllm serve ./{model}-v2 --quantization bitsandbytes"
    assert api.get(f"/api/v1/models/{model}/versions/4/").json()["serving"] is None  # a draft serves nothing
    assert "serving" not in api.get(f"/api/v1/models/{model}/versions/").json()[0]  # lists stay lean
