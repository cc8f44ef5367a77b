"""Task evaluations and distillation experiments in the admin.

An evaluation's page reads its metrics with their standard errors, the reference's and the deltas in points, the
per-class table and the confusion matrix. A distillation's page shows its table of trained students with the best
candidate marked, the F1-vs-size figure, and a button that opens a change request for the best candidate through
governance.services (the API's door, so the role and team checks apply).
"""
from django.contrib import admin
from django.shortcuts import get_object_or_404
from django.urls import path, reverse
from django.utils.html import format_html, format_html_join

from console.candidate_change_requests import open_candidate_change_request
from console.forms import BestCandidateChangeRequestForm
from console.measurements import with_uncertainty
from foundation.admin_access import RoleAccessMixin
from foundation.roles import ML_ENGINEER, has_role
from registry.models import ModelVersion
from reports.templatetags.report_format import num
from workers import charts, task_charts
from workers.models import Distillation, Evaluation

METRIC_LABELS = {
    "acc": "accuracy",
    "acc_norm": "accuracy, length-normalised",
    "accuracy": "accuracy",
    "macro_f1": "macro-F1",
    "exact_match": "exact match",
    "token_f1": "token F1",
}
# The metric a list shows for each task type (the one the policy gates read first).
HEADLINE_METRIC = {"multiple_choice": "acc", "classification": "accuracy", "generation": "exact_match"}


def metric_rows(result: dict | None) -> list[dict]:
    """One row per metric: the candidate's value ± stderr, the reference's, and the delta in points."""
    result = result or {}
    reference = (result.get("reference") or {}).get("metrics") or {}
    deltas = result.get("deltas") or {}
    rows = []
    for name, metric in (result.get("metrics") or {}).items():
        delta = deltas.get(name) or {}
        reference_metric = reference.get(name) or {}
        rows.append({
            "name": name, "label": METRIC_LABELS.get(name, name.replace("_", " ")),
            "value": with_uncertainty(metric.get("value"), metric.get("stderr")),
            "reference": with_uncertainty(reference_metric.get("value"), reference_metric.get("stderr"))
            if reference_metric else "—",
            "delta": with_uncertainty(delta.get("delta"), delta.get("stderr"), unit=" points", signed=True)
            if delta else "—",
            "relative": with_uncertainty(delta.get("f1_relative"), delta.get("f1_relative_stderr"))
            if "f1_relative" in delta else "",
            "worse": bool(delta.get("delta") is not None and delta["delta"] < 0),
        })
    return rows


def per_class_rows(result: dict | None) -> list[dict]:
    """Precision, recall and F1 ± stderr of each label, with its support, candidate beside reference F1."""
    result = result or {}
    reference = (result.get("reference") or {}).get("per_class") or {}
    rows = []
    for label, scores in (result.get("per_class") or {}).items():
        row = {"label": label, "support": num(scores.get("support"))}
        for name in ("precision", "recall", "f1"):
            score = scores.get(name) or {}
            row[name] = with_uncertainty(score.get("value"), score.get("stderr"))
        reference_f1 = (reference.get(label) or {}).get("f1") or {}
        row["reference_f1"] = with_uncertainty(reference_f1.get("value"), reference_f1.get("stderr")) \
            if reference_f1 else "—"
        rows.append(row)
    return rows




def confusion_chart(evaluation: Evaluation) -> str | None:
    """The confusion matrix (beside the reference's when it has one) as an inline PNG, or None."""
    result = evaluation.result or {}
    confusion = result.get("confusion") or {}
    if not confusion.get("labels") or not confusion.get("matrix"):
        return None
    reference = ((result.get("reference") or {}).get("confusion") or {}).get("matrix")
    reference_title = f"reference v{evaluation.reference.number}" if evaluation.reference_id else "reference"
    png = task_charts.confusion_matrices(confusion["labels"], confusion["matrix"], reference,
                                            candidate_title=f"candidate v{evaluation.candidate.number}",
                                            reference_title=reference_title)
    return charts.as_data_uri(png)


def _version_link(version):
    if version is None:
        return "—"
    return format_html('<a href="{}" style="white-space:nowrap">{} v{}</a>',
                       reverse("admin:registry_modelversion_change", args=[version.pk]), version.model.name,
                       version.number)


def _job_link(job_id):
    return format_html('<a href="{}">job {}</a>', reverse("admin:workers_job_change", args=[job_id]), job_id)


@admin.register(Evaluation)
class EvaluationAdmin(RoleAccessMixin, admin.ModelAdmin):
    change_form_template = "admin/workers/evaluation/change_form.html"
    list_display = ["id", "versions", "dataset_name", "task", "status", "headline", "headline_delta", "created_at"]
    list_select_related = ["candidate__model", "reference__model", "dataset", "job"]
    # No filter sidebar: at 1280 px it pushes the metric and its delta out of view (as on the analyses' list).
    search_fields = ["candidate__model__name"]
    readonly_fields = ["candidate_link", "reference_link", "dataset", "task", "limit_text", "status", "job_link",
                       "change_request_links", "harness", "samples", "seconds", "created_by", "created_at"]
    fields = readonly_fields

    def has_add_permission(self, request):
        return False  # evaluations start from a version's page or the API

    @admin.display(description="Candidate", ordering="candidate__model__name")
    def candidate_link(self, obj):
        return _version_link(obj.candidate)

    @admin.display(description="Reference")
    def reference_link(self, obj):
        return _version_link(obj.reference) if obj.reference_id else "none"

    @admin.display(description="Candidate vs reference", ordering="candidate__model__name")
    def versions(self, obj):
        if not obj.reference_id:
            return _version_link(obj.candidate)
        return format_html('{} <span style="white-space:nowrap">vs <a href="{}">v{}</a></span>',
                           _version_link(obj.candidate),
                           reverse("admin:registry_modelversion_change", args=[obj.reference_id]),
                           obj.reference.number)

    @admin.display(description="Dataset", ordering="dataset__name")
    def dataset_name(self, obj):
        return obj.dataset.name

    @admin.display(description="Task type", ordering="task_type")
    def task(self, obj):
        return obj.task_type.replace("_", " ")

    @admin.display(description="Records")
    def limit_text(self, obj):
        return f"the first {obj.limit:,}" if obj.limit else "all"

    @admin.display(description="Status", ordering="job__status")
    def status(self, obj):
        return obj.job.status

    @admin.display(description="Job")
    def job_link(self, obj):
        return _job_link(obj.job_id)

    @admin.display(description="Used by")
    def change_request_links(self, obj):
        requests = obj.change_requests.order_by("-pk")
        links = [format_html('<a href="{}">change request #{}</a> ({}@{}, {})',
                             reverse("admin:governance_changerequest_change", args=[request.pk]), request.pk,
                             obj.candidate.model.name, request.alias, request.status)
                 for request in requests]
        return format_html_join(", ", "{}", ((link,) for link in links)) if links else "no change request"

    @admin.display(description="Harness")
    def harness(self, obj):
        harness = (obj.result or {}).get("harness") or {}
        return f"{harness.get('name', '—')} {harness.get('version', '')}".strip() if harness else "—"

    @admin.display(description="Records evaluated")
    def samples(self, obj):
        return num((obj.result or {}).get("samples"))

    @admin.display(description="Wall time")
    def seconds(self, obj):
        value = (obj.result or {}).get("seconds")
        return "—" if value is None else f"{float(value):.3g} s"

    @admin.display(description="Result")
    def headline(self, obj):
        name = HEADLINE_METRIC.get(obj.task_type)
        metric = ((obj.result or {}).get("metrics") or {}).get(name)
        if not metric:
            return "—"
        return format_html('{}<br><span style="white-space:nowrap">{}</span>', METRIC_LABELS.get(name, name),
                           with_uncertainty(metric.get("value"), metric.get("stderr")))

    @admin.display(description="Δ vs reference")
    def headline_delta(self, obj):
        delta = ((obj.result or {}).get("deltas") or {}).get(HEADLINE_METRIC.get(obj.task_type))
        if not delta:
            return "—"
        return format_html('<span style="white-space:nowrap">{}</span>',
                           with_uncertainty(delta.get("delta"), delta.get("stderr"), unit=" pts", signed=True))

    def change_view(self, request, object_id, form_url="", extra_context=None):
        evaluation = (Evaluation.objects.select_related("job", "candidate__model", "reference__model", "dataset")
                      .filter(pk=object_id).first())
        context = {"evaluation": evaluation}
        if evaluation:
            context.update({
                "metrics": metric_rows(evaluation.result),
                "per_class": per_class_rows(evaluation.result),
                "confusion_chart": confusion_chart(evaluation),
                "has_reference": bool((evaluation.result or {}).get("reference")),
                "task_label": evaluation.task_type.replace("_", " "),
            })
        return super().change_view(request, object_id, form_url, {**context, **(extra_context or {})})


# --- distillations ----------------------------------------------------------------------------------------------

def _student_versions(distillation: Distillation) -> dict:
    """(model name, number) -> ModelVersion of every version its table names (students and trained LoRAs)."""
    names = {row["student"]["model"] for row in distillation.rows}
    return {(v.model.name, v.number): v for v in ModelVersion.objects.select_related("model")
            .filter(model__name__in=names)}


def _is_best(row: dict, best: dict | None) -> bool:
    return bool(best) and row["student"] == best["student"] and row["size"] == best["size"]


def distillation_rows(distillation: Distillation) -> list[dict]:
    """The table, smallest subset first, with links to the student and the LoRA version it became."""
    versions = _student_versions(distillation)
    rows = []
    for row in sorted(distillation.rows, key=lambda r: (r["size"], r["student"]["model"], r["student"]["version"])):
        model = row["student"]["model"]
        student, trained = versions.get((model, row["student"]["version"])), versions.get((model, row["version"]))
        latency = row.get("latency_ms_per_sample")
        rows.append({
            "size": num(row["size"]), "student": f"{model} v{row['student']['version']}",
            "student_url": reverse("admin:registry_modelversion_change", args=[student.pk]) if student else None,
            "version": f"{model} v{row['version']}",
            "version_url": reverse("admin:registry_modelversion_change", args=[trained.pk]) if trained else None,
            "f1": with_uncertainty(row.get("f1"), row.get("f1_stderr")),
            "f1_relative": num(row.get("f1_relative_to_teacher"), 3),
            "accuracy": num(row.get("accuracy"), 3),
            "latency": "—" if latency is None else f"{float(latency):.3g} ms",
            "params": num(row.get("params")),
            "best": _is_best(row, distillation.best),
        })
    return rows


def f1_chart(distillation: Distillation) -> str:
    png = task_charts.f1_by_size(distillation.rows, f1_relative_min=distillation.params.get("f1_relative_min"))
    return charts.as_data_uri(png)


def best_candidate_version(distillation: Distillation) -> ModelVersion | None:
    best = distillation.best
    if not best:
        return None
    return (ModelVersion.objects.select_related("model")
            .filter(model__name=best["student"]["model"], number=best["version"]).first())


def best_candidate_justification(distillation: Distillation) -> str:
    best, teacher = distillation.best, distillation.teacher
    return (f"Best candidate of distillation {distillation.pk}: a LoRA of {best['student']['model']} "
            f"v{best['student']['version']} trained on {best['size']:,} records reaches "
            f"{best['f1_relative_to_teacher']:.3f} of the F1 of the teacher {teacher.model.name} v{teacher.number} "
            f"(F1 {best['f1']:.3f}, minimum {distillation.params.get('f1_relative_min')}).")


@admin.register(Distillation)
class DistillationAdmin(RoleAccessMixin, admin.ModelAdmin):
    change_form_template = "admin/workers/distillation/change_form.html"
    list_display = ["id", "teacher_link", "student_names", "sizes", "status", "trained", "best_text", "created_at"]
    list_select_related = ["teacher__model", "job", "dataset", "eval_dataset"]
    readonly_fields = ["teacher_link", "student_names", "dataset", "evaluation_set", "sizes", "labelled_by",
                       "minimum", "teacher_scores", "status", "job_link", "created_by", "created_at"]
    fields = readonly_fields

    def has_add_permission(self, request):
        return False  # distillations start from the API (POST /api/v1/distillations)

    @admin.display(description="Teacher")
    def teacher_link(self, obj):
        return _version_link(obj.teacher)

    @admin.display(description="Evaluation dataset")
    def evaluation_set(self, obj):
        return format_html('<a href="{}">{}</a> (labelled, {} records)',
                           reverse("admin:registry_dataset_change", args=[obj.eval_dataset_id]), obj.eval_dataset.name,
                           f"{obj.eval_dataset.records:,}")

    @admin.display(description="Students")
    def student_names(self, obj):
        return ", ".join(f"{ref['model']} v{ref['version']}" for ref in obj.params.get("student_refs", [])) or "—"

    @admin.display(description="Training sizes")
    def sizes(self, obj):
        return ", ".join(f"{size:,}" for size in obj.params.get("sizes", [])) or "—"

    @admin.display(description="Labels from")
    def labelled_by(self, obj):
        return {"dataset": "the dataset's labels", "teacher": "the teacher"}.get(obj.params.get("labelled_by"), "—")

    @admin.display(description="Minimum F1 relative to the teacher")
    def minimum(self, obj):
        return num(obj.params.get("f1_relative_min"))

    @admin.display(description="Teacher's scores")
    def teacher_scores(self, obj):
        result = obj.teacher_result or {}
        if not result:
            return "not measured yet"
        latency = result.get("latency_ms_per_sample")
        return (f"F1 {num(result.get('f1'), 3)}, accuracy {num(result.get('accuracy'), 3)}, "
                f"{'—' if latency is None else f'{float(latency):.3g}'} ms per record, "
                f"{num(result.get('params'))} parameters")

    @admin.display(description="Status", ordering="job__status")
    def status(self, obj):
        return obj.job.status

    @admin.display(description="Trained")
    def trained(self, obj):
        expected = len(obj.params.get("student_refs", [])) * len(obj.params.get("sizes", []))
        return f"{len(obj.rows)} / {expected}"

    @admin.display(description="Best candidate")
    def best_text(self, obj):
        best = obj.best
        if not best:
            return "none yet" if not obj.job.is_finished else "none meets the minimum"
        version = best_candidate_version(obj)
        name = f"{best['student']['model']} v{best['version']}"
        label = format_html('<a href="{}">{}</a>', reverse("admin:registry_modelversion_change", args=[version.pk]),
                            name) if version else name
        return format_html("{} ({} records, {} of the teacher's F1)", label, f"{best['size']:,}",
                           f"{best['f1_relative_to_teacher']:.3f}")

    @admin.display(description="Job")
    def job_link(self, obj):
        return _job_link(obj.job_id)

    def get_urls(self):
        return [path("<int:distillation_id>/change-request/", self.admin_site.admin_view(self.change_request_view),
                     name="workers_distillation_change_request")] + super().get_urls()

    def _context(self, request, distillation):
        best_version = best_candidate_version(distillation)
        return {
            "distillation": distillation,
            "rows": distillation_rows(distillation),
            "f1_chart": f1_chart(distillation),
            "best_version": best_version,
            "can_open_request": bool(best_version and best_version.is_sealed and has_role(request.user, ML_ENGINEER)),
            "change_request_form": BestCandidateChangeRequestForm(
                initial={"justification": best_candidate_justification(distillation)} if distillation.best else None),
        }

    def change_view(self, request, object_id, form_url="", extra_context=None):
        distillation = (Distillation.objects.select_related("job", "teacher__model", "dataset", "eval_dataset")
                        .filter(pk=object_id).first())
        context = self._context(request, distillation) if distillation else {}
        return super().change_view(request, object_id, form_url, {**context, **(extra_context or {})})

    def change_request_view(self, request, distillation_id):
        """Open a change request for the best candidate against the alias named in the form."""
        distillation = get_object_or_404(Distillation.objects.select_related("job", "teacher__model"),
                                         pk=distillation_id)
        return open_candidate_change_request(
            request, experiment=distillation, candidate_version=best_candidate_version,
            default_justification=best_candidate_justification, form_class=BestCandidateChangeRequestForm,
            page_url=reverse("admin:workers_distillation_change", args=[distillation_id]),
            no_candidate="This distillation has no best candidate to deploy.")
