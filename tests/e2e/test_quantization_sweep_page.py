"""The quantization sweep's admin page in headless Chromium: the table with each gate's verdict and the failed
candidate's error, the size-vs-KL chart, and the button that opens a change request for the recommended version."""
from pathlib import Path

import pytest

from governance.models import ChangeRequest
from registry.models import Dataset, ModelVersion
from tests.conftest import client_for, jsonl, register_sealed_version
from tests.e2e.conftest import admin_login
from tests.governance.conftest import make_analysis
from workers import sweep_services
from workers.models import Job, QuantizationSweep

SHOTS = Path("/tmp/ui_shots_sweep")


@pytest.fixture
def sweep(e2e_users, unique, tiny_model_dir):
    """A finished sweep as its job leaves it: nf4 fails the KL gate, int8 passes (recommended), fp4 failed."""
    from django.core.files.uploadedfile import SimpleUploadedFile

    api = client_for(e2e_users["engineer"])
    engineer = e2e_users["engineer"]
    model = f"swept-{unique}"
    for _ in range(3):
        register_sealed_version(api, model, tiny_model_dir)
    source, nf4, int8 = (ModelVersion.objects.select_related("model").get(model__name=model, number=n)
                         for n in (1, 2, 3))
    response = api.post("/api/v1/datasets/", {"name": f"eval-{unique}", "purpose": "evaluation",
                                              "file": SimpleUploadedFile("e.jsonl", jsonl([{"text": "a b c"}]))},
                        format="multipart")
    dataset = Dataset.objects.get(pk=response.json()["id"])
    candidates = [{"method": "nf4", "compute_dtype": "float32", "double_quant": True, "skip_modules": ["lm_head"]},
                  {"method": "fp4", "compute_dtype": "float32", "double_quant": False, "skip_modules": ["lm_head"]},
                  {"method": "int8", "compute_dtype": "float32", "double_quant": False, "skip_modules": ["lm_head"]}]
    job = Job.objects.create(kind=Job.Kind.QUANTIZATION_SWEEP, status=Job.Status.SUCCEEDED, progress=100,
                             created_by=engineer, source_version=source)
    sweep = QuantizationSweep.objects.create(source=source, dataset=dataset, alias="",
                                             params={"candidates": candidates,
                                                     "analysis": {"max_tokens": 64, "top_k": 5}},
                                             job=job, created_by=engineer)
    for index, version, size_ratio, kl_mean, top1 in ((0, nf4, 0.31, 0.062, 0.93), (2, int8, 0.52, 0.004, 0.99)):
        analysis = make_analysis(reference=source, candidate=version, dataset=dataset, actor=engineer,
                                 kl_mean=kl_mean, kl_p99=kl_mean * 8, top1=top1, ppl_ratio=1.002)
        sweep_services.record_sweep_row(sweep_id=sweep.pk, row={
            "index": index, "settings": candidates[index], "version": version.number, "size_ratio": size_ratio,
            "kl_mean": kl_mean, "kl_p99": kl_mean * 8, "same_top1": top1, "ppl_ratio": 1.002, "flip_rate": None,
            "gates": None, "analysis": analysis.pk, "quantize_job": job.pk, "error": None})
    sweep_services.record_sweep_row(sweep_id=sweep.pk, row={
        "index": 1, "settings": candidates[1], "version": None, "size_ratio": None, "kl_mean": None,
        "kl_p99": None, "same_top1": None, "ppl_ratio": None, "flip_rate": None, "gates": None, "analysis": None,
        "quantize_job": None, "error": "Unknown compute dtype 'float8'; choose one of float32, float16, bfloat16."})
    sweep_services.finish_quantization_sweep(sweep_id=sweep.pk)
    sweep.refresh_from_db()
    assert sweep.recommended == 3
    return sweep


def test_engineer_reads_a_sweep_and_opens_a_change_request_for_the_recommended_version(web_server, e2e_users,
                                                                                     unique, sweep, page):
    admin_login(page, web_server, e2e_users["engineer"].username)
    page.goto(f"{web_server}/admin/workers/quantizationsweep/{sweep.pk}/change/")
    table = page.inner_text("#sweep-table")
    assert "Failed: Unknown compute dtype 'float8'" in table
    headers = page.eval_on_selector_all("#sweep-table thead th", "cells => cells.map(cell => cell.textContent)")
    assert headers[-4:] == ["KL mean", "same top-1", "PPL ratio", "Analysis"]  # the default gates' columns
    recommended = page.inner_text("#recommended-candidate")
    assert "int8" in recommended and "v3" in recommended and "recommended" in recommended
    verdicts = page.eval_on_selector_all("#recommended-candidate td.verdict", "cells => cells.map(c => c.textContent)")
    assert verdicts == ["pass", "pass", "pass"]
    nf4 = page.inner_text("#sweep-table tbody tr:first-child")
    assert "fail" in nf4 and "0.062" in nf4
    assert page.get_attribute("#sweep-table tbody tr:first-child td.verdict.fail", "title") == \
        "0.062 (must be ≤ 0.035)"
    assert page.eval_on_selector("#sweep-chart img", "i => i.complete && i.naturalWidth > 0")
    assert page.input_value("#recommended-form input[name=alias]") == "production"
    assert "smallest of 3 candidates passing every gate (default gates)" in page.input_value(
        "#recommended-form textarea[name=justification]")
    SHOTS.mkdir(exist_ok=True)
    page.screenshot(path=str(SHOTS / "sweep-detail.png"), full_page=True)
    page.click(f"#sweep-table tbody tr:first-child a:text('analysis')")
    page.wait_for_url("**/admin/workers/analysis/*/change/")

    page.goto(f"{web_server}/admin/workers/quantizationsweep/")
    assert "v3" in page.inner_text("#result_list") and f"swept-{unique} v1" in page.inner_text("#result_list")

    page.goto(f"{web_server}/admin/workers/quantizationsweep/{sweep.pk}/change/")
    page.fill("#recommended-form input[name=alias]", "staging")
    page.click("text=Open a change request for the recommended version")
    page.wait_for_url("**/admin/governance/changerequest/*/change/")
    request = ChangeRequest.objects.get(model__name=f"swept-{unique}")
    assert request.to_version.number == 3 and request.alias == "staging"
    assert request.requested_by == e2e_users["engineer"]
    assert "opened" in page.inner_text(".messagelist")


def test_engineer_starts_a_sweep_from_the_version_page(web_server, e2e_users, unique, tiny_model_dir, page):
    from django.core.files.uploadedfile import SimpleUploadedFile

    api = client_for(e2e_users["engineer"])
    model = f"sweep-form-{unique}"
    register_sealed_version(api, model, tiny_model_dir)
    version = ModelVersion.objects.get(model__name=model, number=1)
    dataset = api.post("/api/v1/datasets/", {"name": f"eval-{unique}", "purpose": "evaluation",
                                             "file": SimpleUploadedFile("e.jsonl", jsonl([{"text": "a b c"}]))},
                       format="multipart").json()["id"]
    admin_login(page, web_server, e2e_users["engineer"].username)
    page.goto(f"{web_server}/admin/registry/modelversion/{version.pk}/change/")
    form = page.locator("#quantization_sweep-form")
    form.locator("select[name=sweep-dataset]").select_option(str(dataset))
    form.locator("input[value=fp4]").uncheck()
    form.locator("input[name=sweep-alias]").fill("Prod uction")  # not an alias name: refused on the form
    form.locator("input[name=sweep-max_tokens]").fill("64")
    SHOTS.mkdir(exist_ok=True)
    page.locator("#start-quantization-sweep").screenshot(path=str(SHOTS / "version-page-sweep-form.png"))
    form.locator("input[type=submit]").click()
    page.wait_for_selector("text=Nothing was started")
    page.screenshot(path=str(SHOTS / "sweep-form-refused.png"), full_page=True)
    assert "Not an alias name" in page.inner_text(".field-alias .errorlist")
    assert QuantizationSweep.objects.filter(source=version).count() == 0

    page.fill("input[name=sweep-alias]", "staging")
    page.click("#quantization_sweep-form input[type=submit]")
    page.wait_for_url("**/admin/workers/quantizationsweep/*/change/")
    assert "2 candidates" in page.inner_text(".messagelist")
    sweep = QuantizationSweep.objects.get(source=version)
    assert [c["method"] for c in sweep.params["candidates"]] == ["nf4", "int8"] and sweep.alias == "staging"
    assert sweep.params["analysis"]["max_tokens"] == 64
    assert "No candidate measured yet" in page.inner_text("#sweep-table")
