"""Job endpoints: start work on a version, follow it, cancel it; analyses and their charts; task evaluations."""
from django.http import HttpResponseRedirect
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import PolymorphicProxySerializer, extend_schema
from rest_framework import serializers, status
from rest_framework.response import Response
from rest_framework.views import APIView

from foundation.pagination import ARRAY_OF_OBJECTS, filter_parameter, list_parameters, paginated_response
from foundation.permissions import EngineerWrites
from registry import selectors
from registry.api import DatasetSerializer
from workers import distillation_services, pii_services, services
from workers.models import Job
from workers.pipelines import pii
from workers.pipelines.calibrated.spec import CALIBRATED_METHODS
from workers.pipelines.evaluation.spec import MAX_BATCH_SIZE, MAX_NEW_TOKENS
from workers.pipelines.specs import COMPUTE_DTYPES, METHODS
from workers.selectors import (
    analysis_plot_url,
    distillations,
    evaluations_of,
    get_analysis,
    get_distillation,
    get_evaluation,
    get_job,
    jobs,
)


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


class CalibratedQuantizeRequestSerializer(serializers.Serializer):
    method = serializers.ChoiceField(choices=CALIBRATED_METHODS)
    bits = serializers.IntegerField(default=4, help_text="2, 3, 4 or 8 for gptq; 4 for awq.")
    group_size = serializers.IntegerField(default=128, help_text="32, 64, 128, or -1 for one scale per channel.")
    damping = serializers.FloatField(default=0.01, help_text="GPTQ's damp_percent: the fraction of the Hessian's "
                                                             "mean diagonal added to it (unused by awq).")
    sym = serializers.BooleanField(default=True, help_text="Symmetric grid (no zero point), the default for both "
                                                           "methods: only symmetric grids are written packed for "
                                                           "serving engines; false adds a zero point per group "
                                                           "and writes the version dequantized.")
    desc_act = serializers.BooleanField(default=False, help_text="Act-order: quantize the columns with the "
                                                                 "largest activations first.")
    calibration_dataset = serializers.IntegerField(min_value=1, help_text="A dataset of purpose calibration.")
    calibration_samples = serializers.IntegerField(required=False, help_text="Default: all records, at most 128.")
    max_length = serializers.IntegerField(default=512, help_text="Tokens per calibration sample.")
    modules = serializers.CharField(required=False, max_length=1000,
                                    help_text="Regular expression: only Linear layers whose name it matches.")
    skip_modules = serializers.JSONField(required=False, help_text="A regular expression or a list of them; "
                                         "default: embeddings, norms and lm_head.")
    keep_sensitive = serializers.JSONField(required=False, help_text="{analysis: <id>, top_n: N}: keep the N "
                                           "layers that analysis found most sensitive in full precision.")


class QuantizeView(APIView):
    permission_classes = [EngineerWrites]

    @extend_schema(request=PolymorphicProxySerializer(
        component_name="QuantizeJobRequest", resource_type_field_name=None,
        serializers=[QuantizeRequestSerializer, CalibratedQuantizeRequestSerializer]),
        responses={202: JobSerializer})
    def post(self, request, name, number):
        if isinstance(request.data, dict) and request.data.get("method") in CALIBRATED_METHODS:
            payload = CalibratedQuantizeRequestSerializer(data=request.data)
            payload.is_valid(raise_exception=True)
            settings = dict(payload.validated_data)
            version = selectors.get_version(name, number)
            dataset = selectors.get_dataset(settings.pop("calibration_dataset"))
            job = services.start_calibrated_quantization(version=version, calibration_dataset=dataset,
                                                         settings=settings, actor=request.user)
        else:
            payload = QuantizeRequestSerializer(data=request.data)
            payload.is_valid(raise_exception=True)
            job = services.start_quantization(version=selectors.get_version(name, number), actor=request.user,
                                              **payload.validated_data)
        return Response({"job": job.pk, **JobSerializer(job).data}, status=status.HTTP_202_ACCEPTED)


class JobListView(APIView):
    permission_classes = [EngineerWrites]

    @extend_schema(responses=JobSerializer(many=True), operation_id="jobs_list", parameters=list_parameters(
        filter_parameter("status", "Only jobs in this status: queued, running, succeeded, failed or cancelled."),
        filter_parameter("kind", "Only jobs of this kind: " + ", ".join(Job.Kind.values) + "."),
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


class EvaluationRequestSerializer(serializers.Serializer):
    dataset = serializers.IntegerField(min_value=1, help_text="An evaluation dataset: multiple-choice, "
                                       "classification ({text, label}) or generation ({prompt, answer}) records.")
    reference = serializers.IntegerField(required=False, min_value=1,
                                         help_text="Version number of the same model to compare with; default none.")
    limit = serializers.IntegerField(required=False, min_value=1, max_value=10_000_000,
                                     help_text="Evaluate only the first `limit` records (default: all).")
    batch_size = serializers.IntegerField(required=False, min_value=1, max_value=MAX_BATCH_SIZE)
    max_new_tokens = serializers.IntegerField(required=False, min_value=1, max_value=MAX_NEW_TOKENS,
                                              help_text="Generation tasks: longest answer decoded.")
    classification_prompt = serializers.CharField(required=False, max_length=2000, trim_whitespace=False,
                                                  help_text="Classification tasks: the context each label is "
                                                            "scored after, containing {text}.")


def evaluation_document(evaluation) -> dict:
    """The API's evaluation shape: identity and status from the job, metrics from the result (null until done)."""
    job = evaluation.job
    result = evaluation.result or {}
    reference = result.get("reference") or {}
    return {
        "id": evaluation.pk, "status": job.status, "progress": job.progress, "message": job.message,
        "error": job.error, "job": job.pk,
        "candidate": {"model": evaluation.candidate.model.name, "version": evaluation.candidate.number},
        "reference": ({"model": evaluation.reference.model.name, "version": evaluation.reference.number}
                      if evaluation.reference_id else None),
        "dataset": evaluation.dataset_id, "task_type": evaluation.task_type, "limit": evaluation.limit,
        "params": evaluation.params, "created_at": evaluation.created_at,
        "metrics": result.get("metrics"), "reference_metrics": reference.get("metrics"),
        "deltas": result.get("deltas"), "per_class": result.get("per_class"),
        "reference_per_class": reference.get("per_class"), "confusion": result.get("confusion"),
        "reference_confusion": reference.get("confusion"), "samples": result.get("samples"),
        "seconds": result.get("seconds"), "harness": result.get("harness"),
    }


class EvaluationStartView(APIView):
    permission_classes = [EngineerWrites]

    @extend_schema(responses=ARRAY_OF_OBJECTS, parameters=list_parameters(), operation_id="versions_evaluations_list")
    def get(self, request, name, number):
        return paginated_response(request, evaluations_of(selectors.get_version(name, number)), ordering=("-pk",),
                                  serialize=lambda page: [evaluation_document(e) for e in page])

    @extend_schema(request=EvaluationRequestSerializer, responses={202: OpenApiTypes.OBJECT})
    def post(self, request, name, number):
        payload = EvaluationRequestSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        data = dict(payload.validated_data)
        candidate = selectors.get_version(name, number)
        reference_number = data.pop("reference", None)
        reference = selectors.get_version(name, reference_number) if reference_number else None
        dataset = selectors.get_dataset(data.pop("dataset"))
        evaluation = services.request_evaluation(candidate=candidate, reference=reference, dataset=dataset,
                                                 evaluation_settings=data, actor=request.user)
        return Response({"job": evaluation.job.pk, "evaluation": evaluation.pk}, status=status.HTTP_202_ACCEPTED)


class EvaluationDetailView(APIView):
    permission_classes = [EngineerWrites]

    @extend_schema(responses=OpenApiTypes.OBJECT)
    def get(self, request, evaluation_id):
        return Response(evaluation_document(get_evaluation(evaluation_id)))


class VersionReferenceSerializer(serializers.Serializer):
    model = serializers.CharField(max_length=100)
    version = serializers.IntegerField(min_value=1)


class DistillationRequestSerializer(serializers.Serializer):
    teacher = VersionReferenceSerializer()
    students = serializers.ListField(child=VersionReferenceSerializer(), min_length=1, max_length=8)
    dataset = serializers.IntegerField(min_value=1, help_text="Training dataset of {text, label?} records; "
                                       "without labels the teacher labels them.")
    label_field = serializers.CharField(required=False, default="label", max_length=100)
    sizes = serializers.ListField(child=serializers.IntegerField(min_value=1, max_value=10_000_000), min_length=1,
                                  max_length=10, help_text="Training subset sizes, e.g. [5000, 10000, 25000].")
    eval_dataset = serializers.IntegerField(min_value=1, help_text="Classification evaluation dataset.")
    lora = serializers.DictField(required=False, default=dict, help_text="LoRA settings (as lora-updates).")
    f1_relative_min = serializers.FloatField(required=False, min_value=0.0, max_value=10.0,
                                             help_text="Student F1 / teacher F1 the best candidate must reach "
                                                       "(default 0.9).")
    classification_prompt = serializers.CharField(required=False, max_length=2000, trim_whitespace=False)


def distillation_document(distillation) -> dict:
    job = distillation.job
    return {
        "id": distillation.pk, "status": job.status, "progress": job.progress, "message": job.message,
        "error": job.error, "job": job.pk,
        "teacher": {"model": distillation.teacher.model.name, "version": distillation.teacher.number},
        "students": distillation.params.get("student_refs", []), "dataset": distillation.dataset_id,
        "eval_dataset": distillation.eval_dataset_id, "params": distillation.params,
        "teacher_result": distillation.teacher_result,
        "subsets": [{"size": int(size), "dataset": dataset} for size, dataset in sorted(
            distillation.subsets.items(), key=lambda item: int(item[0]))],
        "rows": [{key: value for key, value in row.items() if key != "student_id"} for row in distillation.rows],
        "best": ({key: value for key, value in distillation.best.items() if key != "student_id"}
                 if distillation.best else None),
        "created_at": distillation.created_at,
    }


class DistillationListView(APIView):
    permission_classes = [EngineerWrites]

    @extend_schema(responses=ARRAY_OF_OBJECTS, parameters=list_parameters(), operation_id="distillations_list")
    def get(self, request):
        return paginated_response(request, distillations(), ordering=("-pk",),
                                  serialize=lambda page: [distillation_document(d) for d in page])

    @extend_schema(request=DistillationRequestSerializer, responses={202: OpenApiTypes.OBJECT})
    def post(self, request):
        payload = DistillationRequestSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        data = payload.validated_data
        teacher = selectors.get_version(data["teacher"]["model"], data["teacher"]["version"])
        students = [selectors.get_version(item["model"], item["version"]) for item in data["students"]]
        distillation = distillation_services.request_distillation(
            teacher=teacher, students=students, dataset=selectors.get_dataset(data["dataset"]),
            eval_dataset=selectors.get_dataset(data["eval_dataset"]), sizes=data["sizes"],
            label_field=data["label_field"], lora_settings=data["lora"], f1_relative_min=data.get("f1_relative_min"),
            classification_prompt=data.get("classification_prompt"), actor=request.user)
        return Response({"id": distillation.pk, "job": distillation.job.pk}, status=status.HTTP_202_ACCEPTED)


class DistillationDetailView(APIView):
    permission_classes = [EngineerWrites]

    @extend_schema(responses=OpenApiTypes.OBJECT)
    def get(self, request, distillation_id):
        return Response(distillation_document(get_distillation(distillation_id)))


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
        redacted = pii_services.redact_dataset(dataset=selectors.get_dataset(dataset_id),
                                               strategy=payload.validated_data["strategy"],
                                               types=payload.validated_data.get("types"), actor=request.user)
        return Response(DatasetSerializer(selectors.get_dataset(redacted.pk)).data, status=status.HTTP_201_CREATED)


class JobDetailAliasView(JobDetailView):
    """The same resource with a trailing slash; documented once, under the URL without it."""

    schema = None


class AnalysisDetailAliasView(AnalysisDetailView):
    """The same resource with a trailing slash; documented once, under the URL without it."""

    schema = None


class EvaluationDetailAliasView(EvaluationDetailView):
    """The same resource with a trailing slash; documented once, under the URL without it."""

    schema = None


class DistillationDetailAliasView(DistillationDetailView):
    """The same resource with a trailing slash; documented once, under the URL without it."""

    schema = None


class DistillationListAliasView(DistillationListView):
    """The same resource with a trailing slash; documented once, under the URL without it."""

    schema = None
