"""Reads of the registry that views, admin, tasks and reports share."""
from collections import deque

from django.db import connection
from django.db.models import F, QuerySet

from foundation import storage
from foundation.errors import NotFound
from registry.models import Dataset, DatasetPiiFinding, LineageEdge, ModelVersion, RegisteredModel


def models() -> QuerySet[RegisteredModel]:
    return RegisteredModel.objects.select_related("created_by", "team")


def datasets(*, purpose: str | None = None) -> QuerySet[Dataset]:
    queryset = Dataset.objects.select_related("created_by")
    return queryset.filter(purpose=purpose) if purpose else queryset


# Every call on a model's URL reads the model first; compiling an ORM query for it cost a third of a version
# create's CPU. Its plain columns need no conversion, so one plain statement reads them.
_MODEL_FIELDS = [field for field in RegisteredModel._meta.concrete_fields]
_MODEL_BY_NAME = (f"SELECT {', '.join(field.column for field in _MODEL_FIELDS)} "
                  f"FROM {RegisteredModel._meta.db_table} WHERE name = %s")


def get_model(name: str) -> RegisteredModel:
    """The model's own row; its team and creator load when first used."""
    with connection.cursor() as cursor:
        cursor.execute(_MODEL_BY_NAME, [name])
        row = cursor.fetchone()
    if row is None:
        raise NotFound(f"No model named {name!r}.")
    return RegisteredModel.from_db(connection.alias, [field.attname for field in _MODEL_FIELDS], row)


def get_model_with_owner(name: str) -> RegisteredModel:
    """The model with its team and creator, for pages and documents that show them."""
    try:
        return RegisteredModel.objects.select_related("team", "created_by").get(name=name)
    except RegisteredModel.DoesNotExist:
        raise NotFound(f"No model named {name!r}.") from None


def get_version(model_name: str, number: int) -> ModelVersion:
    try:
        return (ModelVersion.objects.select_related("model__team", "created_by")
                .get(model__name=model_name, number=number))
    except ModelVersion.DoesNotExist:
        raise NotFound(f"Model {model_name!r} has no version {number}.") from None


def get_dataset(dataset_id) -> Dataset:
    try:
        return Dataset.objects.get(pk=int(dataset_id))
    except (Dataset.DoesNotExist, TypeError, ValueError):
        raise NotFound(f"No dataset with id {dataset_id!r}.") from None


def pii_findings(dataset: Dataset, *, kind: str | None = None) -> QuerySet[DatasetPiiFinding]:
    findings = dataset.pii_findings.all()
    return findings.filter(type=kind) if kind else findings


def file_download_url(version: ModelVersion, path: str) -> str:
    """A short-lived URL that downloads one file of a version straight from object storage."""
    version_file = version.files.filter(path=path).first()
    if version_file is None:
        raise NotFound(f"{version} has no file {path!r}.")
    return storage.presigned_download_url(version_file.object_key, filename=path.rsplit("/", 1)[-1],
                                          version_id=version_file.storage_version_id)


def version_list_rows(model: RegisteredModel):
    """A model's versions as plain rows for its list endpoint (reading 100 rows as model instances costs more than
    the query)."""
    return (model.versions.order_by("number")
            .values("number", "description", "status", "kind", "manifest_sha256", "created_at", "sealed_at",
                    model_name=F("model__name"), created_by_name=F("created_by__username")))


def version_detail(model_name: str, number: int) -> ModelVersion:
    version = get_version(model_name, number)
    return (ModelVersion.objects.select_related("model", "created_by")
            .prefetch_related("files", "parent_edges__parent_version__model", "parent_edges__parent_dataset")
            .get(pk=version.pk))


def _version_node(version: ModelVersion) -> dict:
    return {"id": f"version:{version.model.name}:{version.number}", "type": "version", "model": version.model.name,
            "number": version.number, "kind": version.kind, "status": version.status}


def _dataset_node(dataset: Dataset) -> dict:
    return {"id": f"dataset:{dataset.pk}", "type": "dataset", "dataset": dataset.pk, "name": dataset.name,
            "purpose": dataset.purpose, "sha256": dataset.sha256, "pii_status": dataset.pii_status,
            "pii_counts": {k: v for k, v in ((dataset.pii or {}).get("counts") or {}).items() if v},
            "redacted_from": dataset.redacted_from_id}


def lineage(version: ModelVersion) -> dict:
    """Every ancestor and descendant of a version (datasets included) as nodes and edges."""
    edges_qs = LineageEdge.objects.select_related("child__model", "parent_version__model", "parent_dataset")
    nodes = {_version_node(version)["id"]: _version_node(version)}
    edges = {}

    def record(edge):
        parent = edge.parent_version or edge.parent_dataset
        parent_node = _version_node(parent) if edge.parent_version else _dataset_node(parent)
        child_node = _version_node(edge.child)
        nodes.setdefault(parent_node["id"], parent_node)
        nodes.setdefault(child_node["id"], child_node)
        edges[edge.pk] = {"parent": parent_node["id"], "child": child_node["id"], "relation": edge.relation}
        if edge.parent_dataset:
            record_redactions(edge.parent_dataset)

    def record_redactions(dataset: Dataset) -> None:
        """A redacted dataset's originals: nodes and `redacted_from` edges up to the first unredacted one."""
        while dataset.redacted_from_id:
            original = dataset.redacted_from
            nodes.setdefault(f"dataset:{original.pk}", _dataset_node(original))
            edges[f"redaction:{dataset.pk}"] = {"parent": f"dataset:{original.pk}", "child": f"dataset:{dataset.pk}",
                                                "relation": "redacted_from"}
            dataset = original

    # Ancestors: walk parent edges upwards.
    frontier = deque([version.pk])
    seen = {version.pk}
    while frontier:
        for edge in edges_qs.filter(child_id=frontier.popleft()):
            record(edge)
            if edge.parent_version_id and edge.parent_version_id not in seen:
                seen.add(edge.parent_version_id)
                frontier.append(edge.parent_version_id)
    # Descendants: walk child edges downwards, recording every parent of each descendant too.
    frontier = deque([version.pk])
    seen = {version.pk}
    while frontier:
        for edge in edges_qs.filter(parent_version_id=frontier.popleft()):
            record(edge)
            if edge.child_id not in seen:
                seen.add(edge.child_id)
                frontier.append(edge.child_id)
                for sibling_edge in edges_qs.filter(child_id=edge.child_id):
                    record(sibling_edge)
    return {"nodes": list(nodes.values()), "edges": list(edges.values())}


def module_names_of(version: ModelVersion) -> set[str]:
    """Module paths of a sealed version, from the tensor names recorded at seal time ('a.b.weight' -> 'a.b')."""
    names = set()
    for tensors in version.files.exclude(tensors=None).values_list("tensors", flat=True):
        for tensor_name in tensors:
            names.add(tensor_name.rsplit(".", 1)[0])
    return names


def newest_evaluation_dataset() -> Dataset | None:
    """The evaluation dataset gates and automatic analyses use when none is named."""
    return Dataset.objects.filter(purpose=Dataset.Purpose.EVALUATION).order_by("-created_at", "-pk").first()
