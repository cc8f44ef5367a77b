"""The audit trail in the admin: read-only for every role."""
from django.contrib import admin

from foundation.admin_access import RoleAccessMixin
from foundation.models import AuditEvent


@admin.register(AuditEvent)
class AuditEventAdmin(RoleAccessMixin, admin.ModelAdmin):
    list_display = ["sequence", "occurred_at", "actor_name", "action", "model_name", "object_type", "object_id",
                    "hash_short"]
    list_filter = ["action", "model_name", "object_type"]
    search_fields = ["actor_name", "model_name", "object_id", "hash"]
    readonly_fields = [f.name for f in AuditEvent._meta.fields]

    def has_add_permission(self, request):
        return False

    @admin.display(description="Hash")
    def hash_short(self, obj):
        return obj.hash[:16]
