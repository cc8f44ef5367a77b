"""Job endpoints: start work on a version, follow it, cancel it; analyses and their charts."""
from django.http import HttpResponseRedirect
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.response import Response
from rest_framework.views import APIView

from foundation.pagination import filter_parameter, list_parameters, paginated_response
from foundation.permissions import EngineerWrites
from registry import selectors
from registry.api import DatasetSerializer
from workers import services
from workers.models import Job
from workers.pipelines import pii
from workers.pipelines.specs import COMPUTE_DTYPES, METHODS
from workers.selectors import analysis_plot_url, get_analysis, get_job, jobs


class JobSerializer(serializers.ModelSerializer):
    source = serializers.SerializerMethodField()
    created_by = serializers.CharField(source="created_by.username")

    class Meta:
        model = Job
        fields = ["id", "kind", "status", "progress", "message", "result", "error", "params", "source",
                  "attempts", "worker", "created_by", "created_at", "started_at", "finished_at"]

    def get_source(self, job) -> dict | None:
        version = job.source_version
        return {"model": version.model.name, "version": version.number} if version else None


class QuantizeRequestSerializer(serializers.Serializer):
    method = serializers.ChoiceField(choices=METHODS)
    compute_dtype = serializers.ChoiceField(choices=COMPUTE_DTYPES, default="float32")
    double_quant = serializers.BooleanField(default=False)
    skip_modules = serializers.ListField(child=serializers.CharField(max_length=200), default=lambda: ["lm_head"],
                                        max_length=1000)


class QuantizeView(APIView):
    permission_classes = [EngineerWrites]

    @extend_schema(request=QuantizeRequestSerializer, responses={202: JobSerializer})
    def post(self, request, name, number):
        payload = QuantizeRequestSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        job = services.start_quantization(version=selectors.get_version(name, number), actor=request.user,
                                          **payload.validated_data)
        return Response({"job": job.pk, **JobSerializer(job).data}, status=status.HTTP_202_ACCEPTED)


class JobListView(APIView):
    permission_classes = [EngineerWrites]

    @extend_schema(responses=JobSerializer(many=True), operation_id="jobs_list", parameters=list_parameters(
        filter_parameter("status", "Only jobs in this status: queued, running, succeeded, failed or cancelled."),
        filter_parameter("kind", "Only jobs of this kind: quantize, analysis, lora or report."),
        filter_parameter("model", "Only jobs on versions of this model.")))
    def get(self, request):
        params = request.query_params
        queryset = jobs(status=params.get("status"), kind=params.get("kind"), model_name=params.get("model"))
        return paginated_response(request, queryset, ordering=("-pk",),
                                  serialize=lambda page: JobSerializer(page, many=True).data)


class JobDetailView(APIView):
    permission_classes = [EngineerWrites]

    @extend_schema(responses=JobSerializer)
    def get(self, request, job_id):
        return Response(JobSerializer(get_job(job_id)).data)


class JobCancelView(APIView):
    permission_classes = [EngineerWrites]

    @extend_schema(request=None, responses=JobSerializer)
    def post(self, request, job_id):
        job = services.cancel_job(job=get_job(job_id), actor=request.user)
        return Response(JobSerializer(job).data)


class AnalysisRequestSerializer(serializers.Serializer):
    reference = serializers.IntegerField(required=False, min_value=1, help_text="Version number; default: parent")
    dataset = serializers.IntegerField(min_value=1)
    max_tokens = serializers.IntegerField(default=4096)
    top_k = serializers.IntegerField(default=5)


def analysis_document(analysis) -> dict:
    """The API's analysis shape: identity and status from the job, statistics from the result."""
    job = analysis.job
    document = {
        "id": analysis.pk, "status": job.status, "progress": job.progress, "message": job.message,
        "error": job.error, "job": job.pk,
        "reference": {"model": analysis.reference.model.name, "version": analysis.reference.number},
        "candidate": {"model": analysis.candidate.model.name, "version": analysis.candidate.number},
        "dataset": analysis.dataset_id, "params": analysis.params, "created_at": analysis.created_at,
    }
    result = dict(analysis.result or {})
    result.pop("histograms", None)
    document.update(result)
    document["plots"] = [{"name": plot["name"], "url": f"/api/v1/analyses/{analysis.pk}/plots/{plot['name']}"}
                         for plot in analysis.plots]
    return document


class AnalysisStartView(APIView):
    permission_classes = [EngineerWrites]

    @extend_schema(request=AnalysisRequestSerializer, responses={202: OpenApiTypes.OBJECT})
    def post(self, request, name, number):
        payload = AnalysisRequestSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        data = payload.validated_data
        candidate = selectors.get_version(name, number)
        reference = selectors.get_version(name, data["reference"]) if data.get("reference") else None
        analysis = services.request_analysis(candidate=candidate, reference=reference,
                                           dataset=selectors.get_dataset(data["dataset"]),
                                           max_tokens=data["max_tokens"], top_k=data["top_k"], actor=request.user)
        return Response({"job": analysis.job.pk, "analysis": analysis.pk}, status=status.HTTP_202_ACCEPTED)


class AnalysisDetailView(APIView):
    permission_classes = [EngineerWrites]

    @extend_schema(responses=OpenApiTypes.OBJECT)
    def get(self, request, analysis_id):
        return Response(analysis_document(get_analysis(analysis_id)))


class AnalysisPlotView(APIView):
    permission_classes = [EngineerWrites]

    @extend_schema(responses={302: None})
    def get(self, request, analysis_id, plot):
        return HttpResponseRedirect(analysis_plot_url(get_analysis(analysis_id), plot))


class LoraRequestSerializer(serializers.Serializer):
    dataset = serializers.IntegerField(min_value=1)
    r = serializers.IntegerField(required=False)
    alpha = serializers.FloatField(required=False)
    dropout = serializers.FloatField(required=False)
    target_modules = serializers.ListField(child=serializers.CharField(max_length=200), required=False,
                                           allow_empty=False)
    steps = serializers.IntegerField(required=False)
    epochs = serializers.IntegerField(required=False)
    learning_rate = serializers.FloatField(required=False)
    batch_size = serializers.IntegerField(required=False)
    gradient_accumulation = serializers.IntegerField(required=False)
    max_length = serializers.IntegerField(required=False)
    seed = serializers.IntegerField(required=False)
    eval_fraction = serializers.FloatField(required=False)


class LoraUpdateView(APIView):
    permission_classes = [EngineerWrites]

    @extend_schema(request=LoraRequestSerializer, responses={202: JobSerializer})
    def post(self, request, name, number):
        payload = LoraRequestSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        lora_settings = dict(payload.validated_data)
        dataset = selectors.get_dataset(lora_settings.pop("dataset"))
        job = services.start_lora_update(base=selectors.get_version(name, number), dataset=dataset,
                                         lora_settings=lora_settings, actor=request.user)
        return Response({"job": job.pk, **JobSerializer(job).data}, status=status.HTTP_202_ACCEPTED)


class RedactionRequestSerializer(serializers.Serializer):
    strategy = serializers.ChoiceField(choices=pii.STRATEGIES)
    types = serializers.ListField(child=serializers.CharField(max_length=100), required=False, allow_empty=False,
                                  help_text="Only these PII types (default: every type the scan looks for).")


class DatasetRedactView(APIView):
    """Register a redacted copy of a dataset (scanned again); the original stays as it was."""

    permission_classes = [EngineerWrites]

    @extend_schema(request=RedactionRequestSerializer, responses={201: DatasetSerializer})
    def post(self, request, dataset_id):
        payload = RedactionRequestSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        redacted = services.redact_dataset(dataset=selectors.get_dataset(dataset_id),
                                           strategy=payload.validated_data["strategy"],
                                           types=payload.validated_data.get("types"), actor=request.user)
        return Response(DatasetSerializer(selectors.get_dataset(redacted.pk)).data, status=status.HTTP_201_CREATED)


class JobDetailAliasView(JobDetailView):
    """The same resource with a trailing slash; documented once, under the URL without it."""

    schema = None


class AnalysisDetailAliasView(AnalysisDetailView):
    """The same resource with a trailing slash; documented once, under the URL without it."""

    schema = None
