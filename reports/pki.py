"""Where the organisation's signing material lives, and each signer's identity: the Django side of signing.py.

Settings name the PKI directory (root.pem, root-key.pem, organisation.p12) and the one passphrase that protects
every private key; people's certificates are issued by the root the first time they sign and kept encrypted in
the database (SigningIdentity).
"""
from django.conf import settings
from django.db import IntegrityError, transaction

from reports import signing
from reports.models import SigningIdentity


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


def person_pkcs12(user) -> bytes:
    """The user's PKCS#12 (key encrypted with the PKI passphrase), issued by the root on first use."""
    identity = SigningIdentity.objects.filter(user=user).first()
    if identity is not None:
        return bytes(identity.pkcs12)
    ensure_pki()
    common_name = user.get_full_name() or user.username
    issued = signing.issue_person_certificate(settings.REPORT_PKI_DIR, common_name=common_name, email=user.email,
                                              passphrase=passphrase())
    try:
        with transaction.atomic():
            SigningIdentity.objects.create(user=user, common_name=common_name, pkcs12=issued)
    except IntegrityError:  # issued concurrently by another task: keep the one that was stored first
        return bytes(SigningIdentity.objects.get(user=user).pkcs12)
    return issued
