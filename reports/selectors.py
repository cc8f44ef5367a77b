"""Reads of reports that the API, the regulator portal and the e-mail share: lists, the PDF, its verification."""
import hashlib

from django.core.cache import cache
from django.db.models import QuerySet

from foundation import storage
from foundation.errors import NotFound
from reports import pki, signing
from reports.models import Report

# Verifying a PDF takes tens of milliseconds per signature; lists show many badges. A stored object never changes
# (drafts get a new key per step), so a verdict is reused for a while; it is recomputed so that certificate
# expiry still shows.
VERIFICATION_CACHE_SECONDS = 600


def reports(*, model_name: str | None = None, kind: str | None = None, status: str | None = None,
            change_request_id=None) -> QuerySet[Report]:
    queryset = Report.objects.select_related("model", "change_request__to_version", "change_request__from_version",
                                             "alias_change__to_version", "alias_change__from_version",
                                             "alias_change__alias")
    if model_name:
        queryset = queryset.filter(model__name=model_name)
    if kind:
        queryset = queryset.filter(kind=kind)
    if status:
        queryset = queryset.filter(status=status)
    if change_request_id:
        queryset = queryset.filter(change_request_id=change_request_id)
    return queryset


def get_report(report_id) -> Report:
    try:
        return reports().get(pk=int(report_id))
    except (Report.DoesNotExist, TypeError, ValueError):
        raise NotFound(f"No report with id {report_id}.") from None


def report_pdf(report: Report) -> bytes:
    if not report.object_key:
        raise NotFound(f"Report {report.pk} has no document yet; it is still being rendered.")
    return storage.read_bytes(report.object_key, version_id=report.storage_version_id)


def verify_report(report: Report) -> dict:
    """Validate the stored PDF's signatures against the organisation root only, and its recorded digest."""
    key = f"report-verification:{report.pk}:{report.object_key}:{report.storage_version_id}"
    cached = cache.get(key)
    if cached is not None:
        return cached
    pdf = report_pdf(report)
    verdict = signing.verify_pdf(pdf, trusted_root_pem=root_certificate()["pem"])
    digest = hashlib.sha256(pdf).hexdigest()
    document = {
        "report": report.pk,
        "status": report.status,
        "sha256": digest,
        "sha256_recorded": report.sha256,
        "sha256_matches": digest == report.sha256,
        **verdict,
        "root_sha256_fingerprint": root_certificate()["summary"]["sha256_fingerprint"],
    }
    # One verdict a regulator can read at a glance: every signature intact, valid and trusted, the bytes those
    # recorded at issue, and for a final report no field left unsigned.
    document["verified"] = bool(verdict["intact"] and verdict["valid"] and verdict["trusted"]
                                and document["sha256_matches"]
                                and (not report.is_final or not verdict["pending_fields"]))
    cache.set(key, document, VERIFICATION_CACHE_SECONDS)
    return document


def root_certificate() -> dict:
    """The organisation's root certificate (PEM) and its summary: what verifiers pin."""
    return {"pem": pki.root_pem(), "summary": pki.root_summary()}


def report_title(report: Report) -> str:
    if report.kind == Report.Kind.CHANGE_IMPACT:
        request = report.change_request
        start = f"v{request.from_version.number}" if request.from_version else "first deployment"
        return f"{report.model.name}@{request.alias}: {start} → v{request.to_version.number}"
    change = report.alias_change
    start = f"v{change.from_version.number}" if change.from_version else "-"
    return f"{report.model.name}@{change.alias.name}: rolled back {start} → v{change.to_version.number}"
