"""Registry endpoints: parse, authorize, call one service or selector, serialize."""
from django.http import HttpResponseRedirect
from drf_spectacular.utils import extend_schema
from rest_framework import status
from rest_framework.parsers import FormParser, MultiPartParser
from rest_framework.response import Response
from rest_framework.views import APIView

from registry import selectors, services, storage
from registry.api.permissions import EngineerWrites
from registry.api.serializers import (
    DatasetCreateSerializer, DatasetSerializer, ModelCreateSerializer, ModelSerializer, VersionCreateSerializer,
    VersionFileSerializer, VersionListSerializer, VersionSerializer,
)
from registry.errors import InvalidInput, NotFound
from registry.models import Dataset, RegisteredModel
from registry.validation import validate_file_path


class ModelListView(APIView):
    permission_classes = [EngineerWrites]

    @extend_schema(responses=ModelSerializer(many=True))
    def get(self, request):
        return Response(ModelSerializer(RegisteredModel.objects.select_related("created_by"), many=True).data)

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
        return Response(ModelSerializer(selectors.get_model(name)).data)


class VersionListView(APIView):
    permission_classes = [EngineerWrites]

    @extend_schema(responses=VersionListSerializer(many=True))
    def get(self, request, name):
        return Response(VersionListSerializer(selectors.versions_of(selectors.get_model(name)), many=True).data)

    @extend_schema(request=VersionCreateSerializer, responses={201: VersionSerializer})
    def post(self, request, name):
        payload = VersionCreateSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        version = services.create_version(model=selectors.get_model(name), actor=request.user,
                                          **payload.validated_data)
        return Response(VersionSerializer(selectors.version_detail(name, version.number)).data,
                        status=status.HTTP_201_CREATED)


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
        version_file = version.files.filter(path=path).first()
        if version_file is None:
            raise NotFound(f"{version} has no file {path!r}.")
        url = storage.presigned_download_url(version_file.object_key, filename=path.rsplit("/", 1)[-1],
                                             version_id=version_file.storage_version_id)
        return HttpResponseRedirect(url)


class SealView(APIView):
    permission_classes = [EngineerWrites]

    @extend_schema(request=None, responses=VersionSerializer)
    def post(self, request, name, number):
        version = services.seal_version(version=selectors.get_version(name, number), actor=request.user)
        return Response(VersionSerializer(selectors.version_detail(name, version.number)).data)


class LineageView(APIView):
    permission_classes = [EngineerWrites]

    def get(self, request, name, number):
        return Response(selectors.lineage(selectors.get_version(name, number)))


class DatasetListView(APIView):
    permission_classes = [EngineerWrites]
    parser_classes = [MultiPartParser, FormParser]

    @extend_schema(responses=DatasetSerializer(many=True))
    def get(self, request):
        return Response(DatasetSerializer(Dataset.objects.select_related("created_by"), many=True).data)

    @extend_schema(request={"multipart/form-data": DatasetCreateSerializer}, responses={201: DatasetSerializer})
    def post(self, request):
        payload = DatasetCreateSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        dataset = services.register_dataset(
            name=payload.validated_data["name"], purpose=payload.validated_data["purpose"],
            uploaded_file=payload.validated_data["file"], actor=request.user,
        )
        return Response(DatasetSerializer(dataset).data, status=status.HTTP_201_CREATED)


class DatasetDetailView(APIView):
    permission_classes = [EngineerWrites]

    @extend_schema(responses=DatasetSerializer)
    def get(self, request, dataset_id):
        return Response(DatasetSerializer(selectors.get_dataset(dataset_id)).data)
