"""Jobs in the admin: a list with progress bars, and a detail page that refreshes itself while the job runs."""
from django.contrib import admin, messages
from django.http import HttpResponseRedirect
from django.urls import path, reverse
from django.utils.html import format_html, format_html_join

from foundation.admin_access import RoleAccessMixin
from foundation.errors import DomainError
from foundation.roles import ML_ENGINEER, has_role
from registry import selectors as registry_selectors
from workers import services
from workers.models import Distillation, Evaluation, Job


def job_result_links(job) -> list[str]:
    """What a job produced, as admin links: the version it registered, the analysis it computed; other values
    (a PII scan's counts) as `key: value` text."""
    result = dict(job.result or {})
    links = []
    if "model" in result and "version" in result:
        model_name, number = result.pop("model"), result.pop("version")
        version = _registered_version(job)
        links.append(
            format_html('<a href="{}">{} v{}</a>', reverse("admin:registry_modelversion_change", args=[version.pk]),
                        model_name, number)
            if version else format_html("{} v{} (no longer registered)", model_name, number))
    if "analysis" in result:
        analysis_id = result.pop("analysis")
        links.append(format_html('<a href="{}">analysis {}</a>',
                                 reverse("admin:workers_analysis_change", args=[analysis_id]), analysis_id))
    if "evaluation" in result:
        evaluation_id = result.pop("evaluation")
        links.append(format_html('<a href="{}">evaluation {}</a>',
                                 reverse("admin:workers_evaluation_change", args=[evaluation_id]), evaluation_id))
    if "distillation" in result:
        distillation_id = result.pop("distillation")
        result.pop("best", None)  # the distillation's page marks it
        links.append(format_html('<a href="{}">distillation {}</a>',
                                 reverse("admin:workers_distillation_change", args=[distillation_id]),
                                 distillation_id))
    if "quantization_sweep" in result:
        sweep_id = result.pop("quantization_sweep")
        result.pop("recommended", None)  # the sweep's page marks it
        links.append(format_html('<a href="{}">quantization sweep {}</a>',
                                 reverse("admin:workers_quantizationsweep_change", args=[sweep_id]), sweep_id))
    links.extend(format_html("{}: {}", key, value) for key, value in result.items())
    return links


def _registered_version(job):
    """The version a quantize or LoRA job registered, when it still exists."""
    result = (job.result or {}) if job else {}
    if not (result.get("model") and result.get("version")):
        return None
    try:
        return registry_selectors.get_version(result["model"], result["version"])
    except DomainError:
        return None


@admin.register(Job)
class JobAdmin(RoleAccessMixin, admin.ModelAdmin):
    change_form_template = "admin/workers/job/change_form.html"
    list_display = ["id", "kind", "source_version", "status", "progress_bar", "message", "created_by", "created_at"]
    list_filter = ["kind", "status"]
    readonly_fields = ["kind", "status", "progress_bar", "message", "params", "result_links", "error", "source_version",
                       "attempts", "worker", "created_by", "created_at", "started_at", "finished_at"]
    fields = readonly_fields

    def has_add_permission(self, request):
        return False  # jobs start from a version's page or the API

    @admin.display(description="Progress")
    def progress_bar(self, obj):
        return format_html('<progress max="100" value="{}"></progress> {}%', obj.progress, obj.progress)

    @admin.display(description="Result")
    def result_links(self, obj):
        return format_html_join(", ", "{}", ((link,) for link in job_result_links(obj))) or "—"

    def get_urls(self):
        return [path("<int:job_id>/cancel/", self.admin_site.admin_view(self.cancel_view),
                     name="workers_job_cancel")] + super().get_urls()

    def change_view(self, request, object_id, form_url="", extra_context=None):
        job = Job.objects.filter(pk=object_id).first()
        context = {"job": job, "can_cancel": bool(job and not job.is_finished and has_role(request.user, ML_ENGINEER)),
                   "result_version": _registered_version(job)}
        result = (job.result or {}) if job else {}
        if job and job.kind == Job.Kind.EVALUATION and "evaluation" not in result:
            context["job_evaluation"] = Evaluation.objects.filter(job=job).first()  # still running: link it now
        if job and job.kind == Job.Kind.DISTILLATION and "distillation" not in result:
            context["job_distillation"] = Distillation.objects.filter(job=job).first()
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
