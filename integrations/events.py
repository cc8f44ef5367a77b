"""What happened, as webhook events: derived from the audit trail's rows (every state change appends one), from a
report turning final, and from a failed audit-chain check. Each event is {type, object (in the API's shape), links}
with an id that is the same however often the same fact is looked at, so receivers can de-duplicate on it."""
import uuid
from dataclasses import dataclass

from django.conf import settings

from foundation.models import AuditEvent
from governance.api import alias_change_document, change_request_document
from governance.models import Alias
from governance.selectors import alias_change_rows, get_change_request
from registry.api import VersionSerializer
from registry.models import ModelVersion
from registry.selectors import version_detail
from reports.api import report_document
from reports.selectors import get_report
from workers.api import JobSerializer, analysis_document, evaluation_document
from workers.models import Analysis, Evaluation
from workers.selectors import get_job

_EVENT_NAMESPACE = uuid.UUID("5f1d2c1e-8a39-4d55-9e0c-6b1f0b6f7a21")


@dataclass(frozen=True)
class Event:
    id: uuid.UUID
    type: str
    object: dict
    links: dict


def event_id(*parts) -> uuid.UUID:
    return uuid.uuid5(_EVENT_NAMESPACE, ":".join(str(part) for part in parts))


def _link(path: str) -> str:
    return f"{settings.PUBLIC_BASE_URL}{path}"


# Which audit actions can become which event types (before loading anything), so that an action no subscription
# asks for costs one query and nothing more.
_TYPES_BY_ACTION = {
    "version.sealed": ("version.sealed",),
    "version.registered": ("version.sealed",),
    "job.succeeded": ("job.succeeded", "analysis.finished", "evaluation.finished"),
    "job.failed": ("job.failed", "analysis.finished", "evaluation.finished"),
    "change_request.opened": ("change_request.opened", "change_request.blocked"),
    "change_request.gated": ("change_request.blocked",),
    "change_request.stale": ("change_request.blocked",),
    "change_request.blocked": ("change_request.blocked",),
    "change_request.approved": ("change_request.approved",),
    "change_request.rejected": ("change_request.rejected",),
    "change_request.expired": ("change_request.expired",),
    "alias.deploy": ("change_request.deployed",),
    "alias.rollback": ("alias.rolled_back",),
}


def possible_types(action: str) -> tuple[str, ...]:
    return _TYPES_BY_ACTION.get(action, ())


def events_for_audit_event(audit_event: AuditEvent, wanted: set[str]) -> list[Event]:
    """The webhook events one audit row stands for, limited to the types some subscription wants."""
    action, after = audit_event.action, audit_event.after or {}
    found: list[tuple[str, dict, dict]] = []
    if action in ("version.sealed", "version.registered"):
        found.append(("version.sealed", *_version(audit_event.object_id)))
    elif action in ("job.succeeded", "job.failed"):
        job_object, job_links, kind = _job(audit_event.object_id)
        found.append((action, job_object, job_links))
        if kind == "analysis" and "analysis.finished" in wanted:
            analysis = _analysis_of_job(audit_event.object_id)
            if analysis:
                found.append(("analysis.finished", *analysis))
        elif kind == "evaluation" and "evaluation.finished" in wanted:
            found.append(("evaluation.finished", *(_evaluation_of_job(audit_event.object_id)
                                                   or (job_object, job_links))))
    elif action.startswith("change_request."):
        verdict = action.removeprefix("change_request.")
        if verdict in ("opened", "approved", "rejected", "expired"):
            found.append((action, *_change_request(audit_event.object_id)))
        if verdict == "blocked" or (verdict in ("opened", "gated", "stale") and after.get("status") == "blocked"):
            found.append(("change_request.blocked", *_change_request(audit_event.object_id)))
    elif action == "alias.deploy" and after.get("change_request"):
        found.append(("change_request.deployed", *_change_request(after["change_request"])))
    elif action == "alias.rollback":
        found.append(("alias.rolled_back", *_rollback(audit_event)))
    return [Event(id=event_id("audit", audit_event.hash, kind), type=kind, object=obj, links=links)
            for kind, obj, links in found if kind in wanted]


def report_final_event(report_id: int) -> Event:

    document = report_document(get_report(report_id))
    return Event(id=event_id("report.final", report_id), type="report.final", object=document,
                 links={"self": _link(f"/api/v1/reports/{report_id}/"), "pdf": _link(document["pdf"]),
                        "verification": _link(document["verification"])})


def audit_verification_failed_event(check) -> Event:
    document = {"ok": check.ok, "events": check.events, "first_bad": check.first_bad, "reason": check.reason,
                "anchor": check.anchor_sequence, "checked_at": check.checked_at}
    return Event(id=event_id("audit.check", check.pk), type="audit.verification_failed", object=document,
                 links={"verification": _link("/api/v1/audit-events/verification")})


def _version(version_id) -> tuple[dict, dict]:

    version = ModelVersion.objects.select_related("model").get(pk=version_id)
    document = VersionSerializer(version_detail(version.model.name, version.number)).data
    path = f"/api/v1/models/{version.model.name}/versions/{version.number}/"
    return dict(document), {"self": _link(path), "lineage": _link(f"{path}lineage")}


def _job(job_id) -> tuple[dict, dict, str]:

    job = get_job(job_id)
    return dict(JobSerializer(job).data), {"self": _link(f"/api/v1/jobs/{job.pk}")}, job.kind


def _analysis_of_job(job_id) -> tuple[dict, dict] | None:

    analysis = (Analysis.objects.select_related("job", "reference__model", "candidate__model")
                .filter(job_id=job_id).first())
    if analysis is None:
        return None
    return analysis_document(analysis), {"self": _link(f"/api/v1/analyses/{analysis.pk}")}


def _evaluation_of_job(job_id) -> tuple[dict, dict] | None:

    evaluation = (Evaluation.objects.select_related("job", "reference__model", "candidate__model")
                  .filter(job_id=job_id).first())
    if evaluation is None:
        return None
    return evaluation_document(evaluation), {"self": _link(f"/api/v1/evaluations/{evaluation.pk}")}


def _change_request(request_id) -> tuple[dict, dict]:

    document = change_request_document(get_change_request(request_id))
    return document, {"self": _link(f"/api/v1/change-requests/{request_id}/")}


def _rollback(audit_event: AuditEvent) -> tuple[dict, dict]:

    alias = Alias.objects.select_related("model", "version").get(pk=audit_event.object_id)
    # The rollback this row records: the newest one written before it (in the same transaction).
    change = (alias_change_rows([alias.pk])
              .filter(kind="rollback", created_at__lte=audit_event.occurred_at).first())
    document = {"model": alias.model.name, "alias": alias.name, "version": alias.version.number,
                "previous": (audit_event.before or {}).get("version"), "change": alias_change_document(change)}
    path = f"/api/v1/models/{alias.model.name}/aliases/{alias.name}"
    return document, {"self": _link(path), "history": _link(f"{path}/history"),
                      "reports": _link(f"/api/v1/reports/?model={alias.model.name}&kind=rollback")}
