"""Use cases that change the registry: the only code that writes its rows. Each writes its audit event in the
same transaction. Bytes go to object storage first and become visible only when the row that records them
commits, so a failure at any point leaves nothing half-made in view."""
import hashlib
import uuid
from pathlib import Path

from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from foundation import storage
from foundation.audit import append_event
from foundation.errors import Conflict, InvalidInput, NotFound, PermissionDenied, TooLarge, Unprocessable
from registry import signals
from registry.models import (
    Dataset,
    DatasetPiiFinding,
    LineageEdge,
    ModelVersion,
    RegisteredModel,
    VersionFile,
    model_name_validator,
)
from registry.teams import require_team_member, team_for_new_model
from registry.validation import (
    MAX_JSON_FILE_BYTES,
    SAFETENSORS_SUFFIX,
    check_shard_index,
    is_pickle_path,
    is_shard_index_path,
    parse_json_file,
    parse_safetensors_header,
    pickle_refusal,
    validate_file_path,
    validate_jsonl_dataset,
)


def _version_summary(version: ModelVersion) -> dict:
    return {"model": version.model.name, "number": version.number, "status": version.status, "kind": version.kind,
            "manifest_sha256": version.manifest_sha256}


@transaction.atomic
def create_model(*, name: str, description: str, actor, team: str | None = None) -> RegisteredModel:
    """Register a new model name, owned by a team of the creator's (see registry.teams)."""
    from django.core.exceptions import ValidationError

    try:
        model_name_validator(name)
    except ValidationError as error:
        raise InvalidInput(f"Model name {name!r} is invalid. {error.messages[0]}", field="name") from None
    if RegisteredModel.objects.filter(name=name).exists():
        raise Conflict(f"A model named {name!r} already exists.", field="name")
    owner = team_for_new_model(actor=actor, team_name=team)
    try:
        with transaction.atomic():
            model = RegisteredModel.objects.create(name=name, description=description, team=owner,
                                                   created_by=actor)
    except IntegrityError:
        raise Conflict(f"A model named {name!r} already exists.", field="name") from None
    append_event(actor=actor, action="model.created", object_type="model", object_id=model.pk, model_name=name,
                 after={"name": name, "description": description, "team": owner.name})
    return model


_VERSION_COLUMNS = [field for field in ModelVersion._meta.concrete_fields
                   if not field.primary_key and field.name != "number"]
# One statement takes the model's row lock and its next number and inserts the version with that number: one
# round trip, and concurrent creates queue on the model's row only while it runs. The other columns are the
# values the ORM's INSERT would send (field defaults, auto_now_add), prepared by the fields themselves.
_ALLOCATE_AND_INSERT_VERSION = (
    f"WITH allocated AS (UPDATE {RegisteredModel._meta.db_table} "
    "SET last_version_number = last_version_number + 1 WHERE id = %s RETURNING last_version_number) "
    f"INSERT INTO {ModelVersion._meta.db_table} (number, {', '.join(field.column for field in _VERSION_COLUMNS)}) "
    f"SELECT allocated.last_version_number, {', '.join(['%s'] * len(_VERSION_COLUMNS))} FROM allocated "
    "RETURNING id, number")


def _allocate_version(*, model: RegisteredModel, actor, kind: str, description: str,
                      source_job=None) -> ModelVersion:
    version = ModelVersion(model=model, number=0, kind=kind, description=description, created_by=actor,
                           source_job=source_job)
    values = [field.get_db_prep_save(field.pre_save(version, True), connection) for field in _VERSION_COLUMNS]
    with connection.cursor() as cursor:
        cursor.execute(_ALLOCATE_AND_INSERT_VERSION, [model.pk, *values])
        row = cursor.fetchone()
    if row is None:
        raise NotFound(f"Model {model.name!r} no longer exists.")
    version.pk, version.number = row
    version._state.adding, version._state.db = False, connection.alias
    model.last_version_number = version.number
    return version


@transaction.atomic
def create_version(*, model: RegisteredModel, description: str, actor) -> ModelVersion:
    """Open a draft version for uploads; its number is the model's next and is never reused."""
    require_team_member(actor=actor, model=model)
    version = _allocate_version(model=model, actor=actor, kind=ModelVersion.Kind.UPLOAD, description=description)
    append_event(actor=actor, action="version.created", object_type="version", object_id=version.pk,
                 model_name=model.name, after=_version_summary(version))
    return version


def upload_version_file(*, version: ModelVersion, path: str, stream, content_length: int | None,
                        expected_sha256: str | None, actor) -> VersionFile:
    """Stream one file of a draft version into storage, hashing it on the way, then record it.

    The bytes land under a fresh key first; the VersionFile row (the only thing that makes them part of the
    version) is written afterwards in one transaction, so a failed or refused upload leaves no row behind and
    its object is removed.
    """
    validate_file_path(path)
    require_team_member(actor=actor, model=version.model)
    if expected_sha256 is not None:
        expected_sha256 = expected_sha256.strip().lower()
        if len(expected_sha256) != 64 or any(c not in "0123456789abcdef" for c in expected_sha256):
            raise InvalidInput("X-Content-SHA256 must be 64 hexadecimal characters.", field="X-Content-SHA256")
    if content_length is not None and content_length > settings.MAX_VERSION_FILE_BYTES:
        raise TooLarge(f"{path} is {content_length} bytes; the limit is {settings.MAX_VERSION_FILE_BYTES}.")
    if version.status != ModelVersion.Status.DRAFT:
        raise Conflict(f"{version} is sealed; files can only be added while a version is a draft.")

    key = f"models/{version.model.name}/v{version.number}/{uuid.uuid4().hex}/{path}"
    stored = storage.put_stream(key, stream, max_bytes=settings.MAX_VERSION_FILE_BYTES, length=content_length)
    try:
        if content_length is not None and stored.size != content_length:
            raise InvalidInput(f"Received {stored.size} bytes of {path} but Content-Length said {content_length}; "
                               "the upload was cut short.")
        if expected_sha256 and stored.sha256 != expected_sha256:
            raise InvalidInput(f"{path} arrived with SHA-256 {stored.sha256}, not the {expected_sha256} given in "
                               "X-Content-SHA256; the file was not stored. Upload it again.",
                               field="X-Content-SHA256")
        version_file, replaced = _record_uploaded_file(version_id=version.pk, path=path, stored=stored, actor=actor)
    except BaseException:
        storage.remove(stored.key, version_id=stored.version_id)
        raise
    if replaced is not None:
        storage.remove(replaced[0], version_id=replaced[1])
    return version_file


@transaction.atomic
def _record_uploaded_file(*, version_id: int, path: str, stored: storage.StoredObject, actor):
    version = (ModelVersion.objects.select_for_update(of=("self",), no_key=True).select_related("model")
               .get(pk=version_id))
    if version.status != ModelVersion.Status.DRAFT:
        raise Conflict(f"{version} was sealed while {path} was uploading; the file was not added.")
    existing = VersionFile.objects.filter(version=version, path=path).first()
    replaced = None
    before = None
    if existing:
        replaced = (existing.object_key, existing.storage_version_id)
        before = {"path": path, "size": existing.size, "sha256": existing.sha256}
        existing.delete()
    version_file = VersionFile.objects.create(
        version=version, path=path, size=stored.size, sha256=stored.sha256, object_key=stored.key,
        storage_version_id=stored.version_id,
    )
    append_event(actor=actor, action="version.file_uploaded", object_type="version", object_id=version.pk,
                 model_name=version.model.name, before=before,
                 after={"path": path, "size": stored.size, "sha256": stored.sha256})
    return version_file, replaced


def manifest_digest(files: list[tuple[str, int, str]]) -> str:
    """SHA-256 over 'path<TAB>size<TAB>sha256' lines in path order: one digest that pins every byte of a version."""
    lines = "".join(f"{path}\t{size}\t{sha}\n" for path, size, sha in sorted(files))
    return hashlib.sha256(lines.encode()).hexdigest()


def _required_files(kind: str) -> tuple[str, str]:
    # A LoRA version holds an adapter that refers to its base's weights; its config is adapter_config.json.
    if kind == ModelVersion.Kind.LORA:
        return "adapter_config.json", "adapter weights (adapter_model.safetensors)"
    return "config.json", "weights (*.safetensors)"


def check_version_contents(*, kind: str, files: list[tuple[str, int]], read_range, read_all) -> dict:
    """Validate a version's files before sealing; returns {path: tensors} for the safetensors files.

    `read_range(path, offset, length)` and `read_all(path)` read file bytes, from storage or from disk.
    """
    paths = [path for path, _ in files]
    for path in paths:
        if is_pickle_path(path):
            raise pickle_refusal(path)
    config_name, weights_label = _required_files(kind)
    weights = [(path, size) for path, size in files if path.endswith(SAFETENSORS_SUFFIX)]
    if not weights:
        raise Unprocessable(f"The version has no {weights_label}; upload at least one .safetensors file.",
                            field="files")
    if config_name not in paths:
        raise Unprocessable(f"The version has no {config_name}; upload the model's {config_name}.", field="files")
    for path, size in files:
        if path.endswith(".json"):
            if size > MAX_JSON_FILE_BYTES:
                raise Unprocessable(f"{path} is {size} bytes; JSON files are limited to {MAX_JSON_FILE_BYTES}.",
                                    field="files")
            if path in (config_name,):
                parse_json_file(path, read_all(path))
    tensors_by_path = {
        path: parse_safetensors_header(path, size, lambda offset, length, p=path: read_range(p, offset, length))
        for path, size in weights
    }
    for path in paths:
        if is_shard_index_path(path):
            check_shard_index(path, parse_json_file(path, read_all(path)), tensors_by_path)
    return tensors_by_path


@transaction.atomic
def seal_version(*, version: ModelVersion, actor) -> ModelVersion:
    """Validate a draft's files and freeze it: status ready, manifest digest recorded, immutable from now on."""
    version = (ModelVersion.objects.select_for_update(of=("self",), no_key=True).select_related("model__team")
               .get(pk=version.pk))
    require_team_member(actor=actor, model=version.model)
    if version.status != ModelVersion.Status.DRAFT:
        raise Conflict(f"{version} is already sealed.")
    files = list(version.files.all())
    if not files:
        raise Unprocessable(f"{version} has no files; upload config.json and the safetensors weights first.",
                            field="files")
    by_path = {f.path: f for f in files}
    tensors_by_path = check_version_contents(
        kind=version.kind,
        files=[(f.path, f.size) for f in files],
        read_range=lambda path, offset, length: storage.read_range(
            by_path[path].object_key, offset, length, version_id=by_path[path].storage_version_id),
        read_all=lambda path: storage.read_bytes(by_path[path].object_key,
                                                 version_id=by_path[path].storage_version_id),
    )
    for path, tensors in tensors_by_path.items():
        by_path[path].tensors = tensors
        by_path[path].save(update_fields=["tensors"])
    version.manifest_sha256 = manifest_digest([(f.path, f.size, f.sha256) for f in files])
    version.status = ModelVersion.Status.READY
    version.sealed_at = timezone.now()
    version.save(update_fields=["manifest_sha256", "status", "sealed_at"])
    append_event(actor=actor, action="version.sealed", object_type="version", object_id=version.pk,
                 model_name=version.model.name, before={"status": "draft"}, after=_version_summary(version))
    return version


def register_dataset(*, name: str, purpose: str, uploaded_file, actor, redacted_from: Dataset | None = None,
                     redaction: dict | None = None) -> Dataset:
    """Validate a JSONL dataset line by line, store it, and record it; a bad line stores nothing. Its scan for
    personal data starts in the same transaction (registry.signals.dataset_registered)."""
    if purpose not in Dataset.Purpose.values:
        raise InvalidInput(f"Purpose {purpose!r} is not one of {', '.join(Dataset.Purpose.values)}.",
                           field="purpose")
    name = (name or "").strip()
    if not name or len(name) > 200:
        raise InvalidInput("Give the dataset a name of 1-200 characters.", field="name")
    if uploaded_file.size > settings.MAX_DATASET_BYTES:
        raise TooLarge(f"The dataset is {uploaded_file.size} bytes; the limit is {settings.MAX_DATASET_BYTES}.")
    digest = hashlib.sha256()

    def hashed_lines():
        uploaded_file.seek(0)
        for line in uploaded_file:
            digest.update(line)
            yield line

    summary = validate_jsonl_dataset(hashed_lines(), purpose)
    uploaded_file.seek(0)
    stored = storage.put_stream(f"datasets/{uuid.uuid4().hex}.jsonl", uploaded_file,
                                max_bytes=settings.MAX_DATASET_BYTES, content_type="application/jsonl")
    try:
        with transaction.atomic():
            dataset = Dataset.objects.create(
                name=name, purpose=purpose, sha256=digest.hexdigest(), records=summary.records, size=stored.size,
                record_format=summary.record_format, object_key=stored.key, storage_version_id=stored.version_id,
                redacted_from=redacted_from, redaction=redaction, created_by=actor,
            )
            append_event(actor=actor, action="dataset.registered", object_type="dataset", object_id=dataset.pk,
                         after={"name": name, "purpose": purpose, "sha256": dataset.sha256,
                                "records": summary.records,
                                "redacted_from": redacted_from.pk if redacted_from else None,
                                "redaction": redaction})
            signals.dataset_registered.send(sender=Dataset, dataset_id=dataset.pk)
    except BaseException:
        storage.remove(stored.key, version_id=stored.version_id)
        raise
    dataset.refresh_from_db()  # the scan that ran inside the transaction wrote its result to the row
    return dataset


@transaction.atomic
def record_pii_scan(*, dataset_id: int, summary: dict, findings: list[dict]) -> Dataset:
    """Store a dataset's PII scan: its status (clean or found), counts, and where each finding is (masked)."""
    dataset = Dataset.objects.select_for_update(no_key=True).get(pk=dataset_id)
    before = {"pii_status": dataset.pii_status}
    DatasetPiiFinding.objects.filter(dataset=dataset).delete()  # a rerun replaces the earlier scan's findings
    DatasetPiiFinding.objects.bulk_create(DatasetPiiFinding(dataset=dataset, **finding) for finding in findings)
    dataset.pii_status = summary["status"]
    dataset.pii = {key: value for key, value in summary.items() if key != "status"}
    dataset.save(update_fields=["pii_status", "pii"])
    append_event(actor=None, action="dataset.pii_scanned", object_type="dataset", object_id=dataset.pk,
                 before=before, after={"pii_status": dataset.pii_status, "counts": summary.get("counts"),
                                       "scanned_records": summary.get("scanned_records")})
    return dataset


@transaction.atomic
def record_pii_scan_failure(*, dataset_id: int, error: str) -> None:
    dataset = Dataset.objects.select_for_update(no_key=True).get(pk=dataset_id)
    dataset.pii_status, dataset.pii = Dataset.PiiStatus.FAILED, {"error": error}
    dataset.save(update_fields=["pii_status", "pii"])
    append_event(actor=None, action="dataset.pii_scan_failed", object_type="dataset", object_id=dataset.pk,
                 after={"error": error})


@transaction.atomic
def record_pii_exception(*, dataset: Dataset, reason: str, actor) -> Dataset:
    """A superuser allows a dataset with PII findings to be used anyway, with a reason (audited)."""
    if not actor.is_superuser:
        raise PermissionDenied("Only superusers may record an exception for a dataset with personal data.")
    reason = (reason or "").strip()
    if not reason:
        raise InvalidInput("Give the reason for using this dataset despite its PII findings.", field="reason")
    dataset = Dataset.objects.select_for_update(no_key=True).get(pk=dataset.pk)
    if dataset.pii_status != Dataset.PiiStatus.FOUND:
        raise Conflict(f"Dataset {dataset.pk} is {dataset.pii_status}; an exception is only for datasets with "
                       "PII findings.")
    dataset.pii_exception = {"reason": reason, "by": actor.username, "at": timezone.now().isoformat()}
    dataset.save(update_fields=["pii_exception"])
    append_event(actor=actor, action="dataset.pii_exception", object_type="dataset", object_id=dataset.pk,
                 after={"reason": reason, "counts": (dataset.pii or {}).get("counts")})
    return dataset


def register_derived_version(*, parent: ModelVersion, job, local_dir: Path, kind: str, relation: str,
                             metadata: dict, datasets: list[tuple[Dataset, str]] = (), description: str = "",
                             actor, other_parents: list[tuple[ModelVersion, str]] = ()) -> ModelVersion:
    """Upload a worker's output directory and register it as a sealed version derived from `parent` (and from
    `other_parents`: a merged version comes from its adapter and the adapter's base).

    Idempotent per job: objects go to keys derived from the job id (a retry overwrites them), and the version
    row is unique per job, so a job that runs twice registers exactly one version.
    """
    existing = ModelVersion.objects.filter(source_job=job).first()
    if existing:
        return existing
    local_files = sorted(p for p in Path(local_dir).rglob("*") if p.is_file())
    relative = [(p.relative_to(local_dir).as_posix(), p) for p in local_files]
    for path, _ in relative:
        validate_file_path(path)

    def read_local_range(path, offset, length):
        with open(Path(local_dir) / path, "rb") as handle:
            handle.seek(offset)
            return handle.read(length)

    tensors_by_path = check_version_contents(
        kind=kind, files=[(path, p.stat().st_size) for path, p in relative], read_range=read_local_range,
        read_all=lambda path: (Path(local_dir) / path).read_bytes(),
    )
    stored = {path: storage.put_file(f"jobs/{job.pk}/{path}", p) for path, p in relative}
    with transaction.atomic():
        existing = ModelVersion.objects.select_for_update(no_key=True).filter(source_job=job).first()
        if existing:
            return existing
        version = _allocate_version(model=parent.model, actor=actor, kind=kind, description=description,
                                    source_job=job)
        for path, item in stored.items():
            VersionFile.objects.create(version=version, path=path, size=item.size, sha256=item.sha256,
                                       object_key=item.key, storage_version_id=item.version_id,
                                       tensors=tensors_by_path.get(path))
        LineageEdge.objects.create(child=version, parent_version=parent, relation=relation)
        for other_parent, other_relation in other_parents:
            LineageEdge.objects.create(child=version, parent_version=other_parent, relation=other_relation)
        for dataset, dataset_relation in datasets:
            LineageEdge.objects.create(child=version, parent_dataset=dataset, relation=dataset_relation)
        if kind == ModelVersion.Kind.QUANTIZED:
            version.quantization = metadata
        elif kind in (ModelVersion.Kind.LORA, ModelVersion.Kind.MERGED):  # merged: the adapter's record + merge
            version.lora = metadata
        version.manifest_sha256 = manifest_digest([(p, s.size, s.sha256) for p, s in stored.items()])
        version.status = ModelVersion.Status.READY
        version.sealed_at = timezone.now()
        version.save(update_fields=["quantization", "lora", "manifest_sha256", "status", "sealed_at"])
        append_event(actor=actor, action="version.registered", object_type="version", object_id=version.pk,
                     model_name=version.model.name,
                     after={**_version_summary(version), "parent": parent.number, "relation": relation,
                            "job": job.pk})
    return version
