"""Where the organisation's signing material lives, and each signer's identity: the Django side of signing.py.

Settings name the PKI directory (root.pem, root-key.pem, organisation.p12) and the one passphrase that protects
every private key. People's certificates are issued by the root the first time they sign
(reports.services.signing_identity) and kept encrypted in the database (SigningIdentity).
"""
from django.conf import settings

from foundation.errors import Unprocessable
from reports import signing


def passphrase() -> bytes:
    return settings.REPORT_PKI_PASSPHRASE.encode()


def ensure_pki() -> dict:
    """The organisation PKI, created first when settings allow it (development); its summary."""
    directory = settings.REPORT_PKI_DIR
    if not (directory / signing.ROOT_CERTIFICATE).exists() and not settings.REPORT_PKI_AUTO_CREATE:
        raise signing.ReportSigningError(
            f"No organisation PKI in {directory}: run `manage.py init_pki` (development) or install the "
            "organisation's root.pem, root-key.pem and organisation.p12 there (production).")
    return signing.create_organisation_pki(directory, organisation=settings.REPORT_ORGANISATION,
                                           passphrase=passphrase())


def root_pem() -> bytes:
    ensure_pki()
    return (settings.REPORT_PKI_DIR / signing.ROOT_CERTIFICATE).read_bytes()


def root_summary() -> dict:
    return signing.certificate_summary(root_pem())


def organisation_pkcs12() -> bytes:
    ensure_pki()
    return (settings.REPORT_PKI_DIR / signing.ORGANISATION_PKCS12).read_bytes()


def initialise(*, organisation: str) -> dict:
    """Create the organisation's root CA and report-signing certificate (development); an existing PKI is kept."""
    try:
        return signing.create_organisation_pki(settings.REPORT_PKI_DIR, organisation=organisation,
                                               passphrase=passphrase())
    except signing.ReportSigningError as error:
        raise Unprocessable(str(error)) from None
