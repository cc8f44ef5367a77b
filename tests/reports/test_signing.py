"""Signing and verification of report PDFs against the organisation's own root, including tampered files."""

import io

import pytest
import weasyprint
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import pkcs12
from pyhanko.pdf_utils import generic
from pyhanko.pdf_utils.incremental_writer import IncrementalPdfFileWriter
from pypdf import PdfWriter
from pypdf.generic import DecodedStreamObject

from reports import signing

PASSPHRASE = b"correct horse battery staple"
APPROVER_FIELDS = ["approver-1", "approver-2"]


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    directory = tmp_path_factory.mktemp("pki")
    signing.create_organisation_pki(directory, organisation="Acme Bank", passphrase=PASSPHRASE)
    return directory


@pytest.fixture(scope="module")
def root_pem(pki):
    return (pki / "root.pem").read_bytes()


@pytest.fixture(scope="module")
def organisation_p12(pki):
    return (pki / "organisation.p12").read_bytes()


@pytest.fixture(scope="module")
def alice(pki):
    return signing.issue_person_certificate(
        pki, common_name="Alice Approver", email="alice@acme.test", passphrase=PASSPHRASE
    )


@pytest.fixture(scope="module")
def bob(pki):
    return signing.issue_person_certificate(
        pki, common_name="Bob Approver", email="bob@acme.test", passphrase=PASSPHRASE
    )


@pytest.fixture(scope="module")
def impostor_pki(tmp_path_factory):
    """A root with the same subject name as the real one but its own key."""
    directory = tmp_path_factory.mktemp("impostor")
    signing.create_organisation_pki(directory, organisation="Acme Bank", passphrase=PASSPHRASE)
    return directory


@pytest.fixture(scope="module")
def report_pdf():
    return weasyprint.HTML(string="<h1>Change impact</h1><p>KL mean 0.0123 nats</p>").write_pdf()


@pytest.fixture(scope="module")
def certified(report_pdf, organisation_p12):
    return signing.certify_pdf(
        report_pdf,
        pkcs12=organisation_p12,
        passphrase=PASSPHRASE,
        signature_fields=APPROVER_FIELDS,
        reason="Change impact report CR-42",
    )


@pytest.fixture(scope="module")
def fully_signed(certified, alice, bob):
    once = signing.sign_pdf_field(
        certified, field_name="approver-1", pkcs12=alice, passphrase=PASSPHRASE, reason="Approved CR-42",
        signer_name="Alice Approver",
    )
    return signing.sign_pdf_field(
        once, field_name="approver-2", pkcs12=bob, passphrase=PASSPHRASE, reason="Approved CR-42",
        signer_name="Bob Approver",
    )


def _appended(pdf: bytes, change) -> bytes:
    writer = IncrementalPdfFileWriter(io.BytesIO(pdf))
    change(writer)
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


# --- PKI -------------------------------------------------------------------------------------------------------


def test_pki_has_a_ca_root_and_an_organisation_certificate_for_signing(pki):
    root = x509.load_pem_x509_certificate((pki / "root.pem").read_bytes())
    assert root.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert root.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign
    assert b"PRIVATE KEY" not in (pki / "root.pem").read_bytes()
    assert (pki / "root-key.pem").read_bytes().startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")

    key, certificate, _ = pkcs12.load_key_and_certificates((pki / "organisation.p12").read_bytes(), PASSPHRASE)
    usage = certificate.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.digital_signature and usage.content_commitment
    assert certificate.issuer == root.subject
    root.public_key().verify(certificate.signature, certificate.tbs_certificate_bytes, ec.ECDSA(hashes.SHA256()))


def test_organisation_key_needs_the_passphrase(pki):
    with pytest.raises(ValueError):
        pkcs12.load_key_and_certificates((pki / "organisation.p12").read_bytes(), b"wrong")


def test_creating_the_pki_again_keeps_the_existing_one(pki):
    before = {name: (pki / name).read_bytes() for name in ("root.pem", "root-key.pem", "organisation.p12")}

    summary = signing.create_organisation_pki(pki, organisation="Other Bank", passphrase=b"other")

    assert summary["created"] is False
    assert {name: (pki / name).read_bytes() for name in before} == before


def test_half_written_pki_is_refused_not_overwritten(tmp_path):
    (tmp_path / "root.pem").write_bytes(b"kept")

    with pytest.raises(signing.ReportSigningError, match="restore the missing PKI files"):
        signing.create_organisation_pki(tmp_path, organisation="Acme Bank", passphrase=PASSPHRASE)
    assert (tmp_path / "root.pem").read_bytes() == b"kept"


def test_person_certificate_is_issued_by_the_root_for_non_repudiation(pki, alice):
    root = x509.load_pem_x509_certificate((pki / "root.pem").read_bytes())
    _, certificate, _ = pkcs12.load_key_and_certificates(alice, PASSPHRASE)

    assert certificate.issuer == root.subject
    assert certificate.extensions.get_extension_for_class(x509.KeyUsage).value.content_commitment
    assert certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.RFC822Name
    ) == ["alice@acme.test"]


def test_issuing_with_the_wrong_root_passphrase_is_refused(pki):
    with pytest.raises(signing.ReportSigningError, match="cannot be decrypted"):
        signing.issue_person_certificate(
            pki, common_name="Eve", email="eve@acme.test", passphrase=PASSPHRASE, root_passphrase=b"wrong"
        )


# --- the happy path --------------------------------------------------------------------------------------------


def test_certified_report_has_empty_fields_for_each_approver(certified, root_pem):
    verdict = signing.verify_pdf(certified, trusted_root_pem=root_pem)

    assert verdict["intact"] and verdict["valid"] and verdict["trusted"]
    assert verdict["pending_fields"] == APPROVER_FIELDS
    [organisation] = verdict["signatures"]
    assert organisation["certification"] is True
    assert organisation["signer"] == "Acme Bank Model Registry Reports"
    assert organisation["coverage"] == "ENTIRE_FILE"


def test_report_signed_by_two_approvers_is_intact_valid_and_trusted(fully_signed, root_pem):
    verdict = signing.verify_pdf(fully_signed, trusted_root_pem=root_pem)

    assert verdict["intact"] and verdict["valid"] and verdict["trusted"], verdict
    assert "error" not in verdict
    assert verdict["pending_fields"] == []
    assert verdict["modified_after_last_signature"] is False
    assert [(s["field"], s["signer"]) for s in verdict["signatures"]] == [
        ("Organisation", "Acme Bank Model Registry Reports"),
        ("approver-1", "Alice Approver"),
        ("approver-2", "Bob Approver"),
    ]
    organisation = verdict["signatures"][0]
    # Approver signatures are the form filling the certification allows.
    assert organisation["modification_level"] == "FORM_FILLING" and organisation["docmdp_ok"] is True
    assert all(s["signed_at"].endswith("+00:00") for s in verdict["signatures"])
    assert verdict["signatures"][1]["signer_email"] == "alice@acme.test"


def test_rollback_report_signed_by_organisation_then_ops_verifies(pki, organisation_p12, root_pem):
    ops = signing.issue_person_certificate(pki, common_name="Olga Ops", email="olga@acme.test", passphrase=PASSPHRASE)
    pdf = weasyprint.HTML(string="<h1>Rollback</h1>").write_pdf()

    by_organisation = signing.sign_pdf(
        pdf, pkcs12=organisation_p12, passphrase=PASSPHRASE, reason="Rollback", field_name="Organisation"
    )
    by_ops = signing.sign_pdf(by_organisation, pkcs12=ops, passphrase=PASSPHRASE, reason="Rollback", field_name="Ops")

    verdict = signing.verify_pdf(by_ops, trusted_root_pem=root_pem)
    assert verdict["intact"] and verdict["valid"] and verdict["trusted"], verdict
    assert [s["signer"] for s in verdict["signatures"]] == ["Acme Bank Model Registry Reports", "Olga Ops"]


# --- signing refusals ------------------------------------------------------------------------------------------


def test_signing_an_already_signed_field_is_refused(fully_signed, alice):
    with pytest.raises(signing.ReportSigningError, match="already signed"):
        signing.sign_pdf_field(
            fully_signed, field_name="approver-1", pkcs12=alice, passphrase=PASSPHRASE, reason="again", signer_name="A"
        )


def test_signing_an_unknown_field_is_refused(certified, alice):
    with pytest.raises(signing.ReportSigningError, match="no signature field 'approver-9'"):
        signing.sign_pdf_field(
            certified, field_name="approver-9", pkcs12=alice, passphrase=PASSPHRASE, reason="r", signer_name="A"
        )


def test_signing_with_the_wrong_passphrase_is_refused(certified, alice):
    with pytest.raises(signing.ReportSigningError, match="passphrase is wrong"):
        signing.sign_pdf_field(
            certified, field_name="approver-1", pkcs12=alice, passphrase=b"wrong", reason="r", signer_name="A"
        )


# --- tampering -------------------------------------------------------------------------------------------------


def test_flipped_byte_in_signed_page_content_is_not_intact(fully_signed, report_pdf, root_pem):
    # Inside the first content stream of the original revision, which every signature covers.
    position = report_pdf.index(b"stream\n") + len(b"stream\n") + 10
    tampered = bytearray(fully_signed)
    tampered[position] ^= 0x01

    verdict = signing.verify_pdf(bytes(tampered), trusted_root_pem=root_pem)

    assert verdict["intact"] is False
    assert all(s["intact"] is False for s in verdict["signatures"])
    assert "digest does not match" in verdict["error"]


def test_page_content_replaced_by_a_pypdf_update_after_signing_fails(fully_signed, root_pem):
    writer = PdfWriter(io.BytesIO(fully_signed), incremental=True)
    forged = DecodedStreamObject()
    forged.set_data(b"BT /F1 24 Tf 72 720 Td (KL mean 0.0000 nats) Tj ET")
    writer.pages[0].replace_contents(forged)
    out = io.BytesIO()
    writer.write(out)
    tampered = out.getvalue()
    assert tampered.startswith(fully_signed)  # a genuine incremental update, signed bytes untouched

    verdict = signing.verify_pdf(tampered, trusted_root_pem=root_pem)

    assert verdict["intact"] is False
    assert verdict["modified_after_last_signature"] is True
    for signature in verdict["signatures"]:
        assert signature["intact"] is True  # the old revisions still hash correctly ...
        assert signature["modification_level"] == "OTHER"  # ... but what came after is not allowed
        assert signature["docmdp_ok"] is False
    assert "not allowed by the certification" in verdict["error"]


def test_overlay_drawn_on_the_page_after_signing_fails(fully_signed, root_pem):
    def overlay(writer):
        stream = writer.add_object(generic.StreamObject(stream_data=b"q 1 1 1 rg 0 0 600 800 re f Q"))
        writer.add_stream_to_page(0, stream)

    verdict = signing.verify_pdf(_appended(fully_signed, overlay), trusted_root_pem=root_pem)

    assert verdict["intact"] is False
    assert {s["modification_level"] for s in verdict["signatures"]} == {"OTHER"}


def test_annotation_added_after_certification_fails(certified, root_pem):
    # FILL_FORMS allows signing the approver fields, not commenting on the report.
    def annotate(writer):
        page_ref, _ = writer.find_page_for_modification(0)
        page = page_ref.get_object()
        note = generic.DictionaryObject(
            {
                generic.NameObject("/Type"): generic.NameObject("/Annot"),
                generic.NameObject("/Subtype"): generic.NameObject("/Text"),
                generic.NameObject("/Rect"): generic.ArrayObject([generic.NumberObject(v) for v in (10, 10, 40, 40)]),
                generic.NameObject("/Contents"): generic.TextStringObject("gates were overridden"),
            }
        )
        page[generic.NameObject("/Annots")] = generic.ArrayObject([writer.add_object(note)])
        writer.update_container(page)

    verdict = signing.verify_pdf(_appended(certified, annotate), trusted_root_pem=root_pem)

    assert verdict["intact"] is False
    assert verdict["signatures"][0]["docmdp_ok"] is False


def test_approver_certificate_from_a_look_alike_root_is_untrusted(certified, impostor_pki, pki, root_pem):
    real_root = x509.load_pem_x509_certificate(root_pem)
    fake_root = x509.load_pem_x509_certificate((impostor_pki / "root.pem").read_bytes())
    assert fake_root.subject == real_root.subject and fake_root.public_key() != real_root.public_key()
    mallory = signing.issue_person_certificate(
        impostor_pki, common_name="Alice Approver", email="alice@acme.test", passphrase=PASSPHRASE
    )

    signed = signing.sign_pdf_field(
        certified, field_name="approver-1", pkcs12=mallory, passphrase=PASSPHRASE, reason="Approved",
        signer_name="Alice Approver",
    )
    verdict = signing.verify_pdf(signed, trusted_root_pem=root_pem)

    assert verdict["trusted"] is False
    organisation, approver = verdict["signatures"]
    assert organisation["trusted"] is True
    assert approver["intact"] is True and approver["valid"] is True and approver["trusted"] is False
    assert "does not chain to the trusted root" in approver["error"]


def test_report_certified_by_a_look_alike_organisation_is_untrusted(report_pdf, impostor_pki, root_pem):
    forged = signing.certify_pdf(
        report_pdf,
        pkcs12=(impostor_pki / "organisation.p12").read_bytes(),
        passphrase=PASSPHRASE,
        signature_fields=APPROVER_FIELDS,
        reason="Change impact report",
    )

    verdict = signing.verify_pdf(forged, trusted_root_pem=root_pem)

    assert verdict["intact"] is True
    assert verdict["trusted"] is False


@pytest.mark.parametrize(
    "content",
    [b"", b"not a pdf at all", b"%PDF-1.7\n" + b"\x00" * 64, bytes(range(256)) * 8],
    ids=["empty", "text", "header-only", "binary"],
)
def test_garbage_is_reported_not_raised(content, root_pem):
    verdict = signing.verify_pdf(content, trusted_root_pem=root_pem)

    assert verdict["intact"] is False and verdict["trusted"] is False
    assert verdict["error"]


def test_truncated_report_is_reported_not_raised(fully_signed, root_pem):
    verdict = signing.verify_pdf(fully_signed[: len(fully_signed) * 2 // 3], trusted_root_pem=root_pem)

    assert verdict["intact"] is False
    assert verdict["error"]


def test_unsigned_pdf_is_not_intact(report_pdf, root_pem):
    verdict = signing.verify_pdf(report_pdf, trusted_root_pem=root_pem)

    assert verdict["intact"] is False
    assert verdict["error"] == "The document carries no signature."


def test_a_flipped_byte_anywhere_never_raises(fully_signed, root_pem):
    step = len(fully_signed) // 40
    for position in range(0, len(fully_signed), step):
        tampered = bytearray(fully_signed)
        tampered[position] ^= 0x20
        verdict = signing.verify_pdf(bytes(tampered), trusted_root_pem=root_pem)
        assert set(verdict) >= {"intact", "valid", "trusted", "signatures"}



def test_verification_works_inside_a_running_event_loop(fully_signed, root_pem):
    """An ASGI server or a browser-driving test keeps an event loop running; pyHanko's sync API calls asyncio.run,
    so verification must still give the real verdict there."""
    import asyncio

    async def verify_in_loop():
        return signing.verify_pdf(fully_signed, trusted_root_pem=root_pem)

    verdict = asyncio.run(verify_in_loop())
    assert verdict["intact"] and verdict["trusted"], verdict
