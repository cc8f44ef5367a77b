"""End to end: decisions and a rollback through the API; the hooks enqueue; a real Celery worker renders, signs,
locks and delivers the reports; the API serves them and verifies them against the organisation root."""
import json
import time

import pytest
from django.core.management import call_command

from governance.models import ChangeRequest
from registry import services as registry_services
from registry.models import ModelVersion
from reports.models import ReportDelivery, ReportSubscription
from tests.conftest import client_for
from tests.reports import factories


@pytest.fixture
def report_pki(committed_db, tmp_path, monkeypatch, settings):
    """A PKI of this test's own, for this process and (through the environment) the worker process."""
    directory = tmp_path / "pki"
    monkeypatch.setenv("REPORT_PKI_DIR", str(directory))
    settings.REPORT_PKI_DIR = directory
    call_command("init_pki")
    return directory


@pytest.fixture
def report_worker(report_pki, worker):
    return worker


def wait_for_report(api, model: str, *, kind: str, count: int = 1, timeout: float = 90) -> list[dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        finals = [row for row in api.get("/api/v1/reports/", {"model": model, "kind": kind}).json()
                  if row["status"] == "final"]
        if len(finals) >= count:
            return finals
        time.sleep(0.3)
    raise AssertionError(f"no final {kind} report for {model} after {timeout} s")


@pytest.fixture
def report_web(report_worker, web_server):
    """gunicorn started after the PKI, so it reads the same REPORT_PKI_DIR as the worker."""
    return web_server


def test_deployments_and_a_rollback_get_signed_reports_from_the_worker(report_web, browser, e2e_users, unique):
    engineer, ops, regulator = e2e_users["engineer"], e2e_users["ops"], e2e_users["regulator"]
    approvers = [client_for(e2e_users["approver"]), client_for(e2e_users["approver2"])]
    engineer_api, regulator_api = client_for(engineer), client_for(regulator)
    ReportSubscription.objects.create(user=regulator)
    name = f"e2e-report-{unique}"
    model = registry_services.create_model(name=name, description="Drafts credit memos.", actor=engineer)
    v1 = factories.sealed_upload(model, engineer, seed=1)

    def deploy(version_number: int) -> int:
        opened = engineer_api.post("/api/v1/change-requests/", {
            "model": name, "alias": "production", "version": version_number,
            "justification": f"Deploy v{version_number}."}, format="json")
        assert opened.status_code == 201, opened.content
        assert opened.json()["status"] == "pending", opened.json()
        for number, approver_api in enumerate(approvers, start=1):
            decided = approver_api.post(f"/api/v1/change-requests/{opened.json()['id']}/decisions",
                                        {"decision": "approve", "comment": f"approval {number}"}, format="json")
            assert decided.status_code == 200, decided.content
        assert decided.json()["status"] == "deployed"
        return opened.json()["id"]

    first_request = deploy(v1.number)
    [first] = wait_for_report(regulator_api, name, kind="change_impact")
    assert first["change_request"] == first_request and first["sha256"]

    v2 = factories.derived_version(v1, engineer, kind=ModelVersion.Kind.QUANTIZED,
                                   metadata=factories.QUANTIZATION_METADATA)
    evaluation = factories.dataset(engineer, name=f"eval-{unique}", purpose="evaluation",
                                   records=[{"text": "The borrower is current on all payments."}] * 3)
    factories.analysis(reference=v1, candidate=v2, dataset=evaluation, actor=engineer,
                       result=factories.synthetic_analysis_result(blocks=4))
    second_request = deploy(v2.number)
    reports = wait_for_report(regulator_api, name, kind="change_impact", count=2)
    second = next(row for row in reports if row["change_request"] == second_request)

    rolled_back = client_for(ops).post(f"/api/v1/models/{name}/aliases/production/rollback",
                                       {"reason": "Flip rate drifted on live traffic."}, format="json")
    assert rolled_back.status_code == 200 and rolled_back.json()["version"] == v1.number
    [rollback] = wait_for_report(regulator_api, name, kind="rollback")

    for report in (first, second, rollback):
        verification = regulator_api.get(f"/api/v1/reports/{report['id']}/verification").json()
        assert verification["verified"] is True, json.dumps(verification, default=str)[:3000]
        pdf = regulator_api.get(f"/api/v1/reports/{report['id']}/pdf")
        assert pdf.status_code == 200 and pdf.content.startswith(b"%PDF")
    signers = [s["signer"] for s in regulator_api.get(f"/api/v1/reports/{second['id']}/verification").json()["signatures"]]
    assert signers[1:3] == [e2e_users["approver"].username, e2e_users["approver2"].username]
    assert ChangeRequest.objects.get(pk=second_request).reports.get().status == "final"

    deadline = time.monotonic() + 30
    while ReportDelivery.objects.filter(user=regulator).count() < 3 and time.monotonic() < deadline:
        time.sleep(0.3)
    assert ReportDelivery.objects.filter(user=regulator).count() == 3

    # The regulator reads the reports in the portal, in a real browser.
    from tests.e2e.test_admin_ui import _shot

    page = browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True).new_page()
    page.goto(f"{report_web}/portal/login/")
    page.fill("#id_username", regulator.username)
    page.fill("#id_password", f"{regulator.username}-password")
    page.click("button[type=submit]")
    page.goto(f"{report_web}/portal/?model={name}")
    section = page.inner_text(f"#model-{name} + table")
    assert section.count("verified") == 3 and "rolled back v2" in section, section
    _shot(page, "portal-reports")
    page.click(f"a[href='/portal/reports/{rollback['id']}/']")
    assert "verified" in page.inner_text("p:has(.badge)")
    assert ops.username in page.inner_text("body")
    _shot(page, "portal-rollback-report")
    with page.expect_download() as download:
        page.click("text=Download the PDF")
    assert open(download.value.path(), "rb").read(5) == b"%PDF-"
