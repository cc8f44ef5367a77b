"""Visible signature fields where the layout left room, and signature appearances a text extractor can read."""
import io
import subprocess

import pytest
import weasyprint
from pypdf import PdfReader

from reports import signing

PASSPHRASE = b"appearance-passphrase"


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    directory = tmp_path_factory.mktemp("appearance-pki")
    signing.create_organisation_pki(directory, organisation="Acme Bank", passphrase=PASSPHRASE)
    return directory


@pytest.fixture(scope="module")
def certified(pki):
    pdf = weasyprint.HTML(string="<h1>Report</h1><p style='break-after: page'>one</p><h2>Approvals</h2>").write_pdf()
    return signing.certify_pdf(pdf, pkcs12=(pki / "organisation.p12").read_bytes(), passphrase=PASSPHRASE,
                               signature_fields=["approver-1", "approver-2"], reason="certified",
                               field_boxes={"approver-1": (1, (60.0, 600.0, 540.0, 690.0))})


def widget_rects(pdf: bytes) -> dict:
    rects = {}
    for index, page in enumerate(PdfReader(io.BytesIO(pdf)).pages):
        for annotation in page.get("/Annots") or []:
            annotation = annotation.get_object()
            rects[annotation["/T"]] = (index, [float(v) for v in annotation["/Rect"]])
    return rects


def test_fields_are_placed_on_the_page_and_box_given(certified):
    rects = widget_rects(certified)

    assert rects["approver-1"] == (1, [60.0, 600.0, 540.0, 690.0])
    assert rects["approver-2"][1] == [0.0, 0.0, 0.0, 0.0]  # no box given: invisible


def test_signature_appearance_is_signed_and_extractable(pki, certified):
    person = signing.issue_person_certificate(pki, common_name="Zoë Ångström 王", email="zoe@acme.test",
                                              passphrase=PASSPHRASE)
    signed = signing.sign_pdf_field(
        certified, field_name="approver-1", pkcs12=person, passphrase=PASSPHRASE, reason="approve: 100% sure",
        signer_name="Zoë Ångström 王",
        appearance="APPROVED by Zoë Ångström 王\u00a0(zoe)\nComment: 100% sure, %(text)s stays literal",
    )

    verdict = signing.verify_pdf(signed, trusted_root_pem=(pki / "root.pem").read_bytes())
    assert verdict["intact"] and verdict["trusted"], verdict
    assert verdict["signatures"][1]["signer"] == "Zoë Ångström 王"  # the certificate keeps the exact name
    text = subprocess.run(["pdftotext", "-raw", "-", "-"], input=signed, capture_output=True,
                          check=True).stdout.decode()
    assert "APPROVED by Zoë Ångström ? (zoe)" in text
    assert "Comment: 100% sure, %(text)s stays literal" in text


def test_boxes_for_unknown_fields_are_refused(pki):
    pdf = weasyprint.HTML(string="<p>x</p>").write_pdf()
    with pytest.raises(signing.ReportSigningError, match="not created"):
        signing.certify_pdf(pdf, pkcs12=(pki / "organisation.p12").read_bytes(), passphrase=PASSPHRASE,
                            signature_fields=["approver-1"], reason="r", field_boxes={"approver-9": (0, (0, 0, 1, 1))})


@pytest.mark.parametrize(("text", "shown"), [("Zoë", "Zoë"), ("Łukasz", "Lukasz"), ("王", "?"), ("a\u00a0b", "a b"),
                                              ("price €5", "price EUR5"), ("line\nbreak", "line\nbreak")])
def test_stamp_text_keeps_what_the_font_can_show(text, shown):
    assert signing.stamp_safe_text(text) == shown
