"""Scan the datasets that have no PII scan yet (those registered before scans existed): small ones at once,
large ones as jobs for the worker."""
from django.core.management.base import BaseCommand

from workers.pii_services import scan_unscanned_datasets


class Command(BaseCommand):
    help = "Start the PII scan of every dataset that is still waiting for one."

    def handle(self, *args, **options):
        self.stdout.write(f"PII scans started: {scan_unscanned_datasets()}")
