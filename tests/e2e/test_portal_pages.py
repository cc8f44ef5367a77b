"""The regulator portal in headless Chromium against a real gunicorn: a report page that says what changed and
how its gates came out, and an audit trail that pages, filters and names objects in product words.
Screenshots land in /tmp/ui_shots/."""
from pathlib import Path


from foundation.models import AuditEvent
from governance.models import ChangeRequest
from registry.models import Dataset, ModelVersion
from tests.conftest import client_for, register_sealed_version
from tests.governance.conftest import make_analysis

SHOTS = Path("/tmp/ui_shots")


def _shot(page, name: str) -> None:
    SHOTS.mkdir(exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def _portal_login(page, base_url: str, username: str) -> None:
    page.goto(f"{base_url}/portal/login/")
    page.fill("#id_username", username)
    page.fill("#id_password", f"{username}-password")
    page.click("button[type=submit]")
    page.wait_for_url(f"{base_url}/portal/")


def _outside_the_event_loop(function, **kwargs):
    """pyHanko signs with asyncio.run(), which cannot start inside the loop Playwright's sync API runs here."""
    from concurrent.futures import ThreadPoolExecutor

    from django.db import connection

    def call():
        try:
            return function(**kwargs)
        finally:
            connection.close()

    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(call).result()


def _deploy(api, approvers, model: str, number: int) -> ChangeRequest:
    request_id = api.post("/api/v1/change-requests/", {"model": model, "alias": "production", "version": number,
                                                       "justification": f"release v{number}"},
                          format="json").json()["id"]
    for approver in approvers:
        client_for(approver).post(f"/api/v1/change-requests/{request_id}/decisions",
                                  {"decision": "approve", "comment": f"fine by {approver.username}"}, format="json")
    return ChangeRequest.objects.get(pk=request_id)


def test_regulator_reads_a_report_with_its_change_summary_and_gates(web_server, e2e_users, unique, tiny_model_dir,
                                                                   page):
    from reports.services import update_change_impact_report

    api = client_for(e2e_users["engineer"])
    model = f"pr-{unique}"
    register_sealed_version(api, model, tiny_model_dir)
    register_sealed_version(api, model, tiny_model_dir)
    approvers = [e2e_users["approver"], e2e_users["approver2"]]
    _deploy(api, approvers, model, 1)
    dataset = Dataset.objects.create(name=f"eval-{unique}", purpose="evaluation", sha256="0" * 64, records=1, size=1,
                                     record_format="text", object_key="x", created_by=e2e_users["engineer"])
    make_analysis(reference=ModelVersion.objects.get(model__name=model, number=1),
                  candidate=ModelVersion.objects.get(model__name=model, number=2), dataset=dataset,
                  actor=e2e_users["engineer"], kl_mean=0.0012345, kl_p99=0.0234567)
    update = _deploy(api, approvers, model, 2)
    assert update.status == "deployed"
    report = _outside_the_event_loop(update_change_impact_report, change_request_id=update.pk)
    _portal_login(page, web_server, e2e_users["regulator"].username)

    page.goto(f"{web_server}/portal/reports/{report.pk}/")
    summary = page.inner_text("#change-summary")
    assert f"{model}@production: v1 (upload) → v2 (upload" in summary
    assert f"#{update.pk}, deployed" in summary and "release v2" in summary
    assert f"fine by {e2e_users['approver'].username}" in summary and "(2 required)" in summary
    gates = page.inner_text("#report-gates")
    assert "kl mean" in gates and "0.00123" in gates and "0.0012345" not in gates  # 4 significant digits
    assert gates.count("pass") + gates.count("fail") == len(update.gates)
    _shot(page, "portal-report")
    pdf = page.request.get(f"{web_server}{page.get_attribute('text=Download the PDF', 'href')}")
    assert pdf.ok and pdf.body().startswith(b"%PDF")


def test_regulator_pages_and_filters_the_audit_trail_in_product_words(web_server, e2e_users, unique, tiny_model_dir,
                                                                     page):
    api = client_for(e2e_users["engineer"])
    model = f"pa-{unique}"
    while AuditEvent.objects.filter(model_name=model).count() <= 60:  # more than one page of 50
        register_sealed_version(api, model, tiny_model_dir)
    request = _deploy(api, [e2e_users["approver"], e2e_users["approver2"]], model, 1)
    total = AuditEvent.objects.filter(model_name=model).count()
    _portal_login(page, web_server, e2e_users["regulator"].username)

    page.goto(f"{web_server}/portal/audit/")
    page.select_option("select[name=model]", model)
    page.click("#audit-filters button[type=submit]")
    page.wait_for_url(f"**/portal/audit/?model={model}*")
    assert f"Events 1–50 of {total}" in page.inner_text("#audit-count")
    table = page.inner_text("#audit-events")
    assert f"change request #{request.pk} ({model}@production → v1)" in table and f"{model}@production" in table
    assert "refuses deletion and overwriting" in page.inner_text("#anchor-explained")
    _shot(page, "portal-audit-page-1")

    page.click("#audit-pager >> text=older ›")
    page.wait_for_url(f"**/portal/audit/?model={model}&page=2")
    assert f"Events 51–{total} of {total}" in page.inner_text("#audit-count")
    assert "model.created" in page.inner_text("#audit-events")  # the oldest event is on the last page
    assert f"{model} v1" in page.inner_text("#audit-events")
    _shot(page, "portal-audit-page-2")

    page.goto(f"{web_server}/portal/audit/?model={model}")
    page.select_option("select[name=action]", "change_request.approved")
    page.fill("input[name=actor]", e2e_users["approver2"].username)
    page.click("#audit-filters button[type=submit]")
    rows = page.eval_on_selector_all("#audit-events tbody tr", "r => r.map(x => x.innerText)")
    assert len(rows) == 1 and e2e_users["approver2"].username in rows[0] and f"change request #{request.pk}" in rows[0]
    _shot(page, "portal-audit-filtered")
    page.fill("input[name=since]", "2999-01-01")
    page.click("#audit-filters button[type=submit]")
    assert "No events match" in page.inner_text("#audit-count")
