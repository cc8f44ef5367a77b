"""The admin's own flows in headless Chromium, against a real gunicorn and (where work runs) a real worker: an ML
engineer starts an analysis and a LoRA update and opens and withdraws a change request from the version page,
ops roll back only to versions a rollback may return to, and the top bar links what each role may open.
Screenshots of every page land in /tmp/ui_shots/."""
from pathlib import Path


from governance.models import Alias, ChangeRequest
from registry.models import ModelVersion
from tests.conftest import client_for, jsonl, register_sealed_version
from tests.e2e.conftest import admin_login, wait_for_job
from tests.governance.conftest import make_analysis
from workers.pipelines.tiny_model import SAMPLE_TEXTS, build_tiny_llama

SHOTS = Path("/tmp/ui_shots")


def _shot(page, name: str) -> None:
    SHOTS.mkdir(exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def _dataset(api, name: str, purpose: str, records: list[dict]) -> int:
    from django.core.files.uploadedfile import SimpleUploadedFile

    response = api.post("/api/v1/datasets/", {"name": name, "purpose": purpose,
                                              "file": SimpleUploadedFile(f"{name}.jsonl", jsonl(records))},
                        format="multipart")
    assert response.status_code == 201, response.content
    return response.json()["id"]


def _version(model: str, number: int) -> ModelVersion:
    return ModelVersion.objects.select_related("model").get(model__name=model, number=number)


def _wait_for_job_page(page, api) -> str:
    """Wait until the job on this page has finished, then read its status as the page shows it."""
    job_id = int(page.url.rstrip("/").split("/")[-2])
    job = wait_for_job(api, job_id)
    assert job["status"] == "succeeded", job["error"]
    page.reload()
    return page.inner_text(".field-status .readonly")


def test_engineer_starts_an_analysis_from_the_form_and_reads_its_page(worker, web_server, e2e_users, unique,
                                                                     tiny_model_dir, tmp_path, page):
    api = client_for(e2e_users["engineer"])
    model = f"an-{unique}"
    register_sealed_version(api, model, tiny_model_dir)
    register_sealed_version(api, model, build_tiny_llama(tmp_path / "other", seed=1))  # different weights
    _dataset(api, f"train-{unique}", "training", [{"prompt": "Q?", "completion": " A"}] * 3)
    evaluation = _dataset(api, f"eval-{unique}", "evaluation", [{"text": t} for t in SAMPLE_TEXTS])
    candidate = _version(model, 2)
    admin_login(page, web_server, e2e_users["engineer"].username)

    page.goto(f"{web_server}/admin/registry/modelversion/{candidate.pk}/change/")
    form = page.locator("#analysis-form")
    assert f"eval-{unique}" in form.inner_text() and f"train-{unique}" not in form.inner_text()
    _shot(page, "version-page-forms")
    form.locator("select[name=analysis-reference]").select_option(label="v1 (upload) · upload")
    form.locator("select[name=analysis-dataset]").select_option(str(evaluation))
    form.locator("input[name=analysis-max_tokens]").fill("3")
    form.locator("input[type=submit]").click()

    # Refused as the API refuses it: the form comes back with the reason and what was typed.
    page.wait_for_selector("text=Nothing was started")
    assert "max_tokens" in page.inner_text("#analysis-refused")
    _shot(page, "analysis-form-refused")
    page.fill("input[name=analysis-max_tokens]", "512")
    page.click("#analysis-refused input[type=submit]")

    page.wait_for_url("**/admin/workers/job/*/change/")
    assert _wait_for_job_page(page, api) == "Succeeded"
    page.click("#job-result >> text=analysis")
    page.wait_for_url("**/admin/workers/analysis/*/change/")
    statistics = page.inner_text("#analysis-statistics")
    assert "KL mean (nats)" in statistics and "same top-1 token" in statistics
    page.wait_for_load_state("networkidle")
    loaded = page.eval_on_selector_all("#analysis-charts img", "i => i.map(x => x.complete && x.naturalWidth > 0)")
    assert loaded and all(loaded)
    _shot(page, "analysis-from-form")

    page.goto(f"{web_server}/admin/registry/modelversion/{candidate.pk}/change/")
    assert "analysis" in page.inner_text("#version-analyses") and "succeeded" in page.inner_text("#version-analyses")


def test_engineer_trains_a_lora_update_from_the_form_and_sees_its_curve(worker, web_server, e2e_users, unique,
                                                                       tiny_model_dir, page):
    api = client_for(e2e_users["engineer"])
    model = f"lora-{unique}"
    register_sealed_version(api, model, tiny_model_dir)
    training = _dataset(api, f"train-{unique}", "training",
                        [{"prompt": f"Q: risk of {t.split()[1]}?", "completion": " low"} for t in SAMPLE_TEXTS])
    base = _version(model, 1)
    admin_login(page, web_server, e2e_users["engineer"].username)

    page.goto(f"{web_server}/admin/registry/modelversion/{base.pk}/change/")
    form = page.locator("#lora-form")
    assert form.locator("input[name=lora-r]").input_value() == "8"  # the defaults are shown
    assert "q_proj, k_proj, v_proj, o_proj for this model" in form.inner_text()
    form.locator("select[name=lora-dataset]").select_option(str(training))
    form.locator("input[name=lora-r]").fill("4")
    form.locator("input[name=lora-alpha]").fill("8")
    form.locator("input[name=lora-steps]").fill("12")
    form.locator("input[name=lora-learning_rate]").fill("0.01")
    form.locator("input[type=submit]").click()

    page.wait_for_url("**/admin/workers/job/*/change/")
    assert _wait_for_job_page(page, api) == "Succeeded"
    page.click(f"#job-result >> text={model} v2")
    page.wait_for_url(f"**/admin/registry/modelversion/{_version(model, 2).pk}/change/")
    settings = page.inner_text("#lora-settings")
    assert "Rank r\t4" in settings and "Steps\t12" in settings and "q_proj, k_proj, v_proj, o_proj" in settings
    assert page.eval_on_selector("#training-curve img", "i => i.complete && i.naturalWidth > 0")
    assert "(made this version)" in page.inner_text("#version-jobs")  # not "No jobs yet"
    assert "adapted from" in page.inner_text("#lineage") and page.locator("#lineage img").count() == 1
    _shot(page, "lora-version")
    page.click(f"#lineage >> text={model} v1 (upload)")
    page.wait_for_url(f"**/admin/registry/modelversion/{base.pk}/change/")


def test_engineer_quantizes_with_gptq_on_calibration_data_from_the_form(worker, web_server, e2e_users, unique,
                                                                        tiny_model_dir, page):
    api = client_for(e2e_users["engineer"])
    model = f"gptq-ui-{unique}"
    register_sealed_version(api, model, tiny_model_dir)
    calibration = _dataset(api, f"memos-{unique}", "calibration", [{"text": text} for text in SAMPLE_TEXTS])
    source = _version(model, 1)
    admin_login(page, web_server, e2e_users["engineer"].username)

    page.goto(f"{web_server}/admin/registry/modelversion/{source.pk}/change/")
    form = page.locator("#calibrated_quantize-form")
    assert form.locator("input[name=calibrated-sym]").is_checked()  # symmetric: packed for serving by default
    assert form.locator("select[name=calibrated-group_size]").input_value() == "128"
    _shot(page, "calibrated-quantize-form")
    form.locator("select[name=calibrated-calibration_dataset]").select_option(str(calibration))
    form.locator("select[name=calibrated-group_size]").select_option("32")
    form.locator("input[name=calibrated-max_length]").fill("64")
    form.locator("input[type=submit]").click()

    page.wait_for_url("**/admin/workers/job/*/change/")
    assert _wait_for_job_page(page, api) == "Succeeded"
    page.click(f"#job-result >> text={model} v2")
    page.wait_for_url(f"**/admin/registry/modelversion/{_version(model, 2).pk}/change/")
    settings = page.inner_text("#quantization-settings")
    assert "Method\tGPTQ (calibrated)" in settings and "Group size\t32" in settings
    assert "Symmetric grid\tyes" in settings and f"memos-{unique} (id {calibration})" in settings
    assert "Stored as\tpack-quantized" in settings
    assert f"vllm serve ./{model}-v2" in page.inner_text("#serving")
    assert "calibrated on" in page.inner_text("#lineage")
    _shot(page, "calibrated-quantized-version")


def test_engineer_opens_and_withdraws_a_change_request_from_the_ui(web_server, e2e_users, unique, tiny_model_dir,
                                                                   page):
    api = client_for(e2e_users["engineer"])
    model = f"cr-{unique}"
    register_sealed_version(api, model, tiny_model_dir)
    version = _version(model, 1)
    admin_login(page, web_server, e2e_users["engineer"].username)

    page.goto(f"{web_server}/admin/registry/modelversion/{version.pk}/change/")
    form = page.locator("#change_request-form")
    form.locator("input[name=cr-alias]").fill("Prod!")
    form.locator("textarea[name=cr-justification]").fill("first release of the memo model")
    form.locator("input[type=submit]").click()
    page.wait_for_selector("text=Nothing was started")
    assert "does not match the required pattern" in page.inner_text("#change_request-refused")
    page.fill("input[name=cr-alias]", "production")
    page.click("#change_request-refused input[type=submit]")

    page.wait_for_url("**/admin/governance/changerequest/*/change/")
    request = ChangeRequest.objects.get(model__name=model)
    assert request.status == "pending" and request.requested_by == e2e_users["engineer"]
    assert f"{model}@production: nothing → v1" in page.inner_text("#change-request-links")
    _shot(page, "change-request-opened")

    messages = []
    page.once("dialog", lambda dialog: (messages.append(dialog.message), dialog.dismiss()))
    page.click("input[name=_withdraw]")
    assert f"Withdraw change request #{request.pk}?" in messages[0]
    request.refresh_from_db()
    assert request.status == "pending"  # dismissed: nothing happened
    page.fill("#withdraw textarea[name=reason]", "wrong alias")
    page.once("dialog", lambda dialog: dialog.accept())
    page.click("input[name=_withdraw]")
    page.wait_for_selector(f"text=You withdrew change request #{request.pk}")
    request.refresh_from_db()
    assert request.status == "withdrawn" and request.status_reason == "wrong alias"
    assert page.locator("#withdraw").count() == 0
    _shot(page, "change-request-withdrawn")


def _deploy(api, approvers, model: str, number: int) -> int:
    request_id = api.post("/api/v1/change-requests/", {"model": model, "alias": "production", "version": number,
                                                       "justification": "release"}, format="json").json()["id"]
    for approver in approvers:
        client_for(approver).post(f"/api/v1/change-requests/{request_id}/decisions", {"decision": "approve"},
                                  format="json")
    assert ChangeRequest.objects.get(pk=request_id).status == "deployed"
    return request_id


def test_ops_roll_back_only_to_versions_deployed_there(web_server, e2e_users, unique, tiny_model_dir, page):
    from registry.models import Dataset

    api = client_for(e2e_users["engineer"])
    model = f"rb-{unique}"
    for _ in range(3):
        register_sealed_version(api, model, tiny_model_dir)
    approvers = [e2e_users["approver"], e2e_users["approver2"]]
    first = _deploy(api, approvers, model, 1)
    alias = Alias.objects.get(model__name=model, name="production")
    admin_login(page, web_server, e2e_users["ops"].username)

    page.goto(f"{web_server}/admin/governance/alias/{alias.pk}/change/")
    assert "There is nothing to roll back to" in page.inner_text("#rollback")
    assert page.locator("#rollback input[name=_rollback]").is_disabled()
    _shot(page, "alias-nothing-to-roll-back")

    dataset = Dataset.objects.create(name=f"eval-{unique}", purpose="evaluation", sha256="0" * 64, records=1, size=1,
                                     record_format="text", object_key="x", created_by=e2e_users["engineer"])
    make_analysis(reference=_version(model, 1), candidate=_version(model, 3), dataset=dataset,
                  actor=e2e_users["engineer"])
    second = _deploy(api, approvers, model, 3)
    page.goto(f"{web_server}/admin/governance/alias/{alias.pk}/change/")
    options = page.eval_on_selector_all("#rollback select[name=to_version] option", "o => o.map(x => x.value)")
    assert options == ["1"]  # v2 was never deployed here, v3 is what it serves
    history = page.inner_text("#alias-history")
    assert f"change request #{first}" in history and f"change request #{second}" in history
    _shot(page, "alias-rollback-choice")
    page.fill("#rollback textarea[name=reason]", "flip rate drifted")
    page.once("dialog", lambda dialog: dialog.accept())
    page.click("input[name=_rollback]")
    page.wait_for_selector("text=rolled back from v3 to v1")
    alias.refresh_from_db()
    assert alias.version.number == 1
    _shot(page, "alias-rolled-back-to-choice")


def test_model_page_links_aliases_versions_and_change_requests_and_the_bar_follows_the_role(
        web_server, e2e_users, unique, tiny_model_dir, browser):
    api = client_for(e2e_users["engineer"])
    model = f"mp-{unique}"
    register_sealed_version(api, model, tiny_model_dir)
    register_sealed_version(api, model, tiny_model_dir)
    request_id = _deploy(api, [e2e_users["approver"], e2e_users["approver2"]], model, 1)
    model_id = _version(model, 1).model_id

    def bar_and_model_page(username: str, shot: str) -> tuple[list[str], str]:
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        page = context.new_page()
        admin_login(page, web_server, username)
        page.goto(f"{web_server}/admin/registry/registeredmodel/{model_id}/change/")
        links = page.eval_on_selector_all("#product-bar a", "a => a.map(x => x.innerText)")
        text = page.inner_text("#content")
        _shot(page, shot)
        if "Regulator portal" in links:
            page.click("#product-bar >> text=Regulator portal")
            page.wait_for_url("**/portal/")
        context.close()
        return links, text

    engineer_links, text = bar_and_model_page(e2e_users["engineer"].username, "model-page")
    assert engineer_links == ["Admin", "API docs"]
    assert f"{model}@production" in text and "v1 (upload)" in text
    assert f"change request #{request_id}" in text and f"{model} v2" in text
    regulator_links, _ = bar_and_model_page(e2e_users["regulator"].username, "model-page-regulator")
    assert regulator_links == ["Admin", "Regulator portal", "API docs"]


def test_quantized_version_shows_its_settings_as_a_labelled_table(worker, web_server, e2e_users, unique,
                                                                  tiny_model_dir, page):
    api = client_for(e2e_users["engineer"])
    model = f"q-{unique}"
    register_sealed_version(api, model, tiny_model_dir)
    job = api.post(f"/api/v1/models/{model}/versions/1/quantize", {"method": "nf4", "double_quant": True},
                   format="json").json()
    assert wait_for_job(api, job["job"])["status"] == "succeeded"
    admin_login(page, web_server, e2e_users["regulator"].username)

    page.goto(f"{web_server}/admin/registry/modelversion/{_version(model, 2).pk}/change/")
    settings = page.inner_text("#quantization-settings")
    for row in ("Method\tNF4 (4-bit NormalFloat)", "Bits\t4", "Compute dtype\tfloat32", "Double quantization\tyes",
                "Skipped modules (full precision)\tlm_head", "bitsandbytes version"):
        assert row in settings
    assert "% smaller" in settings and "KiB (" in settings  # sizes with units, the ratio as a saving
    assert "{" not in settings  # no raw JSON
    assert "(made this version)" in page.inner_text("#version-jobs")
    assert page.locator("#start-analysis").count() == 0  # a regulator reads, never writes
    _shot(page, "quantized-version")
