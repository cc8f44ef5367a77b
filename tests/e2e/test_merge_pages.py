"""The version page in headless Chromium against a real gunicorn and worker: a LoRA version shows how to serve
it (base plus adapter), its Merge button queues the merge, and the merged version's page shows a plain serving
command; a LoRA on a quantized base is refused with the reason. Screenshots land in /tmp/ui_shots_merge/."""
from pathlib import Path


from registry.models import LineageEdge, ModelVersion
from tests.conftest import client_for, register_sealed_version
from tests.e2e.conftest import admin_login, wait_for_job
from tests.e2e.test_merge_and_serving import _training_dataset

SHOTS = Path("/tmp/ui_shots_merge")


def _shot(page, name: str) -> None:
    SHOTS.mkdir(exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def _version(model: str, number: int) -> ModelVersion:
    return ModelVersion.objects.select_related("model").get(model__name=model, number=number)


def test_engineer_reads_the_serving_commands_and_merges_an_adapter(worker, web_server, e2e_users, unique,
                                                                  tiny_model_dir, page):
    api = client_for(e2e_users["engineer"])
    model = f"served-{unique}"
    register_sealed_version(api, model, tiny_model_dir)
    lora = api.post(f"/api/v1/models/{model}/versions/1/lora-updates",
                    {"dataset": _training_dataset(api, f"train-{unique}"), "r": 4, "steps": 4}, format="json")
    assert wait_for_job(api, lora.json()["job"])["status"] == "succeeded"

    admin_login(page, web_server, e2e_users["engineer"].username)
    page.goto(f"{web_server}/admin/registry/modelversion/{_version(model, 2).pk}/change/")
    serving = page.locator("#serving")
    assert f"llmreg pull {model} 1 ./{model}-v1" in serving.inner_text()
    assert f"vllm serve ./{model}-v1 --enable-lora --lora-modules {model}-v2=./{model}-v2" in serving.inner_text()
    assert "--lora-paths" in serving.inner_text()  # SGLang
    _shot(page, "lora_version_serving")

    page.click("#merge input[type=submit]")
    page.wait_for_url("**/admin/workers/job/**")
    assert "queued as job" in page.inner_text(".messagelist")
    job_id = int(page.url.rstrip("/").split("/")[-2])
    assert wait_for_job(api, job_id)["status"] == "succeeded"

    page.goto(f"{web_server}/admin/registry/modelversion/{_version(model, 3).pk}/change/")
    assert f"vllm serve ./{model}-v3" in page.locator("#serving").inner_text()
    assert "--enable-lora" not in page.locator("#serving").inner_text()
    lineage = page.locator("body").inner_text()
    assert "merged_from" in lineage or "merged from" in lineage
    _shot(page, "merged_version")


def test_merging_an_adapter_on_a_quantized_base_is_refused_on_the_page(web_server, e2e_users, unique,
                                                                     tiny_model_dir, page):
    api = client_for(e2e_users["engineer"])
    model = f"refused-{unique}"
    register_sealed_version(api, model, tiny_model_dir)
    upload = _version(model, 1)
    quantized = ModelVersion.objects.create(model=upload.model, number=2, kind=ModelVersion.Kind.QUANTIZED,
                                            status=ModelVersion.Status.READY, manifest_sha256="0" * 64,
                                            quantization={"method": "nf4"}, created_by=upload.created_by)
    adapter = ModelVersion.objects.create(model=upload.model, number=3, kind=ModelVersion.Kind.LORA,
                                          status=ModelVersion.Status.READY, manifest_sha256="0" * 64,
                                          lora={"settings": {"r": 32}}, created_by=upload.created_by)
    LineageEdge.objects.create(child=adapter, parent_version=quantized, relation=LineageEdge.Relation.ADAPTED_FROM)

    admin_login(page, web_server, e2e_users["engineer"].username)
    page.goto(f"{web_server}/admin/registry/modelversion/{adapter.pk}/change/")
    assert (f"vllm serve ./{model}-v2 --quantization bitsandbytes --enable-lora --lora-modules "
            f"{model}-v3=./{model}-v3 --max-lora-rank 32") in page.locator("#serving").inner_text()
    page.click("#merge input[type=submit]")
    page.wait_for_url(f"**/admin/registry/modelversion/{adapter.pk}/change/")
    message = page.inner_text(".messagelist")
    assert "Not merged" in message and "quantized (nf4)" in message
    _shot(page, "merge_refused")
    assert ModelVersion.objects.filter(model=upload.model).count() == 3
