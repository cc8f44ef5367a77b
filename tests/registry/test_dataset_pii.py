"""Datasets are scanned for personal data when they are registered; data with findings trains nothing until it
is redacted (or a superuser records an exception), and the findings never show a full value."""
import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import override_settings

from foundation.models import AuditEvent
from foundation.roles import APPROVER
from registry.models import Dataset, LineageEdge, ModelVersion
from reports import facts
from tests.conftest import client_for, jsonl, make_user, register_sealed_version
from workers import runner
from workers.models import Job

pytestmark = pytest.mark.django_db

CARD = "4111111111111111"
CN_ID = "11010519491231002X"
RECORDS = [
    {"text": f"客户卡号{CARD}已冻结，请联系客户经理。"},
    {"text": "The borrower's ID is " + CN_ID + " and her phone is +86 138 0013 8000."},
    {"text": "Quarterly net interest margin rose to 3.1 %."},
    {"text": "Write to jane.doe@example.com about IBAN GB82WEST12345698765432."},
] * 3
CLEAN = [{"text": "Net interest margin rose to 3.1 % in the third quarter."}] * 12


def register(api, records, *, name="credit-memos", purpose="training"):
    response = api.post("/api/v1/datasets/", {"name": name, "purpose": purpose,
                                              "file": SimpleUploadedFile(f"{name}.jsonl", jsonl(records))},
                        format="multipart")
    assert response.status_code == 201, response.content
    return response.json()


def test_a_dataset_with_personal_data_is_found_with_exact_counts(engineer_api):
    body = register(engineer_api, RECORDS)

    assert body["pii"]["status"] == "found" and body["pii"]["scanned_records"] == 12
    assert {kind: count for kind, count in body["pii"]["counts"].items() if count} == {
        "card_number": 3, "iban": 3, "phone_number": 3, "email": 3, "cn_resident_id": 3}
    assert body["pii"]["engine"]["name"]


def test_a_clean_dataset_is_clean(engineer_api):
    assert register(engineer_api, CLEAN)["pii"]["status"] == "clean"


def test_findings_name_record_field_and_span_and_never_hold_the_full_value(engineer_api, regulator):
    dataset = register(engineer_api, RECORDS)
    findings = []
    url = f"/api/v1/datasets/{dataset['id']}/pii-findings?limit=5"
    while url:
        response = client_for(regulator).get(url)
        assert response.status_code == 200
        findings += response.json()
        url = response["Link"].split(";")[0].strip("<>") if response.has_header("Link") else None

    assert len(findings) == 15
    card = next(f for f in findings if f["type"] == "card_number")
    assert (card["record"], card["field"]) == (1, "text") and card["end"] - card["start"] >= 16
    for finding in findings:
        assert CARD not in finding["masked"].replace(" ", "") and CN_ID not in finding["masked"]
        assert "jane.doe@example.com" not in finding["masked"] and "GB82WEST12345698765432" not in finding["masked"]


def test_findings_are_for_ml_engineers_and_regulators_only(engineer_api):
    dataset = register(engineer_api, RECORDS)
    approver = make_user("bob", APPROVER)

    assert client_for(approver).get(f"/api/v1/datasets/{dataset['id']}/pii-findings").status_code == 403


def test_training_on_a_dataset_with_findings_is_refused_with_how_to_redact(engineer_api, tiny_model_dir):
    register_sealed_version(engineer_api, "credit-llm", tiny_model_dir)
    dataset = register(engineer_api, RECORDS)

    response = engineer_api.post("/api/v1/models/credit-llm/versions/1/lora-updates",
                                 {"dataset": dataset["id"], "steps": 1}, format="json")

    assert response.status_code == 422 and response.json()["field"] == "dataset"
    detail = response.json()["detail"]
    assert str(dataset["id"]) in detail and "3 card_number" in detail and f"/datasets/{dataset['id']}/redact" in detail
    assert not Job.objects.filter(kind="lora").exists()


@pytest.mark.parametrize("strategy", ["mask", "replace", "drop_record"])
def test_redaction_registers_a_clean_copy_that_can_train_and_keeps_the_original(engineer_api, tiny_model_dir,
                                                                                 strategy):
    register_sealed_version(engineer_api, "credit-llm", tiny_model_dir)
    original = register(engineer_api, RECORDS)

    response = engineer_api.post(f"/api/v1/datasets/{original['id']}/redact", {"strategy": strategy}, format="json")

    assert response.status_code == 201, response.content
    redacted = response.json()
    assert redacted["pii"]["status"] == "clean" and redacted["redacted_from"] == original["id"]
    assert redacted["sha256"] != original["sha256"] and redacted["redaction"]["strategy"] == strategy
    assert redacted["records"] == (3 if strategy == "drop_record" else 12)
    assert Dataset.objects.get(pk=original["id"]).sha256 == original["sha256"]
    assert Dataset.objects.get(pk=original["id"]).pii_status == "found"
    training = engineer_api.post("/api/v1/models/credit-llm/versions/1/lora-updates",
                                 {"dataset": redacted["id"], "steps": 1}, format="json")
    assert training.status_code == 202, training.content


def test_a_superuser_exception_with_a_reason_allows_training_and_is_audited(engineer_api, tiny_model_dir):
    register_sealed_version(engineer_api, "credit-llm", tiny_model_dir)
    dataset = register(engineer_api, RECORDS)
    url = f"/api/v1/datasets/{dataset['id']}/pii-exception"

    assert engineer_api.post(url, {"reason": "synthetic data"}, format="json").status_code == 403
    admin = client_for(make_user("root-admin", superuser=True))
    assert admin.post(url, {"reason": " "}, format="json").status_code == 400
    granted = admin.post(url, {"reason": "Synthetic test numbers, approved by the DPO (ticket 42)"}, format="json")

    assert granted.status_code == 200 and granted.json()["pii"]["exception"]["by"] == "root-admin"
    assert AuditEvent.objects.filter(action="dataset.pii_exception", object_id=str(dataset["id"])).exists()
    assert engineer_api.post("/api/v1/models/credit-llm/versions/1/lora-updates",
                             {"dataset": dataset["id"], "steps": 1}, format="json").status_code == 202


@override_settings(PII_INLINE_SCAN_BYTES=0)
def test_a_large_dataset_is_scanned_by_a_job_and_cannot_train_until_it_is_done(engineer_api, tiny_model_dir):
    register_sealed_version(engineer_api, "credit-llm", tiny_model_dir)
    dataset = register(engineer_api, RECORDS)
    assert dataset["pii"]["status"] == "scanning"
    early = engineer_api.post("/api/v1/models/credit-llm/versions/1/lora-updates",
                              {"dataset": dataset["id"], "steps": 1}, format="json")
    assert early.status_code == 409

    job = Job.objects.get(kind="pii_scan")
    runner.run_job(job.pk)  # what the worker's task runs

    job.refresh_from_db()
    assert job.status == "succeeded" and job.result["pii_status"] == "found"
    assert engineer_api.get(f"/api/v1/datasets/{dataset['id']}/").json()["pii"]["status"] == "found"


def test_lineage_and_the_report_show_pii_status_and_the_redaction(engineer_api, tiny_model_dir):
    original = register(engineer_api, RECORDS)
    redacted = engineer_api.post(f"/api/v1/datasets/{original['id']}/redact", {"strategy": "replace"},
                                 format="json").json()
    register_sealed_version(engineer_api, "credit-llm", tiny_model_dir)
    version = ModelVersion.objects.get(model__name="credit-llm", number=1)
    # As a LoRA job records its training data (the edge is the state under test, not how it is made).
    LineageEdge.objects.create(child=version, parent_dataset_id=redacted["id"], relation="trained_on")

    lineage = engineer_api.get("/api/v1/models/credit-llm/versions/1/lineage").json()
    nodes = {node["id"]: node for node in lineage["nodes"]}
    assert nodes[f"dataset:{original['id']}"]["pii_status"] == "found"
    assert nodes[f"dataset:{redacted['id']}"]["pii_status"] == "clean"
    assert nodes[f"dataset:{redacted['id']}"]["redacted_from"] == original["id"]
    assert {"parent": f"dataset:{original['id']}", "child": f"dataset:{redacted['id']}",
            "relation": "redacted_from"} in lineage["edges"]

    row = facts.dataset_facts(version, None)[0]
    assert row["pii_status"] == "clean" and row["redaction_lineage"][0]["id"] == original["id"]
    assert row["redaction_lineage"][0]["strategy"] == "replace"


@pytest.mark.parametrize("payload,field", [({"strategy": "shred"}, "strategy"),
                                           ({"strategy": "mask", "types": ["no_such_type"]}, "types"),
                                           ({}, "strategy")])
def test_bad_redaction_requests_are_a_400_and_register_nothing(engineer_api, payload, field):
    original = register(engineer_api, RECORDS)

    response = engineer_api.post(f"/api/v1/datasets/{original['id']}/redact", payload, format="json")

    assert response.status_code == 400 and response.json()["field"] == field
    assert Dataset.objects.count() == 1
