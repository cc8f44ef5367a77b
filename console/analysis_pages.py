"""Analyses in the admin: a list of how far each candidate moved from its reference, and a read-only page with
the statistics, the worst layers and the charts the worker stored."""
from django.contrib import admin
from django.urls import reverse
from django.utils.html import format_html, format_html_join

from foundation.admin_access import RoleAccessMixin
from reports.templatetags.report_format import num
from workers.models import Analysis

TOP_LAYERS = 10  # the full per-layer table is in the API document and the report's appendix

# (label, key path in Analysis.result); the statistics an approver reads first, in that order.
STATISTICS = [
    ("tokens scored", ("tokens",)),
    ("KL mean (nats)", ("kl", "mean")),
    ("KL mean uncertainty", ("kl", "mean_uncertainty")),
    ("KL median", ("kl", "median")),
    ("KL p95", ("kl", "p95")),
    ("KL p99", ("kl", "p99")),
    ("KL p99.9", ("kl", "p99_9")),
    ("KL max", ("kl", "max")),
    ("same top-1 token", ("top1_agreement",)),
    ("same top-1 uncertainty", ("top1_agreement_uncertainty",)),
    ("top-k overlap", ("topk_overlap",)),
    ("RMS Δp", ("rms_delta_p",)),
    ("Δp p99", ("delta_p", "p99")),
    ("perplexity, reference", ("ppl_reference",)),
    ("perplexity, candidate", ("ppl_candidate",)),
    ("perplexity ratio", ("ppl_ratio",)),
    ("NLL correlation", ("nll_correlation",)),
    ("flip rate (multiple choice)", ("flips", "rate")),
    ("accuracy, reference", ("flips", "accuracy_reference")),
    ("accuracy, candidate", ("flips", "accuracy_candidate")),
    ("seconds", ("seconds",)),
]
PLOT_TITLES = {
    "kl_distribution": "Per-token KL divergence",
    "delta_p_distribution": "Per-token probability change",
    "layer_error": "Per-module relative error",
    "weight_error_heatmap": "Weight relative error",
}


def _lookup(result: dict | None, keys: tuple[str, ...]):
    value = result or {}
    for key in keys:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value


def statistics_rows(result: dict | None) -> list[tuple[str, str]]:
    """(label, value with 4 significant digits) for each statistic the analysis measured."""
    rows = []
    for label, keys in STATISTICS:
        value = _lookup(result, keys)
        if value is not None:
            rows.append((label, num(value)))
    return rows


def worst_layers(result: dict | None, top_n: int = TOP_LAYERS) -> list[dict]:
    """The `top_n` modules with the largest relative output error, formatted for the table."""
    layers = [layer for layer in (result or {}).get("layers") or [] if layer.get("relative_error") is not None]
    layers.sort(key=lambda layer: -float(layer["relative_error"]))
    return [{"name": layer.get("name", "?"), "relative_error": num(layer.get("relative_error")),
             "relative_error_propagated": num(layer.get("relative_error_propagated")),
             "weight_relative_error": num(layer.get("weight_relative_error"))} for layer in layers[:top_n]]


def _version_link(version):
    return format_html('<a href="{}" style="white-space:nowrap">{} v{}</a>',
                       reverse("admin:registry_modelversion_change", args=[version.pk]), version.model.name,
                       version.number)


@admin.register(Analysis)
class AnalysisAdmin(RoleAccessMixin, admin.ModelAdmin):
    change_form_template = "admin/workers/analysis/change_form.html"
    list_display = ["id", "candidate_link", "reference_link", "dataset_name", "status", "kl_mean", "same_top1",
                    "ppl_ratio", "created_at"]
    list_select_related = ["candidate__model", "reference__model", "dataset", "job"]
    # No filter sidebar: at 1280 px it pushes the perplexity ratio and creation time out of view.
    search_fields = ["candidate__model__name"]
    readonly_fields = ["candidate_link", "reference_link", "dataset", "status", "job_link", "change_request_links",
                       "params", "created_by", "created_at"]
    fields = readonly_fields

    def has_add_permission(self, request):
        return False  # analyses start from a version's page or the API

    @admin.display(description="Candidate", ordering="candidate__model__name")
    def candidate_link(self, obj):
        return _version_link(obj.candidate)

    @admin.display(description="Reference")
    def reference_link(self, obj):
        return _version_link(obj.reference)

    @admin.display(description="Dataset", ordering="dataset__name")
    def dataset_name(self, obj):
        return obj.dataset.name

    @admin.display(description="Status", ordering="job__status")
    def status(self, obj):
        return obj.job.status

    @admin.display(description="Job")
    def job_link(self, obj):
        return format_html('<a href="{}">job {}</a>', reverse("admin:workers_job_change", args=[obj.job_id]),
                           obj.job_id)

    @admin.display(description="Used by")
    def change_request_links(self, obj):
        links = [format_html('<a href="{}">change request #{}</a> ({}@{}, {})',
                             reverse("admin:governance_changerequest_change", args=[request.pk]), request.pk,
                             obj.candidate.model.name, request.alias, request.status)
                 for request in obj.change_requests.order_by("-pk")]
        return format_html_join(", ", "{}", ((link,) for link in links)) if links else "no change request"

    @admin.display(description="KL mean")
    def kl_mean(self, obj):
        return num(_lookup(obj.result, ("kl", "mean")))

    @admin.display(description="Same top-1")
    def same_top1(self, obj):
        return num(_lookup(obj.result, ("top1_agreement",)))

    @admin.display(description="PPL ratio")
    def ppl_ratio(self, obj):
        return num(_lookup(obj.result, ("ppl_ratio",)))

    def change_view(self, request, object_id, form_url="", extra_context=None):
        analysis = (Analysis.objects.select_related("job", "candidate__model", "reference__model", "dataset")
                    .filter(pk=object_id).first())
        context = {"analysis": analysis}
        if analysis:
            context.update({
                "statistics": statistics_rows(analysis.result),
                "worst_layers": worst_layers(analysis.result),
                "layer_count": len((analysis.result or {}).get("layers") or []),
                # The API answers these with a 302 to a presigned storage URL; the browser's admin session
                # authenticates the API request, so an <img> needs no token.
                "plots": [{"title": PLOT_TITLES.get(plot["name"], plot["name"].replace("_", " ")),
                           "url": f"/api/v1/analyses/{analysis.pk}/plots/{plot['name']}"}
                          for plot in analysis.plots],
            })
        return super().change_view(request, object_id, form_url, {**context, **(extra_context or {})})
