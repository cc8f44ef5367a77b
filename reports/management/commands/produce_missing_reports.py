"""Catch up on reports whose task never ran (the broker was down when a hook fired, a task failed for good):
drafts of pending requests, final reports of deployed ones, rollback reports and e-mail deliveries. Safe to run
any time: every step is idempotent."""
from django.core.management.base import BaseCommand

from governance.models import ChangeRequest
from registry.models import AliasChange
from reports import services
from reports.models import Report


class Command(BaseCommand):
    help = "Render, sign, finalise and deliver every report that is missing or behind."

    def handle(self, *args, **options):
        finals = Report.objects.filter(kind=Report.Kind.CHANGE_IMPACT, status=Report.Status.FINAL)
        requests = (ChangeRequest.objects.filter(status__in=[ChangeRequest.Status.PENDING,
                                                             ChangeRequest.Status.DEPLOYED])
                    .exclude(pk__in=finals.values("change_request_id")).values_list("pk", flat=True))
        updated = 0
        for request_id in requests:
            if services.update_change_impact_report(change_request_id=request_id) is not None:
                updated += 1
        rollbacks = (AliasChange.objects.filter(kind=AliasChange.Kind.ROLLBACK)
                     .exclude(pk__in=Report.objects.filter(kind=Report.Kind.ROLLBACK).values("alias_change_id"))
                     .values_list("pk", flat=True))
        produced = sum(1 for change_id in rollbacks
                       if services.produce_rollback_report(alias_change_id=change_id) is not None)
        delivered = sum(services.deliver_report(report_id=report_id) for report_id in
                        Report.objects.filter(status=Report.Status.FINAL).values_list("pk", flat=True))
        self.stdout.write(f"change-impact reports brought up to date: {updated}; rollback reports produced: "
                          f"{produced}; e-mails sent: {delivered}")
