"""Personal data through real processes: a large dataset is scanned by the worker's job, training on it is
refused, and after redaction the same training runs to a registered adapter whose lineage names the redaction."""
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import override_settings

from tests.conftest import client_for, jsonl, register_sealed_version
from tests.e2e.conftest import wait_for_job
from workers.models import Job
from workers.pipelines.tiny_model import SAMPLE_TEXTS

CARD = "4111 1111 1111 1111"


def test_a_scanned_dataset_with_cards_trains_only_after_redaction(worker, e2e_users, unique, tiny_model_dir):
    api = client_for(e2e_users["engineer"])
    model = f"governed-{unique}"
    register_sealed_version(api, model, tiny_model_dir)
    records = [{"prompt": f"Q: card {CARD} for {text.split()[1]}?", "completion": " blocked"}
               for text in SAMPLE_TEXTS]
    with override_settings(PII_INLINE_SCAN_BYTES=0):  # as a file too large to scan while registering
        registered = api.post("/api/v1/datasets/", {
            "name": f"calls-{unique}", "purpose": "training",
            "file": SimpleUploadedFile("calls.jsonl", jsonl(records))}, format="multipart").json()
    assert registered["pii"]["status"] == "scanning"

    scan = Job.objects.get(kind="pii_scan", params__dataset=registered["id"])
    assert wait_for_job(api, scan.pk)["status"] == "succeeded"
    dataset = api.get(f"/api/v1/datasets/{registered['id']}/").json()
    assert dataset["pii"]["status"] == "found" and dataset["pii"]["counts"]["card_number"] == len(records)

    refused = api.post(f"/api/v1/models/{model}/versions/1/lora-updates",
                       {"dataset": dataset["id"], "steps": 2, "batch_size": 2}, format="json")
    assert refused.status_code == 422 and "redact" in refused.json()["detail"]

    redacted = api.post(f"/api/v1/datasets/{dataset['id']}/redact", {"strategy": "replace"}, format="json").json()
    assert redacted["pii"]["status"] == "clean" and redacted["redacted_from"] == dataset["id"]
    training = api.post(f"/api/v1/models/{model}/versions/1/lora-updates",
                        {"dataset": redacted["id"], "steps": 2, "batch_size": 2}, format="json")
    assert training.status_code == 202, training.content
    job = wait_for_job(api, training.json()["job"])
    assert job["status"] == "succeeded", job["error"]

    lineage = api.get(f"/api/v1/models/{model}/versions/{job['result']['version']}/lineage").json()
    assert {"parent": f"dataset:{dataset['id']}", "child": f"dataset:{redacted['id']}",
            "relation": "redacted_from"} in lineage["edges"]
