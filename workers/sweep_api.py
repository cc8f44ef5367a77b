"""Quantization sweep endpoints: start one on a version, read its table, list them."""
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import PolymorphicProxySerializer, extend_schema, extend_schema_serializer
from rest_framework import serializers, status
from rest_framework.response import Response
from rest_framework.views import APIView

from foundation.errors import InvalidInput
from foundation.pagination import ARRAY_OF_OBJECTS, filter_parameter, list_parameters, paginated_response
from foundation.permissions import EngineerWrites
from registry import selectors
from workers import sweep_services
from workers.api import CalibratedQuantizeRequestSerializer, QuantizeRequestSerializer
from workers.pipelines.calibrated.spec import CALIBRATED_METHODS
from workers.selectors import get_quantization_sweep, quantization_sweeps


class QuantizationSweepRequestSerializer(serializers.Serializer):
    # Each candidate is validated by the quantize endpoint's own serializer (validate_candidates).
    candidates = serializers.ListField(child=serializers.JSONField(), min_length=1,
                                       max_length=sweep_services.MAX_CANDIDATES)
    dataset = serializers.IntegerField(min_value=1, help_text="The evaluation dataset every candidate is analysed on.")
    alias = serializers.RegexField(sweep_services.ALIAS_PATTERN, required=False, default="", allow_blank=True,
                                   error_messages={"invalid": "Not an alias name: use lowercase letters, digits, "
                                                              "'.', '_' or '-', starting with a letter or digit."},
                                   help_text="Whose policy gates the candidates; default: the default gates.")
    max_tokens = serializers.IntegerField(default=4096, help_text="Tokens each analysis scores.")
    top_k = serializers.IntegerField(default=5)

    def validate_candidates(self, candidates):
        """Each candidate through the quantize endpoint's own serializer, errors naming the candidate."""
        validated = []
        for index, candidate in enumerate(candidates):
            if not isinstance(candidate, dict):
                raise InvalidInput(f"Candidate {index} must be an object of quantize settings.",
                                   field=f"candidates[{index}]")
            calibrated = candidate.get("method") in CALIBRATED_METHODS
            payload = (CalibratedQuantizeRequestSerializer if calibrated else QuantizeRequestSerializer)(data=candidate)
            if not payload.is_valid():
                field, messages = next(iter(payload.errors.items()))
                text = " ".join(str(message) for message in messages) if isinstance(messages, list) else str(messages)
                raise InvalidInput(f"Candidate {index}: {field}: {text}", field=f"candidates[{index}].{field}")
            validated.append(dict(payload.validated_data))
        return validated


@extend_schema_serializer(component_name="QuantizationSweepRequest")
class QuantizationSweepRequestSchema(QuantizationSweepRequestSerializer):
    """The request as the OpenAPI document shows it: each candidate is one of the quantize endpoint's requests."""

    candidates = serializers.ListField(
        child=PolymorphicProxySerializer(component_name="QuantizationSweepCandidate", resource_type_field_name=None,
                                         serializers=[QuantizeRequestSerializer, CalibratedQuantizeRequestSerializer]),
        min_length=1, max_length=sweep_services.MAX_CANDIDATES,
        help_text="Quantize settings, one object per candidate, as POST .../quantize takes them.")


def quantization_sweep_document(sweep) -> dict:
    """The API's sweep shape: status from its job, the table's rows by candidate, the recommended version."""
    job = sweep.job
    return {
        "id": sweep.pk, "status": job.status, "progress": job.progress, "message": job.message, "error": job.error,
        "job": job.pk, "source": {"model": sweep.source.model.name, "version": sweep.source.number},
        "dataset": sweep.dataset_id, "alias": sweep.alias or None, "params": sweep.params, "policy": sweep.policy,
        "rows": [{key: row.get(key) for key in ("index", "settings", "version", "size_ratio", "kl_mean", "kl_p99",
                                                "same_top1", "ppl_ratio", "flip_rate", "gates", "analysis",
                                                "quantize_job", "error")}
                 | {"passed": sweep_services.passes_every_gate(row)} for row in sweep.rows],
        "recommended": sweep.recommended, "created_at": sweep.created_at,
    }


class QuantizationSweepStartView(APIView):
    permission_classes = [EngineerWrites]

    @extend_schema(request=QuantizationSweepRequestSchema, responses={202: OpenApiTypes.OBJECT})
    def post(self, request, name, number):
        payload = QuantizationSweepRequestSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        data = payload.validated_data
        sweep = sweep_services.request_quantization_sweep(
            source=selectors.get_version(name, number), candidates=data["candidates"],
            dataset=selectors.get_dataset(data["dataset"]), alias=data["alias"], max_tokens=data["max_tokens"],
            top_k=data["top_k"], actor=request.user)
        return Response({"id": sweep.pk, "job": sweep.job.pk}, status=status.HTTP_202_ACCEPTED)


class QuantizationSweepListView(APIView):
    permission_classes = [EngineerWrites]

    @extend_schema(responses=ARRAY_OF_OBJECTS, operation_id="quantization_sweeps_list", parameters=list_parameters(
        filter_parameter("model", "Only sweeps of versions of this model.")))
    def get(self, request):
        queryset = quantization_sweeps()
        if request.query_params.get("model"):
            queryset = queryset.filter(source__model__name=request.query_params["model"])
        return paginated_response(request, queryset, ordering=("-pk",),
                                  serialize=lambda page: [quantization_sweep_document(s) for s in page])


class QuantizationSweepDetailView(APIView):
    permission_classes = [EngineerWrites]

    @extend_schema(responses=OpenApiTypes.OBJECT)
    def get(self, request, sweep_id):
        return Response(quantization_sweep_document(get_quantization_sweep(sweep_id)))


class QuantizationSweepDetailAliasView(QuantizationSweepDetailView):
    """The same resource with a trailing slash; documented once, under the URL without it."""

    schema = None


class QuantizationSweepListAliasView(QuantizationSweepListView):
    """The same resource with a trailing slash; documented once, under the URL without it."""

    schema = None
