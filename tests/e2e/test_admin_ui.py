"""The admin UI in headless Chromium against a real gunicorn and Celery worker: upload and seal, quantize,
approve, roll back, and the regulator's read-only view. Screenshots land in .var/screenshots/."""
from pathlib import Path


from governance.models import Alias
from registry.models import ModelVersion
from tests.conftest import client_for, register_sealed_version
from tests.e2e.conftest import ROOT, admin_login

SCREENSHOTS = ROOT / ".var" / "screenshots"


def _shot(page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


def test_engineer_uploads_seals_and_quantizes_in_the_admin(web_server, worker, e2e_users, unique, tiny_model_dir,
                                                           page):
    engineer = e2e_users["engineer"]
    admin_login(page, web_server, engineer.username)
    page.goto(f"{web_server}/admin/registry/registeredmodel/add/")
    page.fill("#id_name", f"ui-{unique}")
    page.fill("#id_description", "Credit memo drafting")
    page.click("input[name=_save]")
    page.goto(f"{web_server}/admin/registry/modelversion/add/")
    page.select_option("#id_model", label=f"ui-{unique}")
    page.click("input[name=_save]")
    version = ModelVersion.objects.get(model__name=f"ui-{unique}", number=1)
    page.goto(f"{web_server}/admin/registry/modelversion/{version.pk}/change/")
    for file_path in sorted(Path(tiny_model_dir).iterdir()):
        page.set_input_files("#upload-file input[type=file]", str(file_path))
        page.click("input[name=_upload]")
        page.wait_for_selector(f"text=Uploaded {file_path.name}")
    _shot(page, "version-draft-uploaded")
    page.click("input[name=_seal]")
    page.wait_for_selector("text=Sealed")
    version.refresh_from_db()
    assert version.status == "ready"
    files = page.inner_text("#version-files")
    for stored in version.files.all():
        assert stored.path in files and stored.sha256 in files
    _shot(page, "version-sealed")

    page.select_option("#quantize select[name=method]", "int8")
    page.click("input[name=_quantize]")
    page.wait_for_selector("text=Quantization job", timeout=10_000)
    _shot(page, "job-running")
    page.wait_for_selector("#job-result", timeout=180_000)  # the page refreshes itself until the job ends
    assert "v2" in page.inner_text("#job-result")
    _shot(page, "job-succeeded")
    quantized = ModelVersion.objects.get(model__name=f"ui-{unique}", number=2)
    page.goto(f"{web_server}/admin/registry/modelversion/{quantized.pk}/change/")
    assert "quantized from" in page.inner_text("#lineage")


def test_approvers_approve_and_ops_roll_back_in_the_admin(web_server, e2e_users, unique, tiny_model_dir, browser):
    api = client_for(e2e_users["engineer"])
    model = f"gov-{unique}"
    register_sealed_version(api, model, tiny_model_dir)
    register_sealed_version(api, model, tiny_model_dir)

    def approve_in_browser(request_id: int, username: str, comment: str) -> str:
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        page = context.new_page()
        admin_login(page, web_server, username)
        page.goto(f"{web_server}/admin/governance/changerequest/{request_id}/change/")
        page.fill("#decide textarea[name=comment]", comment)
        page.click("input[name=_approve]")
        page.wait_for_selector("text=Recorded your approve")
        _shot(page, f"change-request-{username.split('-')[0]}")
        text = page.inner_text("#decisions")
        context.close()
        return text

    for number in (1, 2):
        if number == 2:
            # The second deployment is gated on an analysis; give it one with measured statistics.
            from registry.models import Dataset
            from tests.governance.conftest import make_analysis

            dataset = Dataset.objects.create(name="eval", purpose="evaluation", sha256="0" * 64, records=1, size=1,
                                             record_format="text", object_key="x", created_by=e2e_users["engineer"])
            make_analysis(reference=ModelVersion.objects.get(model__name=model, number=1),
                          candidate=ModelVersion.objects.get(model__name=model, number=2), dataset=dataset,
                          actor=e2e_users["engineer"])
        request_id = api.post("/api/v1/change-requests/", {"model": model, "alias": "production", "version": number,
                                                           "justification": "release"}, format="json").json()["id"]
        assert "first approval" in approve_in_browser(request_id, e2e_users["approver"].username, "first approval")
        assert "second" in approve_in_browser(request_id, e2e_users["approver2"].username, "second")
    alias = Alias.objects.get(model__name=model, name="production")
    assert alias.version.number == 2

    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    admin_login(page, web_server, e2e_users["ops"].username)
    page.goto(f"{web_server}/admin/governance/alias/{alias.pk}/change/")
    assert "returns to v1" in page.inner_text("#rollback")
    page.fill("#rollback textarea[name=reason]", "p99 latency doubled")
    page.once("dialog", lambda dialog: dialog.accept())
    page.click("input[name=_rollback]")
    page.wait_for_selector("text=rolled back from v2 to v1")
    _shot(page, "alias-rolled-back")
    assert "p99 latency doubled" in page.inner_text("#alias-history")
    alias.refresh_from_db()
    assert alias.version.number == 1
    context.close()


def test_regulator_sees_versions_and_audit_trail_read_only(web_server, e2e_users, unique, tiny_model_dir, page):
    api = client_for(e2e_users["engineer"])
    register_sealed_version(api, f"ro-{unique}", tiny_model_dir)
    version = ModelVersion.objects.get(model__name=f"ro-{unique}", number=1)
    admin_login(page, web_server, e2e_users["regulator"].username)
    page.goto(f"{web_server}/admin/registry/modelversion/{version.pk}/change/")
    assert page.locator("#version-files").is_visible()
    assert page.locator("#upload-file").count() == 0 and page.locator("#quantize").count() == 0
    page.goto(f"{web_server}/admin/registry/registeredmodel/add/")
    assert "403" in page.title() or page.locator("text=403").count() > 0 or "login" in page.url
    page.goto(f"{web_server}/admin/foundation/auditevent/?model_name=ro-{unique}")
    assert "version.sealed" in page.inner_text("#result_list")
    _shot(page, "regulator-audit-trail")
