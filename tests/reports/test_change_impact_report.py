"""The change-impact report: every item a regulator needs is in the PDF's text, the approvers' signatures are in
the very document they were asked to review, the final PDF is locked in storage and its row never changes."""
import hashlib
import io
import subprocess

import pytest
from django.db import connection, transaction
from django.db.utils import DatabaseError
from minio.error import S3Error
from pypdf import PdfReader, PdfWriter
from pypdf.generic import DecodedStreamObject

from foundation import storage
from reports import facts, pki, services, signing
from reports.models import Report, SigningIdentity
from reports.templatetags.report_format import num
from tests.reports.conftest import HOSTILE_TEXT, ORGANISATION, PURPOSE, TEST_PASSPHRASE


def pdf_text(pdf: bytes) -> str:
    """Text as pdftotext extracts it in drawing order (a table row's cells stay together, a wrapped digest stays
    in one piece), signature appearances included; whitespace runs collapsed to one space."""
    text = subprocess.run(["pdftotext", "-raw", "-", "-"], input=pdf, capture_output=True, check=True).stdout.decode()
    return " ".join(text.split())


@pytest.fixture(scope="module")
def update_text(history):
    return pdf_text(history["pdfs"]["update"])


def test_report_names_the_model_its_purpose_and_the_change_request(history, update_text):
    request = history["requests"]["update"]
    assert "Change-impact report" in update_text
    assert "credit-llm @ production: v1 → v2 (quantized)" in update_text
    assert " ".join(PURPOSE.split()) in update_text
    assert f"Change request {request.pk}, round 1" in update_text
    assert "Quarter the serving memory." in update_text


def test_report_lists_both_versions_with_file_digests_manifests_and_storage_version_ids(history, update_text):
    for number in (1, 2):
        version = history["versions"][number]
        assert version.manifest_sha256 in update_text.replace(" ", "")
        for version_file in version.files.all():
            assert version_file.sha256 in update_text.replace(" ", "")
            assert version_file.storage_version_id.replace(" ", "") in update_text.replace(" ", "")
    assert "Files of v1 (2)" in update_text and "Files of v2 (2)" in update_text


def test_report_states_the_quantization_settings_and_the_datasets_with_hashes(history, update_text):
    for expected in ("Quantization settings", "settings.compute_dtype bfloat16", "settings.double_quant yes",
                     "settings.skip_modules lm_head", "library_versions.bitsandbytes 0.50.2", "method nf4"):
        assert expected in update_text
    evaluation = history["datasets"]["evaluation"]
    assert f"credit-eval (id {evaluation.pk})" in update_text
    assert evaluation.sha256 in update_text.replace(" ", "")


def test_report_says_whether_the_change_is_material(update_text, history):
    assert "Material change NO" in update_text
    assert "This is not a material change." in update_text
    assert "Rule: A change is material unless it is a quantization" in update_text
    lora_text = pdf_text(history["pdfs"]["lora"])
    assert "Material change YES — the weights were retrained on new data (LoRA update)" in lora_text


def test_report_holds_the_kl_and_delta_p_tables_with_every_statistic(history, update_text):
    result = history["requests"]["update"].analysis.result
    assert len(facts.DISTRIBUTION_STATISTICS) == 13
    for key, label in facts.DISTRIBUTION_STATISTICS:
        assert f"{label} {num(result['kl'][key])} {num(result['delta_p'][key])}" in update_text
    assert "mean 0.0123 -0.0021" in update_text and "99.9th percentile 0.2128 0.22" in update_text


def test_report_holds_agreement_perplexity_and_flips(update_text):
    for expected in ("Same top-1 token 0.957 ± 8.0e-04", "Top-k overlap 0.912", "RMS Δp 0.0317",
                     "Perplexity reference / candidate 7.412 / 7.5032", "Perplexity ratio (ln ratio) 1.0123 (0.01222)",
                     "Correlation of per-token NLL 0.9871", "Accuracy reference / candidate 0.6125 / 0.6075",
                     "Correct → incorrect 9", "Incorrect → correct 7", "Flip rate 0.0425",
                     "65,536 tokens, top-k with k = 5"):
        assert expected in update_text


def test_report_lists_the_most_sensitive_layers_with_errors_and_max_error_channels(history, update_text):
    layers = history["requests"]["update"].analysis.result["layers"]
    worst = max(layers, key=lambda layer: layer["relative_error"])
    assert "6. Most sensitive layers" in update_text
    assert f"{worst['name']} {worst['relative_error']:.4g}" in update_text
    assert f"{worst['max_error_channel']:,}" in update_text
    assert "Appendix A. Every measured module" in update_text
    assert all(layer["name"] in update_text for layer in layers)  # the appendix lists all 224 modules


def distinct_images(pdf: bytes) -> set[str]:
    # WeasyPrint shares one image resource dictionary between pages: count image XObjects by name.
    names = set()
    for page in PdfReader(io.BytesIO(pdf)).pages:
        xobjects = page["/Resources"].get("/XObject") or {}
        names |= {name for name, ref in xobjects.items() if ref.get_object().get("/Subtype") == "/Image"}
    return names


def test_report_embeds_every_chart(history):
    # KL and delta-p distributions, per-module error, weight-error heat map, lineage.
    assert len(distinct_images(history["pdfs"]["update"])) == 5
    assert len(distinct_images(history["pdfs"]["lora"])) == 6  # plus the training curve


def test_lora_report_states_training_settings_datasets_and_curve(history):
    text = pdf_text(history["pdfs"]["lora"])
    training = history["datasets"]["training"]
    for expected in ("LoRA training settings", "settings.r 16", "settings.alpha 32", "settings.learning_rate 2.000e-04",
                     "settings.target_modules q_proj, v_proj", "eval_loss_after 1.62", "trained on credit-memos-2024",
                     "Figure: training loss per step of the LoRA update, 20 points."):
        assert expected in text
    assert training.sha256 in text.replace(" ", "")


def test_report_lists_gates_with_threshold_value_and_verdict(update_text):
    assert "Gate Threshold Measured value Verdict Note" in update_text
    for row in ("kl mean 0.035 0.0123 PASS", "same top1 0.91 0.957 PASS", "ppl ratio 1.03 1.0123 PASS"):
        assert row in update_text


def test_report_shows_the_lineage(update_text):
    assert "8. Lineage" in update_text
    assert "credit-llm v1 (upload) quantized from credit-llm v2 (quantized)" in update_text


def test_report_shows_each_approver_with_role_time_decision_and_comment(history, update_text):
    bob_decision, carol_decision = history["requests"]["update"].decisions.order_by("created_at")
    assert "APPROVED by Bob Approver (bob), role: approver" in update_text
    assert f"Decision: approve, recorded {bob_decision.created_at:%Y-%m-%d %H:%M:%S} UTC" in update_text
    assert "Comment: Gates pass with margin; KL 0.0123 <b>fine</b> at 100%." in update_text
    assert "APPROVED by Carol Checker (carol), role: approver" in update_text
    assert f"recorded {carol_decision.created_at:%Y-%m-%d %H:%M:%S} UTC" in update_text
    assert "Comment: Approved; monitor flips on the next quarterly review." in update_text


def test_report_names_the_rollback_target_audit_head_and_how_to_verify(history, update_text):
    report = history["reports"]["update"]
    assert "Rollback target v1 (the version in service before this change)" in update_text
    assert "credit-llm@production returns to v1" in update_text
    assert f"Audit chain head at issue: event #{report.audit_head_sequence} {report.audit_head_hash}" in update_text
    assert report.audit_head_hash and report.audit_head_sequence
    assert "Integrity and how to verify this document" in update_text
    assert "pyhanko sign validate --pretty-print --trust root.pem --trust-replace report.pdf" in update_text
    assert pki.root_summary()["sha256_fingerprint"] in update_text


def test_hostile_justification_is_printed_literally(update_text):
    # Compared without whitespace: the line may wrap anywhere in the URL.
    assert "".join(HOSTILE_TEXT.split()) in "".join(update_text.split())


def test_first_deployment_report_is_made_when_approvals_arrive_before_any_draft(history):
    report = history["reports"]["first"]
    assert report.status == Report.Status.FINAL
    assert [s["field"] for s in report.signatures] == ["approver-1", "approver-2", "issue"]
    text = pdf_text(history["pdfs"]["first"])
    assert "No analysis: this is the first deployment of credit-llm to production" in text
    assert "Material change YES — first deployment of credit-llm to production" in text
    assert "Rollback target none: first deployment of this alias" in text


# --- signatures ------------------------------------------------------------------------------------------------


def test_final_report_signatures_are_all_valid_and_trusted(history):
    verdict = signing.verify_pdf(history["pdfs"]["update"], trusted_root_pem=pki.root_pem())

    assert verdict["intact"] and verdict["valid"] and verdict["trusted"], verdict
    assert verdict["pending_fields"] == [] and verdict["modified_after_last_signature"] is False
    assert [(s["field"], s["signer"]) for s in verdict["signatures"]] == [
        ("Organisation", f"{ORGANISATION} Model Registry Reports"),
        ("approver-1", "Bob Approver"),
        ("approver-2", "Carol Checker"),
        ("issue", f"{ORGANISATION} Model Registry Reports"),
    ]
    certification = verdict["signatures"][0]
    assert certification["certification"] and certification["modification_level"] == "FORM_FILLING"
    assert verdict["signatures"][1]["reason"] == "approve: Gates pass with margin; KL 0.0123 <b>fine</b> at 100%."
    assert verdict["signatures"][1]["signer_email"] == "bob@bank.example"


def test_approvers_sign_the_draft_rendered_when_the_gates_were_known(history):
    draft, after_bob, final = history["pdfs"]["draft"], history["pdfs"]["after_bob"], history["pdfs"]["update"]
    # Each step is an incremental update: the reviewed draft's bytes are the start of every later revision.
    assert after_bob.startswith(draft) and final.startswith(after_bob)
    draft_verdict = signing.verify_pdf(draft, trusted_root_pem=pki.root_pem())
    assert draft_verdict["intact"] and draft_verdict["trusted"]
    assert draft_verdict["pending_fields"] == ["approver-1", "approver-2", "issue"]


def test_a_flipped_byte_makes_the_report_not_intact(history):
    final, draft = history["pdfs"]["update"], history["pdfs"]["draft"]
    position = draft.index(b"stream\n") + 200  # inside the first page's content, covered by every signature
    tampered = bytearray(final)
    tampered[position] ^= 0x01

    verdict = signing.verify_pdf(bytes(tampered), trusted_root_pem=pki.root_pem())

    assert verdict["intact"] is False
    assert all(signature["intact"] is False for signature in verdict["signatures"])


def test_a_change_appended_after_signing_fails_verification(history):
    writer = PdfWriter(io.BytesIO(history["pdfs"]["update"]), incremental=True)
    forged = DecodedStreamObject()
    forged.set_data(b"BT /F1 24 Tf 72 720 Td (Material change NO) Tj ET")
    writer.pages[0].replace_contents(forged)
    out = io.BytesIO()
    writer.write(out)

    verdict = signing.verify_pdf(out.getvalue(), trusted_root_pem=pki.root_pem())

    assert verdict["intact"] is False and verdict["modified_after_last_signature"] is True
    assert "not allowed by the certification" in verdict["error"]


def test_a_look_alike_root_with_the_same_name_is_not_trusted(history, impostor_root_pem):
    verdict = signing.verify_pdf(history["pdfs"]["update"], trusted_root_pem=impostor_root_pem)

    assert verdict["intact"] is True and verdict["trusted"] is False
    assert all(signature["trusted"] is False for signature in verdict["signatures"])


def test_approver_keys_are_stored_encrypted_with_the_pki_passphrase(history):
    from cryptography.hazmat.primitives.serialization import pkcs12

    identity = SigningIdentity.objects.get(user=history["users"]["bob"])
    with pytest.raises(ValueError):
        pkcs12.load_key_and_certificates(bytes(identity.pkcs12), None)
    key, certificate, _ = pkcs12.load_key_and_certificates(bytes(identity.pkcs12), TEST_PASSPHRASE.encode())
    assert key is not None and "Bob Approver" in certificate.subject.rfc4514_string()
    assert SigningIdentity.objects.filter(user=history["users"]["bob"]).count() == 1  # issued once, reused


# --- lifecycle, storage, immutability ----------------------------------------------------------------------------


def test_final_report_records_digest_audit_head_and_deployment(history):
    report = history["reports"]["update"]
    final = history["pdfs"]["update"]

    assert report.status == Report.Status.FINAL and report.finalised_at
    assert report.sha256 == hashlib.sha256(final).hexdigest()
    assert report.alias_change.change_request_id == history["requests"]["update"].pk
    assert report.object_key == f"reports/{report.pk}/final.pdf" and report.storage_version_id


def test_running_the_report_task_again_changes_nothing(history):
    report = history["reports"]["update"]

    again = services.update_change_impact_report(change_request_id=history["requests"]["update"].pk)

    assert again.pk == report.pk
    again.refresh_from_db()
    # Still two approvers and the issue stamp, the same bytes in the same locked version.
    assert (again.sha256, again.storage_version_id, len(again.signatures)) == (
        report.sha256, report.storage_version_id, 3)
    assert services.produce_rollback_report(alias_change_id=history["rollback"].pk).pk == \
        history["reports"]["rollback"].pk


def test_storage_refuses_to_delete_a_final_report_version(history):
    report = history["reports"]["update"]

    with pytest.raises(S3Error) as refused:
        storage.remove(report.object_key, version_id=report.storage_version_id)

    assert refused.value.code in ("AccessDenied", "ObjectLocked", "InvalidRequest")
    assert storage.read_bytes(report.object_key, version_id=report.storage_version_id) == history["pdfs"]["update"]


def test_writing_over_a_final_report_leaves_the_locked_version_untouched(history):
    report = history["reports"]["update"]

    overwritten = storage.put_bytes(report.object_key, b"%PDF-1.7 forged", content_type="application/pdf")

    assert overwritten.version_id != report.storage_version_id
    assert storage.read_bytes(report.object_key, version_id=report.storage_version_id) == history["pdfs"]["update"]
    with pytest.raises(S3Error):
        storage.remove(report.object_key, version_id=report.storage_version_id)


@pytest.mark.parametrize("statement", [
    "UPDATE reports_report SET sha256 = repeat('0', 64) WHERE id = %s",
    "UPDATE reports_report SET status = 'draft' WHERE id = %s",
    "DELETE FROM reports_report WHERE id = %s",
])
def test_the_database_refuses_to_change_or_delete_a_final_report(history, statement):
    with pytest.raises(DatabaseError, match="final and cannot be changed|never deleted"):
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(statement, [history["reports"]["update"].pk])


def test_a_draft_is_superseded_when_its_request_is_gated_again(history):
    request = history["requests"]["lora"]
    request.refresh_from_db()
    # The rollback moved production under the pending LoRA request: round 2, gated against v1 again.
    assert request.round == 2
    assert Report.objects.get(pk=history["reports"]["lora"].pk).status == Report.Status.DRAFT
    factories_analysis_for_round_two(history)
    with transaction.atomic():
        from governance.services import analysis_completed

        analysis_completed(analysis_id=request.analysis_id)
    request.refresh_from_db()
    assert request.status == "pending"

    report = services.update_change_impact_report(change_request_id=request.pk)

    assert report.round == 2 and report.status == Report.Status.DRAFT
    assert Report.objects.get(pk=history["reports"]["lora"].pk).status == Report.Status.SUPERSEDED


def factories_analysis_for_round_two(history):
    """Give the re-gating analysis (queued by the rollback, never run here) its result."""
    from tests.reports.factories import synthetic_analysis_result
    from workers.services import record_analysis_result

    request = history["requests"]["lora"]
    request.refresh_from_db()
    record_analysis_result(analysis_id=request.analysis_id,
                           result=synthetic_analysis_result(blocks=2, seed=4, flips=False), plots=[])


def test_facts_sort_layers_by_sensitivity(history):
    analysis = facts.analysis_facts(history["requests"]["update"].analysis)
    errors = [layer["relative_error"] for layer in analysis["sensitive_layers"]]
    assert errors == sorted(errors, reverse=True) and len(errors) == facts.SENSITIVE_LAYERS


def test_catch_up_command_finds_every_report_already_made(history, db, capsys):
    from django.core.management import call_command

    call_command("produce_missing_reports")

    assert "rollback reports produced: 0" in capsys.readouterr().out
    assert Report.objects.filter(change_request=history["requests"]["update"]).get().sha256 == \
        history["reports"]["update"].sha256
