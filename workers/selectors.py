"""Reads of jobs, analyses and evaluations that the API and the admin share."""
from django.db.models import QuerySet

from foundation import storage
from foundation.errors import NotFound
from workers.models import Analysis, Distillation, Evaluation, Job, QuantizationSweep


def jobs(*, status: str | None = None, kind: str | None = None, model_name: str | None = None) -> QuerySet[Job]:
    queryset = Job.objects.select_related("source_version__model", "created_by")
    if status:
        queryset = queryset.filter(status=status)
    if kind:
        queryset = queryset.filter(kind=kind)
    if model_name:
        queryset = queryset.filter(source_version__model__name=model_name)
    return queryset


def get_job(job_id) -> Job:
    try:
        return Job.objects.select_related("source_version__model", "created_by").get(pk=job_id)
    except Job.DoesNotExist:
        raise NotFound(f"No job with id {job_id}.") from None


def get_analysis(analysis_id) -> Analysis:
    try:
        return Analysis.objects.select_related("job", "reference__model", "candidate__model").get(pk=analysis_id)
    except Analysis.DoesNotExist:
        raise NotFound(f"No analysis with id {analysis_id}.") from None


def get_evaluation(evaluation_id) -> Evaluation:
    try:
        return Evaluation.objects.select_related("job", "reference__model", "candidate__model", "dataset").get(
            pk=evaluation_id)
    except Evaluation.DoesNotExist:
        raise NotFound(f"No evaluation with id {evaluation_id}.") from None


def get_distillation(distillation_id) -> Distillation:
    try:
        return Distillation.objects.select_related("job", "teacher__model", "dataset", "eval_dataset").get(
            pk=distillation_id)
    except Distillation.DoesNotExist:
        raise NotFound(f"No distillation with id {distillation_id}.") from None


def distillations() -> QuerySet[Distillation]:
    return Distillation.objects.select_related("job", "teacher__model", "dataset", "eval_dataset")


def evaluations_of(version) -> QuerySet[Evaluation]:
    """A version's evaluations as the candidate, newest first."""
    return (Evaluation.objects.filter(candidate=version)
            .select_related("job", "reference__model", "candidate__model", "dataset"))


def analysis_plot_url(analysis: Analysis, plot: str) -> str:
    """A short-lived URL that downloads one of an analysis's chart PNGs from object storage."""
    item = next((p for p in analysis.plots if p["name"] == plot), None)
    if item is None:
        raise NotFound(f"Analysis {analysis.pk} has no plot {plot!r}.")
    return storage.presigned_download_url(item["object_key"], filename=f"{plot}.png",
                                          version_id=item.get("version_id", ""))


def quantization_sweeps() -> QuerySet[QuantizationSweep]:
    return QuantizationSweep.objects.select_related("job", "source__model", "dataset")


def get_quantization_sweep(sweep_id) -> QuantizationSweep:
    try:
        return quantization_sweeps().get(pk=sweep_id)
    except QuantizationSweep.DoesNotExist:
        raise NotFound(f"No quantization sweep with id {sweep_id}.") from None
