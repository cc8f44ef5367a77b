"""Report fixtures: an organisation PKI of the test session's own, and a production history whose reports are
rendered and signed once for all report tests (rendering is what costs time), inside a transaction rolled back
when they are done. Reports are produced by calling the plain functions behind the hooks' tasks, no worker needed.
"""
import pytest
from django.core.cache import cache
from django.db import transaction

from foundation import storage
from foundation.roles import APPROVER, ML_ENGINEER, OPS, REGULATOR
from governance import services as governance
from registry import services as registry_services
from registry.models import ModelVersion
from reports import services, signing
from tests.conftest import make_user
from tests.reports import factories

TEST_PASSPHRASE = "test-report-pki-passphrase"
ORGANISATION = "Acme Test Bank"
PURPOSE = "Drafts credit memos for the retail lending desk; a human credit officer reviews every memo."
# Text a requester or an operator could type, aimed at the HTML renderer: it must come out literally.
HOSTILE_TEXT = ('<img src="file:///etc/passwd"> <link rel="stylesheet" href="http://169.254.169.254/latest/'
                'meta-data/iam/"> <iframe src="file:///etc/shadow"></iframe> <b>bold?</b> & 100% "quoted"')


@pytest.fixture(scope="session")
def report_pki_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("report-pki")
    signing.create_organisation_pki(directory, organisation=ORGANISATION, passphrase=TEST_PASSPHRASE.encode())
    return directory


@pytest.fixture(scope="session")
def impostor_root_pem(tmp_path_factory):
    """A root with the same name as the organisation's but a key of its own."""
    directory = tmp_path_factory.mktemp("impostor-pki")
    signing.create_organisation_pki(directory, organisation=ORGANISATION, passphrase=b"impostor")
    return (directory / signing.ROOT_CERTIFICATE).read_bytes()


@pytest.fixture(scope="package", autouse=True)
def report_settings(report_pki_dir):
    from django.test import override_settings

    with override_settings(REPORT_PKI_DIR=report_pki_dir, REPORT_PKI_PASSPHRASE=TEST_PASSPHRASE,
                           REPORT_PKI_AUTO_CREATE=False, REPORT_ORGANISATION=ORGANISATION,
                           REPORT_PORTAL_URL="https://registry.example/portal/"):
        yield


@pytest.fixture(autouse=True)
def fresh_verification_cache():
    cache.clear()


@pytest.fixture(scope="package")
def history(django_db_setup, django_db_blocker, report_settings):
    """credit-llm in production: v1 deployed (first deployment), v2 (NF4 quantization of v1) deployed with two
    approvals, a LoRA request (v3) pending, then production rolled back to v1. Every report produced.

    The database stays unblocked and the transaction open until the last report test, so tests read these rows
    (and call the API) without a `db` fixture; everything is rolled back at the end. Tests that add rows do so
    in a savepoint (`db` fixture or transaction.atomic) or leave them in this history on purpose."""
    with django_db_blocker.unblock(), transaction.atomic():
        data = _build_history()
        yield data
        transaction.set_rollback(True)


def _build_history() -> dict:
    engineer = _person("alice", "Alice", "Engineer", ML_ENGINEER)
    bob = _person("bob", "Bob", "Approver", APPROVER)
    carol = _person("carol", "Carol", "Checker", APPROVER)
    oscar = _person("oscar", "Oscar", "Operator", OPS)
    rita = _person("rita", "Rita", "Regulator", REGULATOR)
    model = registry_services.create_model(name="credit-llm", description=PURPOSE, actor=engineer)
    v1 = factories.sealed_upload(model, engineer, seed=1, description="fp16 base model")

    # First deployment: no draft hook fires for it, so approvals and deployment find no report yet.
    first = governance.open_change_request(model=model, alias="production", version_number=v1.number,
                                           justification="Initial deployment after model validation.", actor=engineer)
    factories.approve(first, bob, carol)
    first_report = services.update_change_impact_report(change_request_id=first.pk)

    v2 = factories.derived_version(v1, engineer, kind=ModelVersion.Kind.QUANTIZED,
                                   metadata=factories.QUANTIZATION_METADATA, description="nf4 quantization of v1")
    evaluation = factories.dataset(engineer, name="credit-eval", purpose="evaluation",
                                   records=[{"text": "The borrower's debt service coverage ratio is 1.4."}] * 4)
    factories.analysis(reference=v1, candidate=v2, dataset=evaluation, actor=engineer,
                       result=factories.synthetic_analysis_result())
    update = governance.open_change_request(model=model, alias="production", version_number=v2.number,
                                            justification="Quarter the serving memory. " + HOSTILE_TEXT,
                                            dataset_id=evaluation.pk, actor=engineer)
    assert update.status == "pending", update.status_reason
    draft = services.update_change_impact_report(change_request_id=update.pk)  # draft_report_requested
    draft_pdf = storage.read_bytes(draft.object_key, version_id=draft.storage_version_id)
    factories.approve(update, bob, comments=["Gates pass with margin; KL 0.0123 <b>fine</b> at 100%."])
    after_bob = services.update_change_impact_report(change_request_id=update.pk)  # approval_recorded
    after_bob_pdf = storage.read_bytes(after_bob.object_key, version_id=after_bob.storage_version_id)
    factories.approve(update, carol, comments=["Approved; monitor flips on the next quarterly review."])
    final = services.update_change_impact_report(change_request_id=update.pk)  # deployment_recorded

    training = factories.dataset(engineer, name="credit-memos-2024", purpose="training",
                                 records=[{"prompt": "Summarise the memo.", "completion": "Low risk."}] * 3)
    v3 = factories.derived_version(v1, engineer, kind=ModelVersion.Kind.LORA, metadata=factories.lora_metadata(training),
                                   datasets=[training], seed=3, description="LoRA on 2024 memos")
    factories.analysis(reference=v2, candidate=v3, dataset=evaluation, actor=engineer,
                       result=factories.synthetic_analysis_result(blocks=4, seed=3, flips=False))
    lora_request = governance.open_change_request(model=model, alias="production", version_number=v3.number,
                                                  justification="Adapt to 2024 memo style.", dataset_id=evaluation.pk,
                                                  actor=engineer)
    lora_draft = services.update_change_impact_report(change_request_id=lora_request.pk)

    rollback = governance.roll_back(model=model, alias="production", reason="Flip rate drifted. " + HOSTILE_TEXT,
                                    to_version_number=None, actor=oscar)
    rollback_report = services.produce_rollback_report(alias_change_id=rollback.pk)

    def pdf_of(report):
        return storage.read_bytes(report.object_key, version_id=report.storage_version_id)

    return {
        "users": {"engineer": engineer, "bob": bob, "carol": carol, "oscar": oscar, "rita": rita},
        "model": model, "versions": {1: v1, 2: v2, 3: v3}, "datasets": {"evaluation": evaluation, "training": training},
        "requests": {"first": first, "update": update, "lora": lora_request}, "rollback": rollback,
        "reports": {"first": first_report, "update": final, "lora": lora_draft, "rollback": rollback_report},
        "pdfs": {"first": pdf_of(first_report), "draft": draft_pdf, "after_bob": after_bob_pdf, "update": pdf_of(final),
                 "lora": pdf_of(lora_draft), "rollback": pdf_of(rollback_report)},
    }


def _person(username, first_name, last_name, role):
    user = make_user(username, role)
    user.first_name, user.last_name = first_name, last_name
    user.save(update_fields=["first_name", "last_name"])
    return user
