"""Create the organisation's development PKI (root CA + report-signing certificate) under REPORT_PKI_DIR.

Idempotent: an existing PKI is kept as it is. Prints the root's SHA-256 fingerprint, which regulators compare
before they pin root.pem.
"""
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from foundation.errors import DomainError
from reports import pki


class Command(BaseCommand):
    help = "Create the organisation root CA and report-signing certificate for development (idempotent)."

    def add_arguments(self, parser):
        parser.add_argument("--organisation", default=settings.REPORT_ORGANISATION,
                            help="Organisation name in the certificates (default: REPORT_ORGANISATION).")

    def handle(self, *args, organisation, **options):
        try:
            summary = pki.initialise(organisation=organisation)
        except DomainError as error:
            raise CommandError(error.message) from None
        verb = "Created" if summary["created"] else "Kept the existing"
        self.stdout.write(f"{verb} PKI in {settings.REPORT_PKI_DIR}")
        self.stdout.write(f"Root: {summary['root_subject']}, valid until {summary['root_not_valid_after']}")
        self.stdout.write(f"Root SHA-256 fingerprint: {summary['root_sha256_fingerprint']}")
        self.stdout.write(f"Give regulators {summary['root_certificate']} and this fingerprint.")
