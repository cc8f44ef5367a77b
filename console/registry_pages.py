"""The ML engineers' admin UI: models, versions (upload, seal, quantize, lineage), datasets.

Every action calls the same services as the REST API; access follows the four roles, so regulators (and
approvers and ops) see everything read-only.
"""
from django import forms
from django.contrib import admin, messages
from django.db.models import Q
from django.http import HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.urls import path, reverse
from django.utils.html import format_html

from console import version_actions, version_display
from console.job_pages import job_result_links
from foundation.admin_access import RoleAccessMixin
from foundation.errors import DomainError
from foundation.roles import ALL_ROLES, ML_ENGINEER, has_role
from governance import selectors as governance_selectors
from registry import selectors, services
from registry.models import Dataset, ModelVersion, RegisteredModel, Team
from registry.serving import serving_commands
from reports import selectors as report_selectors
from workers import selectors as job_selectors
from workers import services as job_services
from workers.models import Analysis, Evaluation
from workers.pipelines.specs import COMPUTE_DTYPES, METHODS


class ModelCreateForm(forms.ModelForm):
    team = forms.ModelChoiceField(queryset=Team.objects.none(), required=False,
                                  help_text="The team that owns the model; default: your only team (or a personal "
                                            "team named after you).")

    class Meta:
        model = RegisteredModel
        fields = ["name", "description"]

    def validate_unique(self):
        # Uniqueness is the service's call (409 in the API); the form shows its message.
        pass


@admin.register(RegisteredModel)
class RegisteredModelAdmin(RoleAccessMixin, admin.ModelAdmin):
    form = ModelCreateForm
    change_form_template = "admin/registry/registeredmodel/change_form.html"
    list_display = ["name", "team", "description", "last_version_number", "created_by", "created_at"]
    list_filter = ["team"]
    search_fields = ["name", "description"]
    # The versions, aliases, change requests and reports are tables below the fields (the change form template).
    readonly_fields = ["name", "team", "description", "last_version_number", "created_by", "created_at"]

    def get_readonly_fields(self, request, obj=None):
        return self.readonly_fields if obj else []

    def change_view(self, request, object_id, form_url="", extra_context=None):
        model = RegisteredModel.objects.filter(pk=object_id).first()
        context = {"registered_model": model}
        if model:
            context.update({
                "aliases": governance_selectors.aliases_of(model).order_by("name"),
                "versions": model.versions.select_related("created_by").order_by("-number"),
                "change_requests": governance_selectors.change_requests(model_name=model.name).order_by("-pk")[:50],
                "reports": report_selectors.reports(model_name=model.name).order_by("-pk")[:50],
            })
        return super().change_view(request, object_id, form_url, {**context, **(extra_context or {})})

    def get_form(self, request, obj=None, change=False, **kwargs):
        form = super().get_form(request, obj, change=change, **kwargs)
        if "team" in form.base_fields:
            teams = Team.objects.all() if request.user.is_superuser else Team.objects.filter(members=request.user)
            form.base_fields["team"].queryset = teams
        return form

    def save_model(self, request, obj, form, change):
        team = form.cleaned_data.get("team")
        created = services.create_model(name=form.cleaned_data["name"],
                                        description=form.cleaned_data.get("description", ""), actor=request.user,
                                        team=team.name if team else None)
        obj.pk = created.pk


@admin.register(Team)
class TeamAdmin(admin.ModelAdmin):
    """Teams are managed by superusers (Django's own permissions); every role may look."""

    list_display = ["name", "member_names", "created_at"]
    search_fields = ["name", "members__username"]
    filter_horizontal = ["members"]

    def has_module_permission(self, request):
        return has_role(request.user, *ALL_ROLES)

    def has_view_permission(self, request, obj=None):
        return has_role(request.user, *ALL_ROLES)

    @admin.display(description="Members")
    def member_names(self, obj):
        return ", ".join(obj.members.order_by("username").values_list("username", flat=True)) or "-"


class VersionCreateForm(forms.ModelForm):
    class Meta:
        model = ModelVersion
        fields = ["model", "description"]


class FileUploadForm(forms.Form):
    file = forms.FileField(help_text="config.json, tokenizer files and *.safetensors weights; never pickles.")
    path = forms.CharField(required=False, max_length=512,
                           help_text="Path inside the version; defaults to the file's name.")


METHOD_LABELS = {"nf4": "NF4 (4-bit)", "fp4": "FP4 (4-bit)", "int8": "INT8"}


class QuantizeForm(forms.Form):
    method = forms.ChoiceField(choices=[(method, METHOD_LABELS.get(method, method)) for method in METHODS])
    compute_dtype = forms.ChoiceField(choices=[(dtype, dtype) for dtype in COMPUTE_DTYPES], initial="float32")
    double_quant = forms.BooleanField(required=False, help_text="4-bit only: also quantize the scales.")
    skip_modules = forms.CharField(initial="lm_head", required=False,
                                   help_text="Comma-separated modules kept in full precision.")


@admin.register(ModelVersion)
class ModelVersionAdmin(RoleAccessMixin, admin.ModelAdmin):
    form = VersionCreateForm
    change_form_template = "admin/registry/modelversion/change_form.html"
    list_display = ["__str__", "kind", "status", "manifest_short", "created_by", "created_at"]
    list_filter = ["status", "kind", "model"]
    search_fields = ["model__name", "description"]
    readonly_fields = ["model", "number", "kind", "status", "description", "manifest_sha256", "created_by",
                       "created_at", "sealed_at", "made_by_job"]

    def get_readonly_fields(self, request, obj=None):
        return self.readonly_fields if obj else []

    @admin.display(description="Made by")
    def made_by_job(self, obj):
        if not obj.source_job_id:
            return "an upload"
        return format_html('<a href="{}">job {}</a>', reverse("admin:workers_job_change", args=[obj.source_job_id]),
                           obj.source_job_id)

    @admin.display(description="Manifest")
    def manifest_short(self, obj):
        return obj.manifest_sha256[:16] if obj.manifest_sha256 else "-"

    def save_model(self, request, obj, form, change):
        created = services.create_version(model=form.cleaned_data["model"],
                                          description=form.cleaned_data.get("description", ""), actor=request.user)
        obj.pk = created.pk

    def get_urls(self):
        custom = [
            path("<int:version_id>/upload/", self.admin_site.admin_view(self.upload_view),
                 name="registry_modelversion_upload"),
            path("<int:version_id>/seal/", self.admin_site.admin_view(self.seal_view),
                 name="registry_modelversion_seal"),
            path("<int:version_id>/quantize/", self.admin_site.admin_view(self.quantize_view),
                 name="registry_modelversion_quantize"),
            path("<int:version_id>/calibrated_quantize/",
                 self.admin_site.admin_view(lambda r, version_id: version_actions.start_calibrated_quantize_view(
                     self.admin_site, r, version_id)), name="registry_modelversion_calibrated_quantize"),
            path("<int:version_id>/analysis/",
                 self.admin_site.admin_view(lambda r, version_id: version_actions.start_analysis_view(
                     self.admin_site, r, version_id)), name="registry_modelversion_analysis"),
            path("<int:version_id>/evaluation/",
                 self.admin_site.admin_view(lambda r, version_id: version_actions.start_evaluation_view(
                     self.admin_site, r, version_id)), name="registry_modelversion_evaluation"),
            path("<int:version_id>/lora/",
                 self.admin_site.admin_view(lambda r, version_id: version_actions.start_lora_view(
                     self.admin_site, r, version_id)), name="registry_modelversion_lora"),
            path("<int:version_id>/quantization-sweep/",
                 self.admin_site.admin_view(lambda r, version_id: version_actions.start_quantization_sweep_view(
                     self.admin_site, r, version_id)), name="registry_modelversion_quantization_sweep"),
            path("<int:version_id>/merge/",
                 self.admin_site.admin_view(lambda r, version_id: version_actions.merge_view(
                     self.admin_site, r, version_id)), name="registry_modelversion_merge"),
            path("<int:version_id>/change-request/",
                 self.admin_site.admin_view(lambda r, version_id: version_actions.open_change_request_view(
                     self.admin_site, r, version_id)), name="registry_modelversion_change_request"),
        ]
        return custom + super().get_urls()

    def change_view(self, request, object_id, form_url="", extra_context=None):
        version = get_object_or_404(ModelVersion.objects.select_related("model"), pk=object_id)
        context = {
            "version": version,
            "files": version.files.all(),
            "lineage": version_display.lineage_view(version),
            # Jobs on this version and the one that made it (a LoRA or quantized version's own job).
            "jobs": [(job, job_result_links(job)) for job in job_selectors.jobs()
                     .filter(Q(source_version=version) | Q(pk=version.source_job_id)).order_by("-pk")[:20]],
            "can_write": has_role(request.user, ML_ENGINEER),
            "upload_form": FileUploadForm(),
            "quantize_form": QuantizeForm(),
            "quantization_rows": version_display.quantization_rows(version.quantization)
            if version.quantization else None,
            "lora_rows": version_display.lora_rows(version.lora) if version.lora else None,
            "training_curve": version_display.training_curve_chart(version.lora),
            "training_points": version_display.training_curve_rows(version.lora),
            "aliases_here": version_display.version_aliases(version),
            "serving": serving_commands(version),
            "analyses": Analysis.objects.select_related("candidate__model", "reference__model", "dataset", "job")
                                        .filter(Q(candidate=version) | Q(reference=version)).order_by("-pk")[:20],
            "evaluations": Evaluation.objects.select_related("candidate__model", "reference__model", "dataset", "job")
                                             .filter(Q(candidate=version) | Q(reference=version)).order_by("-pk")[:20],
            "change_requests": governance_selectors.change_requests().filter(to_version=version).order_by("-pk"),
            **version_actions.version_forms(version),
            **(extra_context or {}),
        }
        return super().change_view(request, object_id, form_url, context)

    def _back(self, version_id):
        return HttpResponseRedirect(reverse("admin:registry_modelversion_change", args=[version_id]))

    def _require_engineer(self, request):
        if request.method != "POST" or not has_role(request.user, ML_ENGINEER):
            messages.error(request, "This needs the ml_engineer role.")
            return False
        return True

    def upload_view(self, request, version_id):
        version = get_object_or_404(ModelVersion.objects.select_related("model"), pk=version_id)
        if not self._require_engineer(request):
            return self._back(version_id)
        form = FileUploadForm(request.POST, request.FILES)
        if not form.is_valid():
            messages.error(request, "Choose a file to upload.")
            return self._back(version_id)
        uploaded = form.cleaned_data["file"]
        file_path = form.cleaned_data["path"] or uploaded.name
        try:
            # Django has spooled a large upload to a temporary file, not memory; it streams on from there.
            version_file = services.upload_version_file(version=version, path=file_path, stream=uploaded,
                                                        content_length=uploaded.size, expected_sha256=None,
                                                        actor=request.user)
            messages.success(request, f"Uploaded {version_file.path}: {version_file.size} bytes, "
                                      f"SHA-256 {version_file.sha256}.")
        except DomainError as error:
            messages.error(request, error.message)
        return self._back(version_id)

    def seal_view(self, request, version_id):
        version = get_object_or_404(ModelVersion, pk=version_id)
        if self._require_engineer(request):
            try:
                sealed = services.seal_version(version=version, actor=request.user)
                messages.success(request, f"Sealed {sealed}; manifest {sealed.manifest_sha256}.")
            except DomainError as error:
                messages.error(request, error.message)
        return self._back(version_id)

    def quantize_view(self, request, version_id):
        version = get_object_or_404(ModelVersion.objects.select_related("model"), pk=version_id)
        if self._require_engineer(request):
            form = QuantizeForm(request.POST)
            if form.is_valid():
                skip = [m.strip() for m in form.cleaned_data["skip_modules"].split(",") if m.strip()]
                try:
                    job = job_services.start_quantization(
                        version=version, method=form.cleaned_data["method"],
                        compute_dtype=form.cleaned_data["compute_dtype"],
                        double_quant=form.cleaned_data["double_quant"], skip_modules=skip, actor=request.user)
                    messages.success(request, f"Quantization job {job.pk} queued.")
                    return HttpResponseRedirect(reverse("admin:workers_job_change", args=[job.pk]))
                except DomainError as error:
                    messages.error(request, error.message)
            else:
                messages.error(request, "Check the quantization settings.")
        return self._back(version_id)


class DatasetCreateForm(forms.ModelForm):
    file = forms.FileField(help_text="JSONL, one JSON object per line.")

    class Meta:
        model = Dataset
        fields = ["name", "purpose"]


@admin.register(Dataset)
class DatasetAdmin(RoleAccessMixin, admin.ModelAdmin):
    form = DatasetCreateForm
    list_display = ["id", "name", "purpose", "record_format", "records", "pii_status", "redacted_from", "size",
                    "sha256", "created_by", "created_at"]
    list_filter = ["purpose", "pii_status"]
    readonly_fields = ["name", "purpose", "record_format", "records", "size", "sha256", "pii_status", "pii_summary",
                       "pii_exception", "redacted_from", "redaction", "findings", "created_by", "created_at"]

    def get_fields(self, request, obj=None):
        return self.readonly_fields if obj else ["name", "purpose", "file"]

    @admin.display(description="Personal data found")
    def pii_summary(self, obj):
        counts = {kind: count for kind, count in ((obj.pii or {}).get("counts") or {}).items() if count}
        if obj.pii_status != Dataset.PiiStatus.FOUND:
            return obj.get_pii_status_display()
        return ", ".join(f"{count} {kind.replace('_', ' ')}" for kind, count in counts.items())

    @admin.display(description="Where (masked)")
    def findings(self, obj):
        rows = [format_html("<tr><td>line {}</td><td>{}</td><td>{}</td><td><code>{}</code></td></tr>",
                            f.record, f.field, f.type.replace("_", " "), f.masked)
                for f in selectors.pii_findings(obj)[:50]]
        if not rows:
            return "none"
        more = obj.pii_findings.count() - len(rows)
        table = format_html("<table>{}</table>", format_html("".join(["{}"] * len(rows)), *rows))
        return format_html("{}{}", table, f" and {more} more (GET /api/v1/datasets/{obj.pk}/pii-findings)"
                           if more > 0 else "")

    def get_readonly_fields(self, request, obj=None):
        return self.readonly_fields if obj else []

    def save_model(self, request, obj, form, change):
        created = services.register_dataset(name=form.cleaned_data["name"], purpose=form.cleaned_data["purpose"],
                                            uploaded_file=form.cleaned_data["file"], actor=request.user)
        obj.pk = created.pk

