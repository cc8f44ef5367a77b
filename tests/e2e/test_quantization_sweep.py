"""A quantization sweep through a real Celery worker on the tiny model: each candidate quantized and registered
with its lineage, analysed against the source in an analysis of its own, gated by the alias's policy; a candidate
that fails is recorded in its row while the others go on; the smallest passing candidate is recommended."""
from governance.models import Policy
from registry.models import ModelVersion, RegisteredModel
from tests.conftest import client_for, jsonl, register_sealed_version
from tests.e2e.conftest import WorkerProcess, _purge_test_queue, wait_for_job
from workers.models import QuantizationSweep
from workers.pipelines.tiny_model import SAMPLE_TEXTS


def _evaluation_dataset(api, name):
    from django.core.files.uploadedfile import SimpleUploadedFile

    response = api.post("/api/v1/datasets/", {"name": name, "purpose": "evaluation", "file": SimpleUploadedFile(
        "eval.jsonl", jsonl([{"text": text} for text in SAMPLE_TEXTS[:8]]))}, format="multipart")
    assert response.status_code == 201, response.content
    return response.json()["id"]


def test_a_sweep_quantizes_analyses_and_gates_each_candidate_and_recommends_the_smallest_passing(
        committed_db, e2e_users, unique, tiny_model_dir, tmp_path):
    api = client_for(e2e_users["engineer"])
    model = f"swept-{unique}"
    register_sealed_version(api, model, tiny_model_dir)
    dataset = _evaluation_dataset(api, f"eval-{unique}")
    # Loose enough for the tiny random model, so that both real candidates pass and size alone decides.
    Policy.objects.create(model=RegisteredModel.objects.get(name=model), alias="staging", required_approvals=1,
                          kl_mean_max=5.0, same_top1_min=0.1, ppl_ratio_max=5.0, updated_by=e2e_users["engineer"])
    _purge_test_queue()
    response = api.post(f"/api/v1/models/{model}/versions/1/quantization-sweeps", {
        "candidates": [{"method": "int8"}, {"method": "fp4"}, {"method": "nf4", "double_quant": True}],
        "dataset": dataset, "alias": "staging", "max_tokens": 64}, format="json")
    assert response.status_code == 202, response.content
    # The fp4 candidate fails at run time (settings the quantizer refuses, stored before any worker runs it).
    sweep = QuantizationSweep.objects.get(pk=response.json()["id"])
    candidates = sweep.params["candidates"]
    candidates[1] = {**candidates[1], "compute_dtype": "float8"}
    QuantizationSweep.objects.filter(pk=sweep.pk).update(params={**sweep.params, "candidates": candidates})

    worker = WorkerProcess(tmp_path / "worker.log")
    worker.start()
    try:
        job = wait_for_job(api, response.json()["job"], timeout=600)
    finally:
        worker.stop()
    assert job["status"] == "succeeded", (job["error"], (tmp_path / "worker.log").read_text()[-3000:])
    assert job["kind"] == "quantization_sweep" and job["progress"] == 100

    body = api.get(f"/api/v1/quantization-sweeps/{sweep.pk}").json()
    assert body["status"] == "succeeded" and body["policy"]["source"] == f"policy of {model}@staging"
    int8, fp4, nf4 = body["rows"]
    assert [row["index"] for row in body["rows"]] == [0, 1, 2]

    assert fp4["error"] and "float8" in fp4["error"] and fp4["version"] is None and fp4["gates"] is None
    failed_job = api.get(f"/api/v1/jobs/{fp4['quantize_job']}").json()
    assert failed_job["status"] == "failed" and "float8" in failed_job["error"]

    for row, method in ((int8, "int8"), (nf4, "nf4")):
        assert row["error"] is None and row["settings"]["method"] == method
        assert 0 < row["size_ratio"] < 1 and row["kl_mean"] >= 0 and 0 <= row["same_top1"] <= 1
        assert row["ppl_ratio"] > 0 and row["kl_p99"] is not None
        assert {gate["name"] for gate in row["gates"]} == {"kl_mean", "same_top1", "ppl_ratio"}
        assert all(gate["passed"] for gate in row["gates"]) and row["passed"]
        version = api.get(f"/api/v1/models/{model}/versions/{row['version']}/").json()
        assert version["kind"] == "quantized" and version["quantization"]["method"] == method
        assert version["parents"] == [{"model": model, "number": 1, "relation": "quantized_from"}]
        analysis = api.get(f"/api/v1/analyses/{row['analysis']}").json()
        assert analysis["status"] == "succeeded" and analysis["dataset"] == dataset
        assert analysis["reference"] == {"model": model, "version": 1}
        assert analysis["candidate"] == {"model": model, "version": row["version"]}
        assert analysis["kl"]["mean"] == row["kl_mean"]
        quantize_job = api.get(f"/api/v1/jobs/{row['quantize_job']}").json()
        assert quantize_job["status"] == "succeeded" and quantize_job["result"]["version"] == row["version"]

    assert nf4["size_ratio"] < int8["size_ratio"]
    assert body["recommended"] == nf4["version"]
    assert ModelVersion.objects.filter(model__name=model).count() == 3  # the source and two candidates
