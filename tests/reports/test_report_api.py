"""GET /api/v1/reports/...: the list, the PDF, the verification against the organisation root, the root itself."""
import hashlib

import pytest

from foundation import storage
from reports import pki, selectors
from reports.models import Report
from tests.conftest import client_for, make_user


@pytest.fixture
def regulator_api(history):
    return client_for(history["users"]["rita"])


def test_list_shows_reports_with_kind_model_request_digest_and_status(history, regulator_api):
    response = regulator_api.get("/api/v1/reports/", {"model": "credit-llm"})

    assert response.status_code == 200
    by_id = {row["id"]: row for row in response.json()}
    update = by_id[history["reports"]["update"].pk]
    assert update["kind"] == "change_impact" and update["model"] == "credit-llm" and update["status"] == "final"
    assert update["change_request"] == history["requests"]["update"].pk
    assert update["sha256"] == hashlib.sha256(history["pdfs"]["update"]).hexdigest()
    assert update["title"] == "credit-llm@production: v1 → v2" and update["created_at"]
    assert [s["signer"] for s in update["signatures"]] == ["Bob Approver", "Carol Checker", "Acme Test Bank"]
    rollback = by_id[history["reports"]["rollback"].pk]
    assert rollback["kind"] == "rollback" and rollback["change_request"] is None and rollback["status"] == "final"
    lora = by_id[history["reports"]["lora"].pk]
    assert lora["sha256"] is None and lora["pending_fields"] == ["approver-1", "approver-2", "issue"]


def test_list_filters_by_model_and_kind(history, regulator_api):
    assert regulator_api.get("/api/v1/reports/", {"model": "no-such-model"}).json() == []
    rollbacks = regulator_api.get("/api/v1/reports/", {"model": "credit-llm", "kind": "rollback"}).json()
    assert [row["id"] for row in rollbacks] == [history["reports"]["rollback"].pk]


def test_pdf_is_served_as_stored(history, regulator_api):
    report = history["reports"]["update"]

    response = regulator_api.get(f"/api/v1/reports/{report.pk}/pdf")

    assert response.status_code == 200 and response["Content-Type"] == "application/pdf"
    assert response.content == history["pdfs"]["update"]
    assert response["Content-Disposition"] == f'attachment; filename="credit-llm-change-impact-report-{report.pk}.pdf"'
    assert response["X-Report-SHA256"] == report.sha256


def test_verification_of_a_final_report(history, regulator_api):
    report = history["reports"]["update"]

    body = regulator_api.get(f"/api/v1/reports/{report.pk}/verification").json()

    assert body["verified"] is True and body["intact"] is True and body["trusted"] is True
    assert body["sha256_matches"] is True and body["pending_fields"] == []
    assert [(s["signer"], s["intact"], s["trusted"]) for s in body["signatures"]] == [
        ("Acme Test Bank Model Registry Reports", True, True), ("Bob Approver", True, True),
        ("Carol Checker", True, True), ("Acme Test Bank Model Registry Reports", True, True)]
    assert all(s["signed_at"] for s in body["signatures"])
    assert body["root_sha256_fingerprint"] == pki.root_summary()["sha256_fingerprint"]


def test_verification_of_a_rollback_report_names_the_operator(history, regulator_api):
    body = regulator_api.get(f"/api/v1/reports/{history['reports']['rollback'].pk}/verification").json()

    assert body["verified"] is True
    assert [s["signer"] for s in body["signatures"]] == ["Acme Test Bank Model Registry Reports", "Oscar Operator"]


def test_verification_notices_a_stored_file_that_differs_from_the_issued_one(history):
    report = Report.objects.get(pk=history["reports"]["first"].pk)
    tampered = bytearray(history["pdfs"]["first"])
    tampered[len(tampered) // 3] ^= 0x01
    # Someone with storage credentials wrote a new version and pointed the (unsaved) row at it.
    forged = storage.put_bytes(f"reports/{report.pk}/forged.pdf", bytes(tampered))
    report.object_key, report.storage_version_id = forged.key, forged.version_id

    verdict = selectors.verify_report(report)

    assert verdict["verified"] is False and verdict["sha256_matches"] is False and verdict["intact"] is False


def test_root_certificate_is_downloadable(regulator_api):
    response = regulator_api.get("/api/v1/reports/root-certificate")

    assert response.status_code == 200 and response.content == pki.root_pem()
    assert response["X-Root-SHA256-Fingerprint"] == pki.root_summary()["sha256_fingerprint"]


@pytest.mark.parametrize("path", ["/api/v1/reports/999999/", "/api/v1/reports/999999/pdf",
                                  "/api/v1/reports/999999/verification"])
def test_unknown_report_is_404_with_a_message(regulator_api, path):
    response = regulator_api.get(path)

    assert response.status_code == 404
    assert response.json() == {"error": "not_found", "detail": "No report with id 999999."}


def test_reports_need_a_login_and_a_role(history):
    from rest_framework.test import APIClient

    assert APIClient().get("/api/v1/reports/").status_code == 401
    nobody = make_user("nobody-reports")
    assert client_for(nobody).get("/api/v1/reports/").status_code == 403
    assert client_for(nobody).get("/api/v1/reports/root-certificate").status_code == 403


def test_reports_are_read_only(history, regulator_api):
    report = history["reports"]["update"]

    assert regulator_api.post("/api/v1/reports/", {}, format="json").status_code == 403
    assert regulator_api.delete(f"/api/v1/reports/{report.pk}/").status_code == 403
    assert client_for(history["users"]["bob"]).delete(f"/api/v1/reports/{report.pk}/").status_code in (403, 405)
