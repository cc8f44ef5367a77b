"""Quantization sweeps in the admin: the table of candidates (size, distance from the source, each gate's verdict),
the size-vs-KL figure, links to every version, analysis and job, and a button that opens a change request for the
recommended version through governance.services (the API's door, so the role and team checks apply)."""
from django.contrib import admin
from django.shortcuts import get_object_or_404
from django.urls import path, reverse
from django.utils.html import format_html

from console.candidate_change_requests import open_candidate_change_request
from console.forms import RecommendedCandidateChangeRequestForm
from foundation.admin_access import RoleAccessMixin
from foundation.roles import ML_ENGINEER, has_role
from registry.models import ModelVersion
from reports.templatetags.report_format import num
from workers import charts, sweep_charts
from workers.models import QuantizationSweep
from workers.sweep_services import describe, passes_every_gate

GATE_LABELS = {"kl_mean": "KL mean", "kl_p99": "KL p99", "same_top1": "same top-1", "ppl_ratio": "PPL ratio",
               "flip_rate": "flip rate"}


def _versions(sweep: QuantizationSweep) -> dict:
    numbers = {row["version"] for row in sweep.rows if row.get("version")} | {sweep.recommended}
    return {v.number: v for v in ModelVersion.objects.select_related("model")
            .filter(model_id=sweep.source.model_id, number__in=numbers - {None})}


def _gate_cells(row: dict, gate_names: list[str]) -> list[dict]:
    by_name = {gate["name"]: gate for gate in row.get("gates") or []}
    cells = []
    for name in gate_names:
        gate = by_name.get(name)
        if gate is None:
            cells.append({"text": "—", "verdict": None, "title": "not gated"})
        else:
            bound = "≤" if name in ("kl_mean", "kl_p99", "ppl_ratio", "flip_rate") else "≥"
            cells.append({"text": "pass" if gate["passed"] else "fail", "verdict": gate["passed"],
                          "title": f"{num(gate['value'])} (must be {bound} {num(gate['threshold'])})"
                                   + (f"; {gate['note']}" if gate.get("note") else "")})
    return cells


def sweep_rows(sweep: QuantizationSweep) -> tuple[list[str], list[dict]]:
    """(gate names, rows): the table in candidate order, each with links and per-gate verdicts."""
    versions = _versions(sweep)
    gate_names = [name for name in GATE_LABELS
                  if any(gate["name"] == name for row in sweep.rows for gate in row.get("gates") or [])]
    rows = []
    for row in sweep.rows:
        version = versions.get(row.get("version"))
        rows.append({
            "index": row["index"], "settings": describe(row["settings"]),
            "version": f"v{row['version']}" if row.get("version") else "—",
            "version_url": reverse("admin:registry_modelversion_change", args=[version.pk]) if version else None,
            "size_ratio": num(row.get("size_ratio"), 3), "kl_mean": num(row.get("kl_mean"), 3),
            "kl_p99": num(row.get("kl_p99"), 3), "same_top1": num(row.get("same_top1"), 3),
            "ppl_ratio": num(row.get("ppl_ratio"), 4), "flip_rate": num(row.get("flip_rate"), 3),
            "gates": _gate_cells(row, gate_names), "passed": passes_every_gate(row), "error": row.get("error"),
            "analysis_url": (reverse("admin:workers_analysis_change", args=[row["analysis"]])
                             if row.get("analysis") else None),
            "job_url": reverse("admin:workers_job_change", args=[row["quantize_job"]]) if row.get("quantize_job")
            else None,
            "recommended": bool(row.get("version")) and row.get("version") == sweep.recommended,
        })
    return [GATE_LABELS[name] for name in gate_names], rows


def size_vs_kl_chart(sweep: QuantizationSweep) -> str:
    points = [{"label": f"{describe(row['settings'])} (v{row['version']})", "size_ratio": row["size_ratio"],
               "kl_mean": row["kl_mean"], "passed": passes_every_gate(row),
               "recommended": row["version"] == sweep.recommended}
              for row in sweep.rows if row.get("kl_mean") is not None and row.get("size_ratio") is not None]
    limit = ((sweep.policy or {}).get("thresholds") or {}).get("kl_mean_max")
    return charts.as_data_uri(sweep_charts.size_vs_kl(points, kl_mean_max=limit))


def recommended_version(sweep: QuantizationSweep) -> ModelVersion | None:
    if sweep.recommended is None:
        return None
    return ModelVersion.objects.select_related("model").filter(model_id=sweep.source.model_id,
                                                               number=sweep.recommended).first()


def recommended_justification(sweep: QuantizationSweep) -> str:
    row = next(row for row in sweep.rows if row.get("version") == sweep.recommended)
    return (f"Recommended by quantization sweep {sweep.pk} of v{sweep.source.number}: {describe(row['settings'])} "
            f"is the smallest of {len(sweep.rows)} candidates passing every gate "
            f"({(sweep.policy or {}).get('source', 'policy')}): size {row['size_ratio']:.3f} of the source, "
            f"mean KL {row['kl_mean']:.4g}, same top-1 {row['same_top1']:.3f}, PPL ratio {row['ppl_ratio']:.4f}.")


@admin.register(QuantizationSweep)
class QuantizationSweepAdmin(RoleAccessMixin, admin.ModelAdmin):
    change_form_template = "admin/workers/quantizationsweep/change_form.html"
    list_display = ["id", "source_link", "candidates", "gated_by", "status", "measured", "recommended_text",
                    "created_at"]
    list_select_related = ["source__model", "job", "dataset"]
    readonly_fields = ["source_link", "dataset_link", "candidates", "gated_by", "thresholds", "status", "job_link",
                       "created_by", "created_at"]
    fields = readonly_fields

    def has_add_permission(self, request):
        return False  # sweeps start from the version page or the API (POST .../quantization-sweeps)

    @admin.display(description="Source")
    def source_link(self, obj):
        return format_html('<a href="{}" style="white-space:nowrap">{} v{}</a>',
                           reverse("admin:registry_modelversion_change", args=[obj.source_id]),
                           obj.source.model.name, obj.source.number)

    @admin.display(description="Evaluation dataset")
    def dataset_link(self, obj):
        return format_html('<a href="{}">{}</a>', reverse("admin:registry_dataset_change", args=[obj.dataset_id]),
                           obj.dataset.name)

    @admin.display(description="Candidates")
    def candidates(self, obj):
        return ", ".join(describe(settings) for settings in obj.params.get("candidates", []))

    @admin.display(description="Gated by")
    def gated_by(self, obj):
        if obj.policy:
            return obj.policy["source"]
        return f"policy of {obj.source.model.name}@{obj.alias}" if obj.alias else "default gates"

    @admin.display(description="Thresholds")
    def thresholds(self, obj):
        policy = obj.policy or {}
        if not policy:
            return "taken when the first candidate is measured"
        text = ", ".join(f"{field} {num(value)}" for field, value in policy["thresholds"].items()
                         if value is not None) or "none"
        if policy.get("deferred"):
            text += f" (task gates {', '.join(policy['deferred'])} are measured by the change request)"
        return text

    @admin.display(description="Status", ordering="job__status")
    def status(self, obj):
        return obj.job.status

    @admin.display(description="Measured")
    def measured(self, obj):
        return f"{len(obj.rows)} / {len(obj.params.get('candidates', []))}"

    @admin.display(description="Recommended")
    def recommended_text(self, obj):
        if obj.recommended is None:
            return "none passes every gate" if obj.job.is_finished else "not yet"
        return f"v{obj.recommended}"

    @admin.display(description="Job")
    def job_link(self, obj):
        return format_html('<a href="{}">job {}</a>', reverse("admin:workers_job_change", args=[obj.job_id]),
                           obj.job_id)

    def get_urls(self):
        return [path("<int:sweep_id>/change-request/", self.admin_site.admin_view(self.change_request_view),
                     name="workers_quantizationsweep_change_request")] + super().get_urls()

    def change_view(self, request, object_id, form_url="", extra_context=None):
        sweep = (QuantizationSweep.objects.select_related("job", "source__model", "dataset")
                 .filter(pk=object_id).first())
        context = {}
        if sweep:
            gate_labels, rows = sweep_rows(sweep)
            version = recommended_version(sweep)
            context = {
                "sweep": sweep, "rows": rows, "gate_labels": gate_labels, "chart": size_vs_kl_chart(sweep),
                "recommended_version": version,
                "can_open_request": bool(version and has_role(request.user, ML_ENGINEER)),
                "change_request_form": RecommendedCandidateChangeRequestForm(initial={
                    "alias": sweep.alias or "production",
                    "justification": recommended_justification(sweep) if version else ""}),
            }
        return super().change_view(request, object_id, form_url, {**context, **(extra_context or {})})

    def change_request_view(self, request, sweep_id):
        """Open a change request for the recommended version against the alias named in the form, its gates'
        analysis on the sweep's evaluation dataset."""
        sweep = get_object_or_404(QuantizationSweep.objects.select_related("job", "source__model"), pk=sweep_id)
        return open_candidate_change_request(
            request, experiment=sweep, candidate_version=recommended_version,
            default_justification=recommended_justification, form_class=RecommendedCandidateChangeRequestForm,
            page_url=reverse("admin:workers_quantizationsweep_change", args=[sweep_id]),
            no_candidate="This sweep recommends no version to deploy.", dataset_id=sweep.dataset_id)
