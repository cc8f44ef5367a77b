"""Personal data in datasets: the scan of every registered dataset (at once when it is small, else in a PII scan
job), the scan that job runs, redacted copies, and a sweep for datasets whose scan never started. Scan results are
written through registry.services.record_pii_scan; the guard that keeps datasets with personal data out of
training, calibration and distillation (require_free_of_pii) stays in services.py beside the use cases it guards.
"""
import dataclasses
import tempfile
from pathlib import Path

from django.conf import settings
from django.core.files import File
from django.db import transaction

from foundation import storage
from foundation.errors import InvalidInput, PermissionDenied
from foundation.roles import ML_ENGINEER, has_role
from registry import services as registry_services
from registry.models import Dataset
from workers.models import Job
from workers.pipelines import pii
from workers.pipelines.errors import PipelineInputError
from workers.services import create_job


def _pii_scan_spec() -> pii.PiiScanSpec:
    return pii.PiiScanSpec(regions=list(settings.PII_PHONE_REGIONS or pii.DEFAULT_REGIONS),
                           custom_patterns=dict(settings.PII_CUSTOM_PATTERNS))


def _scan_summary_and_findings(result) -> tuple[dict, list[dict]]:
    document = result.as_dict()
    findings = document.pop("findings")
    return document, findings


def scan_dataset_on_registration(*, dataset_id: int) -> None:
    """Scan a newly registered dataset for personal data: at once when it is small (the registration answers with
    the result), else in a job (the dataset stays `scanning` until it is done)."""
    dataset = Dataset.objects.get(pk=dataset_id)
    if dataset.size <= settings.PII_INLINE_SCAN_BYTES:
        raw = storage.read_bytes(dataset.object_key, version_id=dataset.storage_version_id, sha256=dataset.sha256)
        summary, findings = _scan_summary_and_findings(pii.scan_records(raw.splitlines(), _pii_scan_spec()))
        registry_services.record_pii_scan(dataset_id=dataset.pk, summary=summary, findings=findings)
        return
    create_job(kind=Job.Kind.PII_SCAN, params={"dataset": dataset.pk}, source_version=None, actor=dataset.created_by)


def scan_dataset_file(*, dataset_id: int, path, report) -> dict:
    """The PII scan job's work on a downloaded dataset file: scan it streaming, record the result."""
    summary, findings = _scan_summary_and_findings(pii.scan_jsonl(path, _pii_scan_spec(), report=report))
    registry_services.record_pii_scan(dataset_id=dataset_id, summary=summary, findings=findings)
    return {"dataset": dataset_id, "pii_status": summary["status"], "counts": summary["counts"]}


def redact_dataset(*, dataset, strategy: str, types: list[str] | None, actor):
    """Register a redacted copy of a dataset (its own SHA-256, scanned again); the original stays as it was."""
    if not (actor.is_superuser or has_role(actor, ML_ENGINEER)):
        raise PermissionDenied("Redacting a dataset needs the ml_engineer role.")
    if strategy not in pii.STRATEGIES:
        raise InvalidInput(f"strategy must be one of {', '.join(pii.STRATEGIES)}, not {strategy!r}.", field="strategy")
    spec = dataclasses.replace(_pii_scan_spec(), types=types)
    try:
        pii.validate_pii_scan_spec(spec)
    except PipelineInputError as error:
        raise InvalidInput(str(error), field="types") from None
    Path(settings.WORK_DIR).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=settings.WORK_DIR) as scratch:
        source, redacted = Path(scratch) / "source.jsonl", Path(scratch) / "redacted.jsonl"
        storage.download_to(dataset.object_key, source, version_id=dataset.storage_version_id,
                            sha256=dataset.sha256)
        summary = pii.redact_jsonl(source, redacted, strategy, types, spec=spec)
        with redacted.open("rb") as handle:
            return registry_services.register_dataset(
                name=f"{dataset.name} (redacted: {strategy})"[:200], purpose=dataset.purpose,
                uploaded_file=File(handle, name=redacted.name), actor=actor, redacted_from=dataset,
                redaction={"strategy": strategy, "types": types, "counts": summary["counts"],
                           "dropped_records": summary.get("dropped_records", 0)})


def scan_unscanned_datasets() -> int:
    """Scan every dataset still `scanning` that has no scan job waiting or running (datasets registered before
    scans existed, or whose job message was lost); returns how many were started."""
    waiting = {job.params.get("dataset") for job in Job.objects.filter(
        kind=Job.Kind.PII_SCAN, status__in=[Job.Status.QUEUED, Job.Status.RUNNING])}
    started = 0
    for dataset_id in Dataset.objects.filter(pii_status=Dataset.PiiStatus.SCANNING).values_list("pk", flat=True):
        if dataset_id not in waiting:
            with transaction.atomic():
                scan_dataset_on_registration(dataset_id=dataset_id)
            started += 1
    return started
