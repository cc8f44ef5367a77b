"""Registry endpoints: parse, authorize, call one service or selector, serialize. No writes here."""
from django.http import HttpResponseRedirect
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema, extend_schema_field
from rest_framework import serializers, status
from rest_framework.response import Response
from rest_framework.views import APIView

from foundation.errors import InvalidInput
from foundation.pagination import filter_parameter, list_parameters, paginated_response
from foundation.parsers import CheckedFormParser, CheckedMultiPartParser
from foundation.permissions import EngineerWrites, role_permission
from foundation.roles import ML_ENGINEER, REGULATOR
from registry import selectors, services
from registry.models import Dataset, DatasetPiiFinding, ModelVersion, RegisteredModel, VersionFile
from registry.serving import serving_commands
from registry.validation import validate_file_path


class ModelCreateSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=200)
    description = serializers.CharField(required=False, allow_blank=True, default="", max_length=10_000)
    team = serializers.CharField(required=False, max_length=100, help_text=(
        "The team that owns the model (you must be a member); default: your only team, or a personal team "
        "named after you when you are in none."))


class ModelSerializer(serializers.ModelSerializer):
    created_by = serializers.CharField(source="created_by.username")
    team = serializers.CharField(source="team.name")
    versions = serializers.SerializerMethodField()

    class Meta:
        model = RegisteredModel
        fields = ["name", "description", "team", "created_by", "created_at", "versions"]

    def get_versions(self, model) -> int:
        return model.last_version_number


class VersionCreateSerializer(serializers.Serializer):
    description = serializers.CharField(required=False, allow_blank=True, default="", max_length=10_000)


class VersionFileSerializer(serializers.ModelSerializer):
    class Meta:
        model = VersionFile
        fields = ["path", "size", "sha256"]


class VersionSerializer(serializers.ModelSerializer):
    model = serializers.CharField(source="model.name")
    created_by = serializers.CharField(source="created_by.username")
    files = VersionFileSerializer(many=True)
    parents = serializers.SerializerMethodField()
    serving = serializers.SerializerMethodField()

    class Meta:
        model = ModelVersion
        fields = ["model", "number", "description", "status", "kind", "manifest_sha256", "files", "parents",
                  "quantization", "lora", "created_by", "created_at", "sealed_at", "serving"]

    @extend_schema_field(serializers.DictField(allow_null=True))  # null for a draft
    def get_serving(self, version) -> dict | None:
        """{engine, download, command, sglang, note}: how to serve it once pulled (detail only, not in lists)."""
        return serving_commands(version)

    def get_parents(self, version) -> list[dict]:
        parents = []
        for edge in version.parent_edges.all():
            if edge.parent_version_id:
                parents.append({"model": edge.parent_version.model.name, "number": edge.parent_version.number,
                                "relation": edge.relation})
            else:
                parents.append({"dataset": edge.parent_dataset_id, "name": edge.parent_dataset.name,
                                "relation": edge.relation})
        return parents


class VersionListSerializer(serializers.ModelSerializer):
    """The schema of a version list row (the rows themselves come from version_rows: no model instances)."""
    model = serializers.CharField(source="model.name")
    created_by = serializers.CharField(source="created_by.username")

    class Meta:
        model = ModelVersion
        fields = ["model", "number", "description", "status", "kind", "manifest_sha256", "created_by",
                  "created_at", "sealed_at"]


def version_rows(page: list[dict]) -> list[dict]:
    """List rows from selectors.version_list_rows, renamed to the contract's keys (VersionListSerializer's)."""
    return [{"model": row["model_name"], "number": row["number"], "description": row["description"],
             "status": row["status"], "kind": row["kind"], "manifest_sha256": row["manifest_sha256"],
             "created_by": row["created_by_name"], "created_at": row["created_at"], "sealed_at": row["sealed_at"]}
            for row in page]


def new_draft_document(version: ModelVersion) -> dict:
    """A version just created as a draft, as GET .../versions/{n}/ shows it: no files and no parents yet."""
    return {"model": version.model.name, "number": version.number, "description": version.description,
            "status": version.status, "kind": version.kind, "manifest_sha256": version.manifest_sha256,
            "files": [], "parents": [], "quantization": version.quantization, "lora": version.lora,
            "created_by": version.created_by.username, "created_at": version.created_at,
            "sealed_at": version.sealed_at, "serving": None}


class DatasetCreateSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=200)
    purpose = serializers.ChoiceField(choices=Dataset.Purpose.choices)
    file = serializers.FileField()


class DatasetSerializer(serializers.ModelSerializer):
    created_by = serializers.CharField(source="created_by.username")
    pii = serializers.SerializerMethodField()

    class Meta:
        model = Dataset
        fields = ["id", "name", "purpose", "sha256", "records", "size", "record_format", "pii", "redacted_from",
                  "redaction", "created_by", "created_at"]

    def get_pii(self, dataset) -> dict:
        summary = dataset.pii or {}
        return {"status": dataset.pii_status, "counts": summary.get("counts", {}),
                "scanned_records": summary.get("scanned_records"), "records_with_pii": summary.get("records_with_pii"),
                "engine": summary.get("engine"), "findings_truncated": summary.get("findings_truncated", False),
                "error": summary.get("error"), "exception": dataset.pii_exception}


class PiiFindingSerializer(serializers.ModelSerializer):
    class Meta:
        model = DatasetPiiFinding
        fields = ["record", "field", "type", "start", "end", "masked"]


class PiiExceptionSerializer(serializers.Serializer):
    reason = serializers.CharField(max_length=20_000)



class ModelListView(APIView):
    permission_classes = [EngineerWrites]

    @extend_schema(responses=ModelSerializer(many=True), parameters=list_parameters(), operation_id="models_list")
    def get(self, request):
        return paginated_response(request, selectors.models(), ordering=("name",),
                                  serialize=lambda page: ModelSerializer(page, many=True).data)

    @extend_schema(request=ModelCreateSerializer, responses={201: ModelSerializer})
    def post(self, request):
        payload = ModelCreateSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        model = services.create_model(actor=request.user, **payload.validated_data)
        return Response(ModelSerializer(model).data, status=status.HTTP_201_CREATED)


class ModelDetailView(APIView):
    permission_classes = [EngineerWrites]

    @extend_schema(responses=ModelSerializer)
    def get(self, request, name):
        return Response(ModelSerializer(selectors.get_model_with_owner(name)).data)


class VersionListView(APIView):
    permission_classes = [EngineerWrites]

    @extend_schema(responses=VersionListSerializer(many=True), parameters=list_parameters(),
                   operation_id="models_versions_list")
    def get(self, request, name):
        return paginated_response(request, selectors.version_list_rows(selectors.get_model(name)),
                                  ordering=("number",), serialize=version_rows)

    @extend_schema(request=VersionCreateSerializer, responses={201: VersionSerializer})
    def post(self, request, name):
        payload = VersionCreateSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        version = services.create_version(model=selectors.get_model(name), actor=request.user,
                                          **payload.validated_data)
        return Response(new_draft_document(version), status=status.HTTP_201_CREATED)


class VersionDetailView(APIView):
    permission_classes = [EngineerWrites]

    @extend_schema(responses=VersionSerializer)
    def get(self, request, name, number):
        return Response(VersionSerializer(selectors.version_detail(name, number)).data)


def _content_length(request) -> int | None:
    raw = request.META.get("CONTENT_LENGTH")
    if raw in (None, ""):
        return None
    try:
        value = int(raw)
    except ValueError:
        raise InvalidInput("Content-Length is not a number.") from None
    if value < 0:
        raise InvalidInput("Content-Length is negative.")
    return value


class VersionFileView(APIView):
    permission_classes = [EngineerWrites]

    @extend_schema(request={"application/octet-stream": bytes}, responses={201: VersionFileSerializer})
    def put(self, request, name, number, path):
        validate_file_path(path)
        version = selectors.get_version(name, number)
        content_length = _content_length(request)
        # Without Content-Length (chunked transfer) the server's de-chunked input is read directly; Django's own
        # stream would read nothing. Either way the body is never buffered whole.
        stream = request._request if content_length is not None else request.META["wsgi.input"]
        version_file = services.upload_version_file(
            version=version, path=path, stream=stream, content_length=content_length,
            expected_sha256=request.headers.get("X-Content-SHA256"), actor=request.user,
        )
        return Response(VersionFileSerializer(version_file).data, status=status.HTTP_201_CREATED)

    @extend_schema(responses={302: None})
    def get(self, request, name, number, path):
        validate_file_path(path)
        version = selectors.get_version(name, number)
        return HttpResponseRedirect(selectors.file_download_url(version, path))


class SealView(APIView):
    permission_classes = [EngineerWrites]

    @extend_schema(request=None, responses=VersionSerializer)
    def post(self, request, name, number):
        version = services.seal_version(version=selectors.get_version(name, number), actor=request.user)
        return Response(VersionSerializer(selectors.version_detail(name, version.number)).data)


class LineageView(APIView):
    permission_classes = [EngineerWrites]

    @extend_schema(responses=OpenApiTypes.OBJECT)
    def get(self, request, name, number):
        return Response(selectors.lineage(selectors.get_version(name, number)))


class DatasetListView(APIView):
    permission_classes = [EngineerWrites]
    parser_classes = [CheckedMultiPartParser, CheckedFormParser]

    @extend_schema(responses=DatasetSerializer(many=True), operation_id="datasets_list", parameters=list_parameters(
        filter_parameter("purpose", "Only datasets of this purpose: calibration, evaluation or training.")))
    def get(self, request):
        return paginated_response(request, selectors.datasets(purpose=request.query_params.get("purpose")),
                                  ordering=("-pk",), serialize=lambda page: DatasetSerializer(page, many=True).data)

    @extend_schema(request={"multipart/form-data": DatasetCreateSerializer}, responses={201: DatasetSerializer})
    def post(self, request):
        payload = DatasetCreateSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        dataset = services.register_dataset(
            name=payload.validated_data["name"], purpose=payload.validated_data["purpose"],
            uploaded_file=payload.validated_data["file"], actor=request.user,
        )
        return Response(DatasetSerializer(dataset).data, status=status.HTTP_201_CREATED)


class PiiFindingsView(APIView):
    """Where a dataset holds personal data (masked values only): for ML engineers and regulators."""

    permission_classes = [role_permission(read_roles=(ML_ENGINEER, REGULATOR))]

    @extend_schema(responses=PiiFindingSerializer(many=True), operation_id="datasets_pii_findings_list",
                   parameters=list_parameters(filter_parameter("type", "Only findings of this type.")))
    def get(self, request, dataset_id):
        findings = selectors.pii_findings(selectors.get_dataset(dataset_id), kind=request.query_params.get("type"))
        return paginated_response(request, findings, ordering=("pk",),
                                  serialize=lambda page: PiiFindingSerializer(page, many=True).data)


class PiiExceptionView(APIView):
    permission_classes = [EngineerWrites]

    @extend_schema(request=PiiExceptionSerializer, responses=DatasetSerializer)
    def post(self, request, dataset_id):
        payload = PiiExceptionSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        dataset = services.record_pii_exception(dataset=selectors.get_dataset(dataset_id),
                                                reason=payload.validated_data["reason"], actor=request.user)
        return Response(DatasetSerializer(dataset).data)


class DatasetDetailView(APIView):
    permission_classes = [EngineerWrites]

    @extend_schema(responses=DatasetSerializer)
    def get(self, request, dataset_id):
        return Response(DatasetSerializer(selectors.get_dataset(dataset_id)).data)
