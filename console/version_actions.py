"""The version page's write actions that start work elsewhere: an analysis, a task evaluation, a LoRA update, a
quantization sweep, a change request.

Each posts to its own URL. A valid request goes through the API's serializer and the service the API view calls,
then lands on the job (or change request) page; a refused one is shown again on a page of its own, the form
with the service's message next to the field it names.
"""
from django.contrib import messages
from django.http import HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import reverse

from console.forms import (
    AnalysisStartForm,
    CalibratedQuantizeForm,
    ChangeRequestOpenForm,
    EvaluationStartForm,
    LoraUpdateForm,
    QuantizationSweepStartForm,
    add_domain_error,
    add_serializer_errors,
)
from foundation.errors import DomainError
from foundation.roles import ML_ENGINEER, has_role
from governance import selectors as governance_selectors
from governance import services as governance_services
from governance.api import ChangeRequestOpenSerializer
from registry import selectors
from registry.models import ModelVersion
from workers import services as job_services
from workers import sweep_services
from workers.api import (
    AnalysisRequestSerializer,
    CalibratedQuantizeRequestSerializer,
    EvaluationRequestSerializer,
    LoraRequestSerializer,
)
from workers.merge_services import start_merge
from workers.sweep_api import QuantizationSweepRequestSerializer


def version_forms(version: ModelVersion, *, data=None, only: str | None = None) -> dict:
    """The six forms of a version page, unbound (or `only` one of them bound to `data`)."""
    def bind(name):
        return data if only == name else None

    alias_names = list(governance_selectors.aliases_of(version.model).values_list("name", flat=True))
    return {
        "analysis_form": AnalysisStartForm(bind("analysis"), version=version, prefix="analysis"),
        "evaluation_form": EvaluationStartForm(bind("evaluation"), version=version, prefix="evaluation"),
        "lora_form": LoraUpdateForm(bind("lora"), version=version, prefix="lora",
                                    module_names=selectors.module_names_of(version)),
        "calibrated_quantize_form": CalibratedQuantizeForm(bind("calibrated_quantize"), version=version,
                                                           prefix="calibrated"),
        "quantization_sweep_form": QuantizationSweepStartForm(bind("quantization_sweep"), version=version,
                                                              prefix="sweep", alias_names=alias_names),
        "change_request_form": ChangeRequestOpenForm(bind("change_request"), version=version, prefix="cr",
                                                     alias_names=alias_names),
    }


ACTIONS = {
    "analysis": {"title": "Start an analysis", "form": "analysis_form", "submit": "Start analysis"},
    "evaluation": {"title": "Start a task evaluation", "form": "evaluation_form", "submit": "Start evaluation"},
    "lora": {"title": "Train a LoRA update", "form": "lora_form", "submit": "Start training"},
    "calibrated_quantize": {"title": "Quantize with calibration (GPTQ, AWQ)", "form": "calibrated_quantize_form",
                            "submit": "Start calibrated quantization"},
    "quantization_sweep": {"title": "Start a quantization sweep", "form": "quantization_sweep_form",
                           "submit": "Start sweep"},
    "change_request": {"title": "Open a change request", "form": "change_request_form",
                       "submit": "Open change request"},
}


def _refused(request, admin_site, version, action: str, form):
    """The form again, on a page of its own, with what was wrong next to each field."""
    context = {**admin_site.each_context(request), "version": version, "form": form, "action": action,
               "title": f"{ACTIONS[action]['title']} on {version.model.name} v{version.number}",
               "submit": ACTIONS[action]["submit"],
               "action_url": reverse(f"admin:registry_modelversion_{action}", args=[version.pk]),
               "version_url": reverse("admin:registry_modelversion_change", args=[version.pk]),
               "opts": ModelVersion._meta}
    # 200 like any admin form shown again with its errors (an error status would be answered as JSON).
    return TemplateResponse(request, "admin/registry/modelversion/action_form.html", context)


def _version_or_back(request, version_id):
    version = get_object_or_404(ModelVersion.objects.select_related("model"), pk=version_id)
    back = HttpResponseRedirect(reverse("admin:registry_modelversion_change", args=[version_id]))
    if request.method != "POST":
        return version, back
    if not has_role(request.user, ML_ENGINEER):
        messages.error(request, "This needs the ml_engineer role.")
        return version, back
    return version, None


def _start_from_form(admin_site, request, version_id, action: str, serializer_class, start, *,
                     fields: dict[str, str] | None = None):
    """One version-page form: validated by the API's serializer, then `start(version, form, data)` calls the
    service and returns (the page to land on, the success message). A refusal comes back next to its field."""
    version, back = _version_or_back(request, version_id)
    if back:
        return back
    form = version_forms(version, data=request.POST, only=action)[ACTIONS[action]["form"]]
    try:  # a serializer's own checks may raise a DomainError too (the sweep's per-candidate ones)
        payload = form.api_payload() if form.is_valid() else None
        data = payload and add_serializer_errors(form, serializer_class, payload, fields=fields)
        if data:
            url, message = start(version, form, data)
            messages.success(request, message)
            return HttpResponseRedirect(url)
    except DomainError as error:
        add_domain_error(form, error, fields=fields)
    return _refused(request, admin_site, version, action, form)


def _job_page(job_id: int) -> str:
    return reverse("admin:workers_job_change", args=[job_id])


def _reference(version, number):
    return selectors.get_version(version.model.name, number) if number else None


def start_analysis_view(admin_site, request, version_id):
    def start(version, form, data):
        analysis = job_services.request_analysis(
            candidate=version, reference=_reference(version, data.get("reference")),
            dataset=form.cleaned_data["dataset"], max_tokens=data["max_tokens"], top_k=data["top_k"],
            actor=request.user)
        return _job_page(analysis.job_id), (f"Analysis {analysis.pk} of v{version.number} against "
                                            f"v{analysis.reference.number} queued as job {analysis.job_id}.")

    return _start_from_form(admin_site, request, version_id, "analysis", AnalysisRequestSerializer, start)


def start_evaluation_view(admin_site, request, version_id):
    def start(version, form, data):
        settings = dict(data)
        reference = _reference(version, settings.pop("reference", None))
        settings.pop("dataset")
        evaluation = job_services.request_evaluation(candidate=version, reference=reference,
                                                     dataset=form.cleaned_data["dataset"],
                                                     evaluation_settings=settings, actor=request.user)
        against = f" against v{reference.number}" if reference else ""
        return _job_page(evaluation.job_id), (f"Evaluation {evaluation.pk} ({evaluation.task_type.replace('_', ' ')}) "
                                              f"of v{version.number}{against} queued as job {evaluation.job_id}.")

    return _start_from_form(admin_site, request, version_id, "evaluation", EvaluationRequestSerializer, start)


def start_lora_view(admin_site, request, version_id):
    def start(version, form, data):
        lora_settings = dict(data)
        lora_settings.pop("dataset")
        job = job_services.start_lora_update(base=version, dataset=form.cleaned_data["dataset"],
                                             lora_settings=lora_settings, actor=request.user)
        return _job_page(job.pk), f"LoRA update of v{version.number} queued as job {job.pk}."

    return _start_from_form(admin_site, request, version_id, "lora", LoraRequestSerializer, start)


def start_calibrated_quantize_view(admin_site, request, version_id):
    def start(version, form, data):
        settings = dict(data)
        settings.pop("calibration_dataset")
        job = job_services.start_calibrated_quantization(
            version=version, calibration_dataset=form.cleaned_data["calibration_dataset"], settings=settings,
            actor=request.user)
        return _job_page(job.pk), (f"{settings['method'].upper()} quantization of v{version.number} queued as "
                                   f"job {job.pk}.")

    return _start_from_form(admin_site, request, version_id, "calibrated_quantize",
                            CalibratedQuantizeRequestSerializer, start)


def start_quantization_sweep_view(admin_site, request, version_id):
    def start(version, form, data):
        sweep = sweep_services.request_quantization_sweep(
            source=version, candidates=data["candidates"], dataset=form.cleaned_data["dataset"],
            alias=data["alias"], max_tokens=data["max_tokens"], top_k=data["top_k"], actor=request.user)
        return (reverse("admin:workers_quantizationsweep_change", args=[sweep.pk]),
                f"Quantization sweep {sweep.pk} of v{version.number} ({len(data['candidates'])} candidates) queued "
                f"as job {sweep.job_id}.")

    return _start_from_form(admin_site, request, version_id, "quantization_sweep", QuantizationSweepRequestSerializer,
                            start, fields={"candidates": "methods"})


def open_change_request_view(admin_site, request, version_id):
    def start(version, form, data):
        change_request = governance_services.open_change_request(
            model=version.model, alias=data["alias"], version_number=data["version"],
            justification=data["justification"], dataset_id=data.get("dataset"),
            eval_dataset_id=data.get("eval_dataset"), actor=request.user)
        return (reverse("admin:governance_changerequest_change", args=[change_request.pk]),
                f"Change request #{change_request.pk} opened: {version.model.name}@{change_request.alias} → "
                f"v{version.number} ({change_request.status}).")

    return _start_from_form(admin_site, request, version_id, "change_request", ChangeRequestOpenSerializer, start)


def merge_view(admin_site, request, version_id):
    """Fold a LoRA version into its full-precision base (a merge job); a refusal comes back as a message."""
    version, back = _version_or_back(request, version_id)
    if back:
        return back
    try:
        job = start_merge(adapter=version, actor=request.user)
    except DomainError as error:
        messages.error(request, f"Not merged: {error.message}")
        return HttpResponseRedirect(reverse("admin:registry_modelversion_change", args=[version.pk]))
    messages.success(request, f"Merge of v{version.number} into its base queued as job {job.pk}.")
    return HttpResponseRedirect(reverse("admin:workers_job_change", args=[job.pk]))
