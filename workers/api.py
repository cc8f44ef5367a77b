"""Job endpoints: start work on a version, follow it, cancel it."""
from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.response import Response
from rest_framework.views import APIView

from registry import selectors
from registry.api.permissions import EngineerWrites
from registry.errors import NotFound
from workers import services
from workers.models import Job


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
    method = serializers.ChoiceField(choices=["nf4", "fp4", "int8"])
    compute_dtype = serializers.ChoiceField(choices=["float16", "bfloat16", "float32"], default="float32")
    double_quant = serializers.BooleanField(default=False)
    skip_modules = serializers.ListField(child=serializers.CharField(max_length=200), default=lambda: ["lm_head"],
                                        max_length=1000)


def get_job(job_id) -> Job:
    try:
        return Job.objects.select_related("source_version__model", "created_by").get(pk=job_id)
    except Job.DoesNotExist:
        raise NotFound(f"No job with id {job_id}.") from None


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

    @extend_schema(responses=JobSerializer(many=True))
    def get(self, request):
        jobs = Job.objects.select_related("source_version__model", "created_by")[:200]
        return Response(JobSerializer(jobs, many=True).data)


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
