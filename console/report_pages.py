"""Reports in the admin, read-only for every role (approvers download the draft they are asked to sign here);
regulators' e-mail subscriptions, managed by superusers (regulators manage their own in the portal)."""
from django.contrib import admin
from django.utils.html import format_html

from foundation.admin_access import RoleAccessMixin
from reports.models import Report, ReportSubscription


@admin.register(Report)
class ReportAdmin(RoleAccessMixin, admin.ModelAdmin):
    list_display = ("id", "kind", "model", "change_request", "round", "status", "created_at", "finalised_at",
                    "download")
    list_filter = ("kind", "status", "model")
    fields = ("kind", "model", "change_request", "round", "alias_change", "status", "sha256", "object_key",
              "storage_version_id", "audit_head_sequence", "audit_head_hash", "signatures", "created_at",
              "finalised_at", "download")
    readonly_fields = fields

    @admin.display(description="PDF")
    def download(self, report):
        if not report.object_key:
            return "—"
        return format_html('<a href="/api/v1/reports/{}/pdf">download</a> · '
                           '<a href="/api/v1/reports/{}/verification">verification</a>', report.pk, report.pk)

    def has_add_permission(self, request):
        return False  # reports are made by the workers, never by hand


@admin.register(ReportSubscription)
class ReportSubscriptionAdmin(admin.ModelAdmin):
    list_display = ("user", "model", "created_at")
