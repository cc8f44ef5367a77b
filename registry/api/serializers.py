"""Request validation and response shapes for the registry API. No writes here: views call services."""
from rest_framework import serializers

from registry.models import Dataset, ModelVersion, RegisteredModel, VersionFile


class ModelCreateSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=200)
    description = serializers.CharField(required=False, allow_blank=True, default="", max_length=10_000)


class ModelSerializer(serializers.ModelSerializer):
    created_by = serializers.CharField(source="created_by.username")
    versions = serializers.SerializerMethodField()

    class Meta:
        model = RegisteredModel
        fields = ["name", "description", "created_by", "created_at", "versions"]

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

    class Meta:
        model = ModelVersion
        fields = ["model", "number", "description", "status", "kind", "manifest_sha256", "files", "parents",
                  "quantization", "lora", "created_by", "created_at", "sealed_at"]

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
    model = serializers.CharField(source="model.name")
    created_by = serializers.CharField(source="created_by.username")

    class Meta:
        model = ModelVersion
        fields = ["model", "number", "description", "status", "kind", "manifest_sha256", "created_by",
                  "created_at", "sealed_at"]


class DatasetCreateSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=200)
    purpose = serializers.ChoiceField(choices=Dataset.Purpose.choices)
    file = serializers.FileField()


class DatasetSerializer(serializers.ModelSerializer):
    created_by = serializers.CharField(source="created_by.username")

    class Meta:
        model = Dataset
        fields = ["id", "name", "purpose", "sha256", "records", "size", "record_format", "created_by", "created_at"]
