"""Catch up on reports whose task never ran: see reports.services.produce_missing_reports."""
from django.core.management.base import BaseCommand

from reports import services


class Command(BaseCommand):
    help = "Render, sign, finalise and deliver every report that is missing or behind."

    def handle(self, *args, **options):
        done = services.produce_missing_reports()
        self.stdout.write(f"change-impact reports brought up to date: {done['change_impact_updated']}; rollback "
                          f"reports produced: {done['rollback_produced']}; e-mails sent: {done['emails_sent']}")
