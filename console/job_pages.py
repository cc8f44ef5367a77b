"""Jobs in the admin: a list with progress bars, and a detail page that refreshes itself while the job runs."""
from django.contrib import admin, messages
from django.http import HttpResponseRedirect
from django.urls import path, reverse
from django.utils.html import format_html

from foundation.admin_access import RoleAccessMixin
from foundation.errors import DomainError
from foundation.roles import ML_ENGINEER, has_role
from workers import services
from workers.models import Job


@admin.register(Job)
class JobAdmin(RoleAccessMixin, admin.ModelAdmin):
    change_form_template = "admin/workers/job/change_form.html"
    list_display = ["id", "kind", "source_version", "status", "progress_bar", "message", "created_by", "created_at"]
    list_filter = ["kind", "status"]
    readonly_fields = ["kind", "status", "progress_bar", "message", "params", "result", "error", "source_version",
                       "attempts", "worker", "created_by", "created_at", "started_at", "finished_at"]
    fields = readonly_fields

    def has_add_permission(self, request):
        return False  # jobs start from a version's page or the API

    @admin.display(description="Progress")
    def progress_bar(self, obj):
        return format_html('<progress max="100" value="{}"></progress> {}%', obj.progress, obj.progress)

    def get_urls(self):
        return [path("<int:job_id>/cancel/", self.admin_site.admin_view(self.cancel_view),
                     name="workers_job_cancel")] + super().get_urls()

    def change_view(self, request, object_id, form_url="", extra_context=None):
        job = Job.objects.filter(pk=object_id).first()
        context = {"job": job, "can_cancel": bool(job and not job.is_finished and has_role(request.user, ML_ENGINEER))}
        return super().change_view(request, object_id, form_url, {**context, **(extra_context or {})})

    def cancel_view(self, request, job_id):
        job = Job.objects.filter(pk=job_id).first()
        if request.method == "POST" and job and has_role(request.user, ML_ENGINEER):
            try:
                services.cancel_job(job=job, actor=request.user)
                messages.success(request, f"Cancellation of job {job_id} requested.")
            except DomainError as error:
                messages.error(request, error.message)
        return HttpResponseRedirect(reverse("admin:workers_job_change", args=[job_id]))
