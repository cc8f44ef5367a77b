"""PAdES signatures on report PDFs, and the small PKI behind them.

The only module that imports pyHanko and does PKI. It knows nothing about Django: it takes paths, bytes and
passphrases, so the report task, the verification view and a regulator's script all call the same functions.

Trust model: one organisation root CA (its certificate, `root.pem`, is what regulators pin), an organisation
certificate that certifies every report, and one certificate per approver or ops user for their own signature.
Keys are ECDSA P-256 with SHA-256: small signatures, fast signing, and supported by Acrobat, EU DSS and pyHanko.
Signatures are PAdES B-B (no timestamp authority is reachable from here), so the signing time each signature
reports is the signer's own clock; verification checks certificates at the current time.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import datetime as dt
import io
import os
import tempfile
import unicodedata
from pathlib import Path

from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import pkcs12 as pkcs12_format
from cryptography.x509.oid import NameOID
from pyhanko.pdf_utils import layout
from pyhanko.pdf_utils.incremental_writer import IncrementalPdfFileWriter
from pyhanko.pdf_utils.reader import PdfFileReader
from pyhanko.pdf_utils.text import TextBoxStyle
from pyhanko.sign import fields, signers
from pyhanko.sign.fields import MDPPerm, SigSeedSubFilter
from pyhanko.sign.validation import validate_pdf_signature
from pyhanko.sign.validation.pdf_embedded import collect_embedded_signatures
from pyhanko.sign.validation.status import SignatureCoverageLevel
from pyhanko.stamp import TextStampStyle
from pyhanko_certvalidator import ValidationContext

ROOT_CERTIFICATE = "root.pem"
ROOT_KEY = "root-key.pem"
ORGANISATION_PKCS12 = "organisation.p12"
KEY_ALGORITHM = "ECDSA P-256 with SHA-256"

# Long lifetimes on purpose: reports carry no timestamp, so a signature only verifies while its certificate is
# within its validity period. Rotating the root is a deliberate, announced act towards regulators.
ROOT_VALIDITY = dt.timedelta(days=25 * 365)
ORGANISATION_VALIDITY = dt.timedelta(days=10 * 365)
PERSON_VALIDITY = dt.timedelta(days=5 * 365)


class ReportSigningError(Exception):
    """A report could not be signed: missing or wrong key material, unknown or already signed field."""


# --- PKI -------------------------------------------------------------------------------------------------------


def create_organisation_pki(out_dir: Path, *, organisation: str, passphrase: bytes) -> dict:
    """Create the organisation's root CA and signing certificate in `out_dir`, unless they already exist."""
    out_dir = Path(out_dir)
    paths = {name: out_dir / name for name in (ROOT_CERTIFICATE, ROOT_KEY, ORGANISATION_PKCS12)}
    present = [name for name, path in paths.items() if path.exists()]
    if len(present) == len(paths):
        return _pki_summary(out_dir, created=False)
    if present:
        # Half a PKI means a crash or a hand edit; regenerating would silently invalidate every issued
        # certificate and the root regulators pinned, so a person has to decide.
        raise ReportSigningError(
            f"{out_dir} holds only {', '.join(sorted(present))}; restore the missing PKI files from backup "
            f"or move the directory away to create a new PKI (regulators must then be sent the new root.pem)."
        )
    if not passphrase:
        raise ReportSigningError("The PKI passphrase is empty; set a passphrase to protect the signing keys.")

    now = _now()
    root_key = ec.generate_private_key(ec.SECP256R1())
    root_name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, organisation),
            x509.NameAttribute(NameOID.COMMON_NAME, f"{organisation} Model Registry Root CA"),
        ]
    )
    root_cert = (
        x509.CertificateBuilder()
        .subject_name(root_name)
        .issuer_name(root_name)
        .public_key(root_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + ROOT_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(root_key.public_key()), critical=False)
        .sign(root_key, hashes.SHA256())
    )

    organisation_key = ec.generate_private_key(ec.SECP256R1())
    organisation_cert = _issue(
        root_cert,
        root_key,
        subject=x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, organisation),
                x509.NameAttribute(NameOID.COMMON_NAME, f"{organisation} Model Registry Reports"),
            ]
        ),
        public_key=organisation_key.public_key(),
        validity=ORGANISATION_VALIDITY,
    )
    organisation_p12 = pkcs12_format.serialize_key_and_certificates(
        name=organisation.encode(),
        key=organisation_key,
        cert=organisation_cert,
        cas=[root_cert],
        encryption_algorithm=serialization.BestAvailableEncryption(passphrase),
    )

    out_dir.mkdir(parents=True, exist_ok=True)
    _write_atomically(paths[ROOT_KEY], root_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(passphrase),
    ), private=True)
    _write_atomically(paths[ORGANISATION_PKCS12], organisation_p12, private=True)
    # root.pem last: its presence is what marks the PKI as complete.
    _write_atomically(paths[ROOT_CERTIFICATE], root_cert.public_bytes(serialization.Encoding.PEM), private=False)
    return _pki_summary(out_dir, created=True)


def issue_person_certificate(
    pki_dir: Path,
    *,
    common_name: str,
    email: str,
    passphrase: bytes,
    root_passphrase: bytes | None = None,
) -> bytes:
    """Issue an approver's or ops user's signing certificate; PKCS#12 bytes, key encrypted with `passphrase`.

    `root_passphrase` unlocks the root key and defaults to `passphrase` (the server keeps both under one secret).
    """
    pki_dir = Path(pki_dir)
    root_cert, root_key = _load_root(pki_dir, root_passphrase if root_passphrase is not None else passphrase)
    organisation = root_cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    subject_attributes = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    if organisation:
        subject_attributes.insert(0, x509.NameAttribute(NameOID.ORGANIZATION_NAME, organisation[0].value))
    if email:
        subject_attributes.append(x509.NameAttribute(NameOID.EMAIL_ADDRESS, email))
    person_key = ec.generate_private_key(ec.SECP256R1())
    person_cert = _issue(
        root_cert,
        root_key,
        subject=x509.Name(subject_attributes),
        public_key=person_key.public_key(),
        validity=PERSON_VALIDITY,
        email=email or None,
    )
    return pkcs12_format.serialize_key_and_certificates(
        name=common_name.encode(),
        key=person_key,
        cert=person_cert,
        cas=[root_cert],
        encryption_algorithm=serialization.BestAvailableEncryption(passphrase),
    )


def certificate_summary(certificate_pem: bytes) -> dict:
    """Subject, SHA-256 fingerprint and expiry of a certificate: what a regulator compares before pinning it."""
    certificate = x509.load_pem_x509_certificate(certificate_pem)
    return {
        "subject": certificate.subject.rfc4514_string(),
        "sha256_fingerprint": certificate.fingerprint(hashes.SHA256()).hex(),
        "not_valid_after": certificate.not_valid_after_utc,
    }


def pkcs12_certificate_summary(pkcs12_bytes: bytes, passphrase: bytes) -> dict:
    """certificate_summary of the certificate inside a PKCS#12 bundle."""
    _key, certificate, _cas = pkcs12_format.load_key_and_certificates(pkcs12_bytes, passphrase)
    return certificate_summary(certificate.public_bytes(serialization.Encoding.PEM))


def _issue(root_cert, root_key, *, subject, public_key, validity, email=None) -> x509.Certificate:
    now = _now()
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(root_cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(min(now + validity, root_cert.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            # nonRepudiation (content_commitment) is what pyHanko's validator requires of a document signer by
            # default; digitalSignature keeps stricter readers that expect it happy.
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=True,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(root_key.public_key()), critical=False
        )
    )
    if email:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.RFC822Name(email)]), critical=False)
    return builder.sign(root_key, hashes.SHA256())


def _load_root(pki_dir: Path, passphrase: bytes):
    try:
        root_cert = x509.load_pem_x509_certificate((pki_dir / ROOT_CERTIFICATE).read_bytes())
        key_pem = (pki_dir / ROOT_KEY).read_bytes()
    except FileNotFoundError as e:
        raise ReportSigningError(
            f"No organisation PKI in {pki_dir} ({e.filename} is missing); create it first."
        ) from e
    try:
        root_key = serialization.load_pem_private_key(key_pem, password=passphrase)
    except (ValueError, TypeError) as e:
        raise ReportSigningError(
            f"The root key in {pki_dir} cannot be decrypted with the given passphrase; check the PKI passphrase."
        ) from e
    return root_cert, root_key


def _pki_summary(out_dir: Path, *, created: bool) -> dict:
    root_cert = x509.load_pem_x509_certificate((out_dir / ROOT_CERTIFICATE).read_bytes())
    return {
        "created": created,
        "algorithm": KEY_ALGORITHM,
        "root_certificate": out_dir / ROOT_CERTIFICATE,
        "root_key": out_dir / ROOT_KEY,
        "organisation_pkcs12": out_dir / ORGANISATION_PKCS12,
        "root_subject": root_cert.subject.rfc4514_string(),
        # What regulators compare out of band before pinning root.pem.
        "root_sha256_fingerprint": root_cert.fingerprint(hashes.SHA256()).hex(),
        "root_not_valid_after": root_cert.not_valid_after_utc.isoformat(),
    }


def _write_atomically(path: Path, data: bytes, *, private: bool) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o600 if private else 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


# --- Signing ---------------------------------------------------------------------------------------------------


def certify_pdf(
    pdf_bytes: bytes,
    *,
    pkcs12: bytes,
    passphrase: bytes,
    signature_fields: list[str],
    reason: str,
    certification_field: str = "Organisation",
    field_boxes: dict[str, tuple[int, tuple[float, float, float, float]]] | None = None,
) -> bytes:
    """Add one empty signature field per approver and certify the document with the organisation's key.

    The certification's DocMDP level is FILL_FORMS, so approvers can sign their fields later while any other
    change (page content, annotations) invalidates the certification.

    `field_boxes` places fields visibly: name -> (page index, (x1, y1, x2, y2) in PDF points from the bottom
    left), where the report's layout left room for them; fields without a box are invisible.
    """
    names = [certification_field, *signature_fields]
    if len(set(names)) != len(names):
        raise ReportSigningError(f"Signature field names must be unique, got {names}.")
    unknown = set(field_boxes or {}) - set(signature_fields)
    if unknown:
        raise ReportSigningError(f"Boxes given for fields that are not created: {sorted(unknown)}.")
    signer = _load_signer(pkcs12, passphrase)
    writer = _incremental_writer(pdf_bytes)
    for name in signature_fields:
        page, box = (field_boxes or {}).get(name, (0, None))
        spec = fields.SigFieldSpec(sig_field_name=name, on_page=page,
                                   box=tuple(round(v, 2) for v in box) if box else None)
        fields.append_signature_field(writer, spec)
    meta = signers.PdfSignatureMetadata(
        field_name=certification_field,
        reason=reason,
        certify=True,
        docmdp_permissions=MDPPerm.FILL_FORMS,
        subfilter=SigSeedSubFilter.PADES,
        md_algorithm="sha256",
    )
    pdf_signer = signers.PdfSigner(
        meta, signer=signer, new_field_spec=fields.SigFieldSpec(sig_field_name=certification_field)
    )
    return pdf_signer.sign_pdf(writer).getvalue()


def sign_pdf_field(
    pdf_bytes: bytes,
    *,
    field_name: str,
    pkcs12: bytes,
    passphrase: bytes,
    reason: str,
    signer_name: str,
    appearance: str | None = None,
) -> bytes:
    """Sign an existing empty signature field as an incremental update (an approver's signature).

    `appearance` is the text drawn in a visible field (who signed, when, what they decided). It becomes part of
    the signed update, so it is covered by this signature and any later change to it breaks verification.
    """
    writer = _incremental_writer(pdf_bytes)
    empty = {name for name, _, _ in fields.enumerate_sig_fields(writer, filled_status=False)}
    if field_name not in empty:
        filled = {name for name, _, _ in fields.enumerate_sig_fields(writer, filled_status=True)}
        if field_name in filled:
            raise ReportSigningError(f"Signature field {field_name!r} is already signed.")
        raise ReportSigningError(
            f"The document has no signature field {field_name!r}; empty fields: {sorted(empty) or 'none'}."
        )
    meta = signers.PdfSignatureMetadata(
        field_name=field_name,
        reason=reason,
        name=signer_name,
        subfilter=SigSeedSubFilter.PADES,
        md_algorithm="sha256",
    )
    if appearance is None:
        pdf_signer = signers.PdfSigner(meta, signer=_load_signer(pkcs12, passphrase))
        return pdf_signer.sign_pdf(writer, existing_fields_only=True).getvalue()
    pdf_signer = signers.PdfSigner(meta, signer=_load_signer(pkcs12, passphrase), stamp_style=_APPEARANCE_STYLE)
    # The text goes in as a parameter, never as the template: a '%' in a comment must not be interpolated.
    return pdf_signer.sign_pdf(
        writer, existing_fields_only=True, appearance_text_params={"text": stamp_safe_text(appearance)}
    ).getvalue()


# Signature appearances use the standard Courier font (not embedded, WinAnsi): pyHanko shapes embedded
# OpenType fonts only with uharfbuzz, which this project does not install. Text is left- and top-aligned and
# shrinks to fit its box; the caller wraps lines.
_APPEARANCE_STYLE = TextStampStyle(
    stamp_text="%(text)s",
    border_width=1,
    border_color=(0.2, 0.35, 0.2),
    text_box_style=TextBoxStyle(font_size=8, leading=10),
    inner_content_layout=layout.SimpleBoxLayoutRule(
        x_align=layout.AxisAlignment.ALIGN_MIN,
        y_align=layout.AxisAlignment.ALIGN_MAX,
        margins=layout.Margins.uniform(6),
        inner_content_scaling=layout.InnerScaling.SHRINK_TO_FIT,
    ),
)


# Characters the appearance font (WinAnsi) and pyHanko's text encoding (PDFDocEncoding) disagree on or lack.
_STAMP_REPLACEMENTS = {"\u00a0": " ", "€": "EUR", "–": "-", "—": "-", "‘": "'", "’": "'", "“": '"', "”": '"',
                       "…": "...", "→": "->", "\t": " ", "Ł": "L", "ł": "l", "Đ": "D", "đ": "d", "Œ": "OE",
                       "œ": "oe", "ı": "i"}


def stamp_safe_text(text: str) -> str:
    """`text` with what the appearance font cannot show spelled out: accents dropped where that is needed,
    other characters as '?'. The signature's certificate and /Name keep the exact spelling."""
    shown = []
    for char in text:
        char = _STAMP_REPLACEMENTS.get(char, char)
        if char == "\n" or all(" " <= c <= "~" or "\u00a1" <= c <= "\u00ff" for c in char):
            shown.append(char)
            continue
        plain = unicodedata.normalize("NFKD", char).encode("ascii", "ignore").decode()
        shown.append(plain if plain and plain.isprintable() else "?")
    return "".join(shown)


def sign_pdf(pdf_bytes: bytes, *, pkcs12: bytes, passphrase: bytes, reason: str, field_name: str) -> bytes:
    """Add an approval signature in a new (or existing empty) field: rollback reports, signed by the
    organisation and then by the ops user who rolled back."""
    writer = _incremental_writer(pdf_bytes)
    if any(True for _ in fields.enumerate_sig_fields(writer, filled_status=True, with_name=field_name)):
        raise ReportSigningError(f"Signature field {field_name!r} is already signed.")
    meta = signers.PdfSignatureMetadata(
        field_name=field_name,
        reason=reason,
        subfilter=SigSeedSubFilter.PADES,
        md_algorithm="sha256",
    )
    pdf_signer = signers.PdfSigner(
        meta, signer=_load_signer(pkcs12, passphrase), new_field_spec=fields.SigFieldSpec(sig_field_name=field_name)
    )
    return pdf_signer.sign_pdf(writer).getvalue()


def _load_signer(pkcs12_bytes: bytes, passphrase: bytes) -> signers.SimpleSigner:
    try:
        return signers.SimpleSigner.load_pkcs12_data(pkcs12_bytes, other_certs=(), passphrase=passphrase)
    except ValueError as e:
        raise ReportSigningError(
            "The signing certificate (PKCS#12) cannot be opened: the passphrase is wrong or the file is damaged."
        ) from e


def _incremental_writer(pdf_bytes: bytes) -> IncrementalPdfFileWriter:
    try:
        return IncrementalPdfFileWriter(io.BytesIO(pdf_bytes))
    except Exception as e:  # pyHanko's parser raises many types on malformed input
        raise ReportSigningError(f"The document to sign is not a readable PDF ({e}).") from e


# --- Verification ----------------------------------------------------------------------------------------------


def verify_pdf(pdf_bytes: bytes, *, trusted_root_pem: bytes) -> dict:
    """Validate every signature in a PDF against `trusted_root_pem` only (no system trust store).

    Never raises on a damaged or non-PDF document: the verdict is then `intact: False` with an `error`.
    `intact` means every signature's digest matches, covers its whole revision, and whatever was appended after
    it is allowed by the certification (form filling and signing only).
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return _verify_pdf(pdf_bytes, trusted_root_pem=trusted_root_pem)
    # pyHanko's synchronous validator calls asyncio.run(), which refuses to run inside a running event loop
    # (an ASGI server, a notebook, a browser-driving test): validate in a thread of its own then.
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(_verify_pdf, pdf_bytes, trusted_root_pem=trusted_root_pem).result()


def _verify_pdf(pdf_bytes: bytes, *, trusted_root_pem: bytes) -> dict:
    # A root that does not parse is our own misconfiguration, not the document's fault: let it raise.
    root_der = x509.load_pem_x509_certificate(trusted_root_pem).public_bytes(serialization.Encoding.DER)
    root = asn1_x509.Certificate.load(root_der)
    verdict: dict = {
        "intact": False,
        "valid": False,
        "trusted": False,
        "signatures": [],
        "pending_fields": [],
        "modified_after_last_signature": None,
    }
    try:
        reader = PdfFileReader(io.BytesIO(pdf_bytes))
        embedded = collect_embedded_signatures(reader)
        verdict["pending_fields"] = [name for name, _, _ in fields.enumerate_sig_fields(reader, filled_status=False)]
    except Exception as e:  # untrusted input: any parser failure is a verdict, not a crash
        verdict["error"] = f"The file is not a readable PDF: {type(e).__name__}: {e}"
        return verdict
    if not embedded:
        verdict["error"] = "The document carries no signature."
        return verdict

    results = [_verify_signature(signature, root) for signature in embedded]
    verdict["signatures"] = results
    verdict["intact"] = all(result["intact"] and result["modifications_allowed"] for result in results)
    verdict["valid"] = all(result["valid"] for result in results)
    verdict["trusted"] = all(result["trusted"] for result in results)
    # True when someone appended an update after the last signature (allowed or not): worth showing even when
    # the certification permits it.
    verdict["modified_after_last_signature"] = results[-1]["coverage"] != SignatureCoverageLevel.ENTIRE_FILE.name
    failed = [result for result in results if result.get("error")]
    if failed:
        # The same tampering usually fails every signature; the first one tells the story.
        first = failed[0]
        verdict["error"] = f"{len(failed)} of {len(results)} signatures failed; {first['field']}: {first['error']}"
    return verdict


def _verify_signature(signature, root: asn1_x509.Certificate) -> dict:
    result = {
        "field": signature.field_name,
        "signer": None,
        "signer_email": None,
        "signed_at": None,
        "reason": None,
        "certification": False,
        "intact": False,
        "valid": False,
        "trusted": False,
        "coverage": None,
        "modification_level": None,
        "docmdp_ok": None,
        "modifications_allowed": False,
    }
    try:
        reason = signature.sig_object.get("/Reason")
        result["reason"] = None if reason is None else str(reason)
        result["certification"] = signature.docmdp_level is not None
        cert = signature.signer_cert
        result["signer"] = cert.subject.native.get("common_name")
        result["signer_email"] = cert.subject.native.get("email_address")
        # A fresh context per signature: pyHanko's synchronous entry point closes the context it was given.
        # That entry point also calls asyncio.run, so this function must not be called from inside an event
        # loop (an async view); use a thread there.
        context = ValidationContext(trust_roots=[root], allow_fetching=False, revocation_mode="soft-fail")
        status = validate_pdf_signature(signature, signer_validation_context=context)
    except Exception as e:  # a damaged signature dictionary or CMS blob is a failed signature, not a crash
        result["error"] = f"{type(e).__name__}: {e}"
        return result
    signed_at = status.signer_reported_dt
    if signed_at is not None:
        result["signed_at"] = signed_at.astimezone(dt.timezone.utc).isoformat()
    level = status.modification_level
    result.update(
        intact=bool(status.intact),
        valid=bool(status.valid),
        trusted=bool(status.trusted),
        coverage=status.coverage.name if status.coverage is not None else None,
        modification_level=level.name if level is not None else None,
        docmdp_ok=status.docmdp_ok,
        # pyHanko's bottom line also accepts "diff not run"; we always run the diff, so demand a positive answer,
        # and a signature that does not cover its whole revision is never acceptable.
        modifications_allowed=bool(status.docmdp_ok)
        and status.coverage is not None
        and status.coverage >= SignatureCoverageLevel.ENTIRE_REVISION,
    )
    if not status.intact:
        result["error"] = "the signed bytes were changed after signing (document digest does not match)"
    elif not status.valid:
        result["error"] = "the signature value does not verify with the signer's certificate"
    elif not result["modifications_allowed"]:
        detail = status.diff_result if isinstance(status.diff_result, Exception) else result["modification_level"]
        result["error"] = f"a change made after signing is not allowed by the certification ({detail})"
    elif not status.trusted:
        problem = status.trust_problem_indic.name if status.trust_problem_indic is not None else "unknown"
        result["error"] = f"the signer's certificate does not chain to the trusted root ({problem})"
    return result
