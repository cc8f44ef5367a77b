"""Analyses in the admin: a list of how far each candidate moved from its reference, and a read-only page with
the statistics, the full KL and Δp percentile tables, every measured layer (sortable) and the charts the worker
stored."""
import re

from django.contrib import admin
from django.urls import reverse
from django.utils.html import format_html, format_html_join

from console.measurements import significant, with_uncertainty
from foundation.admin_access import RoleAccessMixin
from reports.templatetags.report_format import num
from workers.models import Analysis

# (label, key path in Analysis.result[, key path of its standard error]); the statistics an approver reads first.
STATISTICS = [
    ("tokens scored", ("tokens",)),
    ("KL mean (nats)", ("kl", "mean"), ("kl", "mean_uncertainty")),
    ("KL p99", ("kl", "p99")),
    ("KL max", ("kl", "max")),
    ("same top-1 token", ("top1_agreement",), ("top1_agreement_uncertainty",)),
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


# The percentile sketch knows each percentile to within 0.5 % relative error: 3 significant digits.
PERCENTILE_DIGITS = 3
# (label, key in result["kl"] and result["delta_p"]), in rank order.
PERCENTILE_ROWS = [
    ("minimum", "min"), ("0.1st percentile", "p0_1"), ("1st percentile", "p1"), ("5th percentile", "p5"),
    ("10th percentile", "p10"), ("median", "median"), ("90th percentile", "p90"), ("95th percentile", "p95"),
    ("99th percentile", "p99"), ("99.9th percentile", "p99_9"), ("maximum", "max"),
]
# ?sort= values of the per-layer table -> (key in a layer, label of its column)
LAYER_SORTS = {
    "name": ("name", "Module"),
    "error": ("relative_error", "Relative error"),
    "propagated": ("relative_error_propagated", "Propagated"),
    "weight": ("weight_relative_error", "Weight relative error"),
}
DEFAULT_LAYER_SORT = "error"


def statistics_rows(result: dict | None) -> list[tuple[str, str]]:
    """(label, value) for each statistic the analysis measured: ± its standard error where it has one, rounded to
    what that error supports; otherwise 4 significant digits."""
    rows = []
    for label, keys, *error_keys in STATISTICS:
        value = _lookup(result, keys)
        if value is None:
            continue
        stderr = _lookup(result, error_keys[0]) if error_keys else None
        rows.append((label, with_uncertainty(value, stderr) if stderr is not None else num(value)))
    return rows


def percentile_rows(result: dict | None) -> list[dict]:
    """The KL and Δp distributions side by side: mean ± uncertainty, then every percentile the sketch kept."""
    kl, delta_p = (result or {}).get("kl") or {}, (result or {}).get("delta_p") or {}
    rows = [{"label": "mean", "kl": with_uncertainty(kl.get("mean"), kl.get("mean_uncertainty")),
             "delta_p": with_uncertainty(delta_p.get("mean"), delta_p.get("mean_uncertainty"))}]
    rows += [{"label": label, "kl": significant(kl.get(key), PERCENTILE_DIGITS),
              "delta_p": significant(delta_p.get(key), PERCENTILE_DIGITS)}
             for label, key in PERCENTILE_ROWS if key in kl or key in delta_p]
    return rows if kl or delta_p else []


def layer_rows(result: dict | None, *, sort: str = DEFAULT_LAYER_SORT, descending: bool = True) -> list[dict]:
    """Every measured module, sorted by a LAYER_SORTS column (missing values last), formatted for the table."""
    key = LAYER_SORTS.get(sort, LAYER_SORTS[DEFAULT_LAYER_SORT])[0]
    layers = list((result or {}).get("layers") or [])
    present = [layer for layer in layers if layer.get(key) is not None]
    missing = [layer for layer in layers if layer.get(key) is None]
    present.sort(key=lambda layer: _natural(layer[key]) if key == "name" else float(layer[key]), reverse=descending)
    return [{"name": layer.get("name", "?"), "relative_error": significant(layer.get("relative_error")),
             "relative_error_propagated": significant(layer.get("relative_error_propagated")),
             "weight_relative_error": significant(layer.get("weight_relative_error"))} for layer in present + missing]


def _natural(name: str) -> list:
    """'model.layers.10.mlp' after 'model.layers.9.mlp': numbers compared as numbers."""
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", str(name))]


def layer_columns(sort: str, descending: bool) -> list[dict]:
    """The per-layer table's headers: each a link that sorts by it (again: the other direction)."""
    columns = []
    for name, (_, label) in LAYER_SORTS.items():
        current = name == sort
        # A first click sorts errors largest first and names A to Z; a second click reverses.
        first_descending = name != "name"
        next_descending = (not descending) if current else first_descending
        columns.append({"label": label, "current": current, "descending": descending if current else None,
                        "url": f"?sort={name}&order={'desc' if next_descending else 'asc'}#analysis-layers"})
    return columns


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
        sort = request.GET.get("sort") if request.GET.get("sort") in LAYER_SORTS else DEFAULT_LAYER_SORT
        descending = request.GET.get("order", "asc" if sort == "name" else "desc") != "asc"
        if analysis:
            context.update({
                "statistics": statistics_rows(analysis.result),
                "percentiles": percentile_rows(analysis.result),
                "layers": layer_rows(analysis.result, sort=sort, descending=descending),
                "layer_columns": layer_columns(sort, descending),
                # The API answers these with a 302 to a presigned storage URL; the browser's admin session
                # authenticates the API request, so an <img> needs no token.
                "plots": [{"title": PLOT_TITLES.get(plot["name"], plot["name"].replace("_", " ")),
                           "url": f"/api/v1/analyses/{analysis.pk}/plots/{plot['name']}"}
                          for plot in analysis.plots],
            })
        return super().change_view(request, object_id, form_url, {**context, **(extra_context or {})})
