"""Report lifecycle: the only code that writes report rows. The plain functions behind reports.tasks.

A change-impact report is one PDF growing by incremental updates:
1. draft: rendered when the request's gates are known, certified by the organisation (DocMDP: form filling
   only) with one empty, visible signature field per required approval and one for the final issue stamp;
2. each approval of the request's current round signs the next free approval field, as that approver, with a
   visible stamp (name, role, decision time, comment) that the signature itself covers;
3. final, once the alias moved: the organisation signs the issue field (deployment, audit chain head at issue),
   the PDF is stored under object lock and its SHA-256 recorded; the row never changes again.

Every step is idempotent: `update_change_impact_report` does only what is missing, whichever hook asked, in
whatever order the tasks run, so a task that runs twice never signs twice. Steps for one request run one at a
time (a transaction-scoped advisory lock), so two approvals signed concurrently never lose each other's update.
"""
import logging
import textwrap

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.mail import EmailMessage, get_connection
from django.db import IntegrityError, connection, transaction
from django.db.models import Q
from django.utils import timezone

from foundation import storage
from foundation.audit import append_event
from foundation.errors import PermissionDenied
from foundation.roles import REGULATOR, has_role
from governance import selectors as governance_selectors
from governance.models import AliasChange, ChangeRequest, Decision
from reports import facts, pki, signing
from reports.models import Report, ReportDelivery, ReportSubscription, SigningIdentity
from reports.templatetags.report_format import utc

logger = logging.getLogger(__name__)

# pg_advisory_xact_lock(namespace, id): one report step at a time per request, rollback or delivery.
_CHANGE_IMPACT_LOCK, _ROLLBACK_LOCK, _DELIVERY_LOCK = 0x7201, 0x7202, 0x7203
ISSUE_FIELD = "issue"
OPS_FIELD = "ops"
# Signature appearance: Courier 8 pt in a box about 500 pt wide holds about 100 characters a line.
_STAMP_WIDTH = 98
_STAMP_COMMENT_LINES = 5
# Requests in these states have gates the approvers can sign against.
_REPORTABLE = (ChangeRequest.Status.PENDING, ChangeRequest.Status.APPROVED, ChangeRequest.Status.DEPLOYED)


def signing_identity(*, user) -> bytes:
    """The user's PKCS#12 (key encrypted with the PKI passphrase), issued by the organisation root on first use."""
    identity = SigningIdentity.objects.filter(user=user).first()
    if identity is not None:
        return bytes(identity.pkcs12)
    pki.ensure_pki()
    common_name = user.get_full_name() or user.username
    issued = signing.issue_person_certificate(settings.REPORT_PKI_DIR, common_name=common_name, email=user.email,
                                              passphrase=pki.passphrase())
    try:
        with transaction.atomic():
            identity = SigningIdentity.objects.create(user=user, common_name=common_name, pkcs12=issued)
            append_event(actor=user, action="signing_identity.issued", object_type="signing_identity",
                         object_id=identity.pk, after={"user": user.username, "common_name": common_name,
                                                       **signing.pkcs12_certificate_summary(issued, pki.passphrase())})
    except IntegrityError:  # issued concurrently by another task: keep the one that was stored first
        return bytes(SigningIdentity.objects.get(user=user).pkcs12)
    return issued


# --- change-impact reports -------------------------------------------------------------------------------------


def update_change_impact_report(*, change_request_id: int) -> Report | None:
    """Bring the request's report up to date: the draft of its current round, a signature per approval so far,
    and the final issue once the request is deployed. Returns the report (None when there is nothing to do)."""
    with transaction.atomic():
        _advisory_lock(_CHANGE_IMPACT_LOCK, change_request_id)
        request = governance_selectors.find_change_request(change_request_id)
        if request is None:
            logger.info("change request %s is gone; no report", change_request_id)
            return None
        report = Report.objects.filter(kind=Report.Kind.CHANGE_IMPACT, change_request=request,
                                       round=request.round).first()
        if request.status not in _REPORTABLE:
            logger.info("change request %s is %s; its report stays as it is", request.pk, request.status)
            return report
        if report is None:
            report = _create_draft(request)
        if report.is_final:
            return report
        _sign_approvals(report, request)
        if request.status == ChangeRequest.Status.DEPLOYED:
            _finalise(report, request)
        return report


def approval_fields(required_approvals: int) -> list[dict]:
    """The signature slots of a change-impact report: one per required approval, then the issue stamp."""
    slots = [
        {"field": f"approver-{number}", "kind": "approval", "label": f"Approval {number} of {required_approvals}",
         "hint": "signed by a member of the approver role who neither opened this request nor created the "
                 "candidate version"}
        for number in range(1, required_approvals + 1)
    ]
    slots.append({"field": ISSUE_FIELD, "kind": "issue", "label": f"Final issue by {settings.REPORT_ORGANISATION}",
                  "hint": "stamped by the organisation when the alias moves to the new version"})
    return slots


def _create_draft(request: ChangeRequest) -> Report:
    # Drafts of earlier rounds were gated against a version that is no longer in service.
    Report.objects.filter(kind=Report.Kind.CHANGE_IMPACT, change_request=request, status=Report.Status.DRAFT,
                          round__lt=request.round).update(status=Report.Status.SUPERSEDED)
    report = Report.objects.create(kind=Report.Kind.CHANGE_IMPACT, model=request.model, change_request=request,
                                   round=request.round, status=Report.Status.DRAFT, object_key="", sha256="")
    from reports import render  # matplotlib and WeasyPrint load in workers only, never in the web process

    slots = approval_fields(request.required_approvals)
    stated = facts.change_impact_facts(request, signature_fields=slots) | {"report": {"id": report.pk}}
    rendered = render.render_change_impact(stated)
    pdf = signing.certify_pdf(
        rendered.pdf, pkcs12=pki.organisation_pkcs12(), passphrase=pki.passphrase(),
        signature_fields=[slot["field"] for slot in slots], field_boxes=rendered.field_boxes,
        reason=f"Change-impact report {report.pk} for change request {request.pk} (round {request.round}), "
               f"certified by {settings.REPORT_ORGANISATION}",
    )
    head = stated["audit_head"] or {}
    report.signature_fields = slots
    report.audit_head_sequence, report.audit_head_hash = head.get("sequence"), head.get("hash", "")
    _store_draft(report, pdf, fields=["signature_fields", "audit_head_sequence", "audit_head_hash"])
    logger.info("report %s: draft for change request %s rendered (%d pages) and certified", report.pk, request.pk,
                rendered.pages)
    return report


def _sign_approvals(report: Report, request: ChangeRequest) -> None:
    signed_decisions = {signature.get("decision_id") for signature in report.signatures}
    approvals = [decision for decision in
                 Decision.objects.filter(change_request=request, round=report.round,
                                         decision=Decision.Verdict.APPROVE)
                 .select_related("decided_by").order_by("created_at", "pk")
                 if decision.pk not in signed_decisions]
    if not approvals:
        return
    used = {signature["field"] for signature in report.signatures}
    free = [slot["field"] for slot in report.signature_fields if slot["kind"] == "approval" and slot["field"] not in used]
    if len(approvals) > len(free):
        logger.warning("report %s has %d free approval fields for %d approvals; signing the first ones", report.pk,
                       len(free), len(approvals))
    pdf = storage.read_bytes(report.object_key, version_id=report.storage_version_id)
    for decision, field in zip(approvals, free, strict=False):
        approver = facts.person(decision.decided_by)
        signed_at = timezone.now()
        pdf = signing.sign_pdf_field(
            pdf, field_name=field, pkcs12=signing_identity(user=decision.decided_by), passphrase=pki.passphrase(),
            signer_name=approver["name"], reason=f"{decision.decision}: {decision.comment}",
            appearance=_approval_stamp(approver, decision, signed_at),
        )
        report.signatures = [*report.signatures, {
            "field": field, "user_id": approver["id"], "username": approver["username"], "name": approver["name"],
            "decision_id": decision.pk, "decision": decision.decision, "comment": decision.comment,
            "decided_at": decision.created_at.isoformat(), "signed_at": signed_at.isoformat(),
        }]
    _store_draft(report, pdf, fields=["signatures"])
    logger.info("report %s: %d approval signature(s) added", report.pk, min(len(approvals), len(free)))


def _finalise(report: Report, request: ChangeRequest) -> None:
    signed = {signature["field"] for signature in report.signatures}
    missing = [slot["field"] for slot in report.signature_fields if slot["kind"] == "approval" and slot["field"] not in signed]
    if missing:
        # Deployed means the quorum was met, so every approval has been signed above; an empty field here means
        # the decisions and the report disagree, which a person must look at rather than a final report hide.
        logger.error("report %s: request %s is deployed but fields %s are unsigned; not finalising", report.pk,
                     request.pk, missing)
        return
    deployment = (AliasChange.objects.filter(change_request=request, kind=AliasChange.Kind.DEPLOY)
                  .select_related("from_version", "to_version").order_by("-created_at").first())
    head = facts.audit_head() or {}
    issued_at = timezone.now()
    organisation = settings.REPORT_ORGANISATION
    pdf = storage.read_bytes(report.object_key, version_id=report.storage_version_id)
    pdf = signing.sign_pdf_field(
        pdf, field_name=ISSUE_FIELD, pkcs12=pki.organisation_pkcs12(), passphrase=pki.passphrase(),
        signer_name=organisation,
        reason=f"final issue: {request.model.name}@{request.alias} deployed v{request.to_version.number}",
        appearance=_issue_stamp(request, deployment, head, issued_at),
    )
    stored = storage.put_locked_bytes(f"reports/{report.pk}/final.pdf", pdf, retain_days=settings.REPORT_RETENTION_DAYS,
                                      mode=settings.REPORT_RETENTION_MODE, content_type="application/pdf")
    report.signatures = [*report.signatures, {"field": ISSUE_FIELD, "name": organisation,
                                              "signed_at": issued_at.isoformat()}]
    report.object_key, report.storage_version_id, report.sha256 = stored.key, stored.version_id, stored.sha256
    report.audit_head_sequence, report.audit_head_hash = head.get("sequence"), head.get("hash", "")
    report.alias_change = deployment
    report.status, report.finalised_at = Report.Status.FINAL, issued_at
    report.save(update_fields=["signatures", "object_key", "storage_version_id", "sha256", "audit_head_sequence",
                               "audit_head_hash", "alias_change", "status", "finalised_at"])
    logger.info("report %s is final: %s (sha256 %s)", report.pk, stored.key, stored.sha256)


def _store_draft(report: Report, pdf: bytes, *, fields: list[str]) -> None:
    # A new key per step: the previous step's object stays what the row pointed at until this row commits.
    step = sum(1 for signature in report.signatures if signature.get("decision_id"))
    stored = storage.put_bytes(f"reports/{report.pk}/draft-{step}.pdf", pdf, content_type="application/pdf")
    report.object_key, report.storage_version_id, report.sha256 = stored.key, stored.version_id, stored.sha256
    report.save(update_fields=[*fields, "object_key", "storage_version_id", "sha256"])


# --- rollback reports ------------------------------------------------------------------------------------------


def produce_rollback_report(*, alias_change_id: int) -> Report | None:
    """Render the rollback's report, certify it as the organisation, sign it as the ops user and store it final."""
    with transaction.atomic():
        _advisory_lock(_ROLLBACK_LOCK, alias_change_id)
        change = (AliasChange.objects.select_related("alias__model", "actor", "from_version", "to_version")
                  .filter(pk=alias_change_id, kind=AliasChange.Kind.ROLLBACK).first())
        if change is None:
            logger.info("alias change %s is not a rollback (or is gone); no report", alias_change_id)
            return None
        existing = Report.objects.filter(kind=Report.Kind.ROLLBACK, alias_change=change).first()
        if existing is not None:
            return existing
        report = Report.objects.create(kind=Report.Kind.ROLLBACK, model=change.alias.model, alias_change=change,
                                       status=Report.Status.DRAFT, object_key="", sha256="")
        from reports import render  # see _create_draft

        operator = facts.person(change.actor)
        slots = [{"field": OPS_FIELD, "kind": "ops", "label": f"Rollback performed by {operator['name']}",
                  "hint": "signed with the operator's personal certificate"}]
        stated = facts.rollback_facts(change, signature_fields=slots) | {"report": {"id": report.pk}}
        rendered = render.render_rollback(stated)
        pdf = signing.certify_pdf(
            rendered.pdf, pkcs12=pki.organisation_pkcs12(), passphrase=pki.passphrase(), signature_fields=[OPS_FIELD],
            field_boxes=rendered.field_boxes,
            reason=f"Rollback report {report.pk}, certified by {settings.REPORT_ORGANISATION}",
        )
        signed_at = timezone.now()
        pdf = signing.sign_pdf_field(
            pdf, field_name=OPS_FIELD, pkcs12=signing_identity(user=change.actor), passphrase=pki.passphrase(),
            signer_name=operator["name"], reason=f"rollback: {change.reason}",
            appearance=_rollback_stamp(operator, change, signed_at),
        )
        stored = storage.put_locked_bytes(f"reports/{report.pk}/final.pdf", pdf,
                                          retain_days=settings.REPORT_RETENTION_DAYS,
                                          mode=settings.REPORT_RETENTION_MODE, content_type="application/pdf")
        head = stated["audit_head"] or {}
        report.signature_fields = slots
        report.signatures = [{"field": OPS_FIELD, "user_id": operator["id"], "username": operator["username"],
                              "name": operator["name"], "signed_at": signed_at.isoformat()}]
        report.object_key, report.storage_version_id, report.sha256 = stored.key, stored.version_id, stored.sha256
        report.audit_head_sequence, report.audit_head_hash = head.get("sequence"), head.get("hash", "")
        report.status, report.finalised_at = Report.Status.FINAL, timezone.now()
        report.save(update_fields=["signature_fields", "signatures", "object_key", "storage_version_id", "sha256",
                                   "audit_head_sequence", "audit_head_hash", "status", "finalised_at"])
        logger.info("rollback report %s is final: %s", report.pk, stored.key)
        return report


# --- delivery --------------------------------------------------------------------------------------------------


def produce_missing_reports() -> dict:
    """Catch up on reports whose task never ran (the broker was down when governance announced a change, a task
    failed for good): drafts of pending requests, final reports of deployed ones, rollback reports and e-mail
    deliveries. Safe to run any time: every step is idempotent. Returns how many of each were done."""
    finals = Report.objects.filter(kind=Report.Kind.CHANGE_IMPACT, status=Report.Status.FINAL)
    requests = (ChangeRequest.objects.filter(status__in=[ChangeRequest.Status.PENDING, ChangeRequest.Status.DEPLOYED])
                .exclude(pk__in=finals.values("change_request_id")).values_list("pk", flat=True))
    updated = sum(1 for request_id in requests
                  if update_change_impact_report(change_request_id=request_id) is not None)
    rollbacks = (AliasChange.objects.filter(kind=AliasChange.Kind.ROLLBACK)
                 .exclude(pk__in=Report.objects.filter(kind=Report.Kind.ROLLBACK).values("alias_change_id"))
                 .values_list("pk", flat=True))
    produced = sum(1 for change_id in rollbacks if produce_rollback_report(alias_change_id=change_id) is not None)
    delivered = sum(deliver_report(report_id=report_id) for report_id in
                    Report.objects.filter(status=Report.Status.FINAL).values_list("pk", flat=True))
    return {"change_impact_updated": updated, "rollback_produced": produced, "emails_sent": delivered}


def deliver_report(*, report_id: int) -> int:
    """E-mail a final report, PDF attached, to each subscribed regulator who has not had it yet; how many."""
    with transaction.atomic():
        _advisory_lock(_DELIVERY_LOCK, report_id)
        report = Report.objects.select_related("model", "change_request", "alias_change").filter(pk=report_id).first()
        if report is None or not report.is_final:
            return 0
        recipients = [user for user in _subscribers(report) if user.email]
        if not recipients:
            return 0
        pdf = storage.read_bytes(report.object_key, version_id=report.storage_version_id)
        subject, body = _delivery_message(report)
        with get_connection() as mail:
            for user in recipients:
                message = EmailMessage(subject, body, to=[user.email], connection=mail)
                message.attach(report.filename, pdf, "application/pdf")
                message.send()
                ReportDelivery.objects.create(report=report, user=user, email=user.email)
        return len(recipients)


def subscribe(*, user, model=None) -> ReportSubscription:
    """Send the user every final report (of `model`, or of every model) by e-mail."""
    if not has_role(user, REGULATOR):
        raise PermissionDenied("Report subscriptions are for the regulator role.")
    subscription, _ = ReportSubscription.objects.get_or_create(user=user, model=model)
    return subscription


def unsubscribe(*, user, model=None) -> None:
    ReportSubscription.objects.filter(user=user, model=model).delete()


def _subscribers(report: Report):
    delivered = ReportDelivery.objects.filter(report=report).values("user_id")
    users = (get_user_model().objects.filter(is_active=True, report_subscriptions__isnull=False)
             .filter(Q(report_subscriptions__model__isnull=True) | Q(report_subscriptions__model=report.model))
             .exclude(pk__in=delivered).distinct().order_by("pk"))
    return [user for user in users if has_role(user, REGULATOR)]


def _delivery_message(report: Report) -> tuple[str, str]:
    fingerprint = pki.root_summary()["sha256_fingerprint"]
    if report.kind == Report.Kind.CHANGE_IMPACT:
        request = report.change_request
        what = (f"change-impact report {report.pk}: {report.model.name}@{request.alias} deployed "
                f"v{request.to_version.number} (change request {request.pk})")
    else:
        change = report.alias_change
        what = (f"rollback report {report.pk}: {report.model.name}@{change.alias.name} rolled back to "
                f"v{change.to_version.number}")
    body = "\n".join([
        f"{settings.REPORT_ORGANISATION} issued the signed {what}.",
        "",
        f"File: {report.filename} (attached)",
        f"SHA-256: {report.sha256}",
        f"Issued: {utc(report.finalised_at)}",
        f"Audit chain head at issue: event #{report.audit_head_sequence} {report.audit_head_hash}",
        "",
        "Verify it independently against the organisation root certificate, whose SHA-256 fingerprint is",
        f"  {fingerprint}",
        "with: pyhanko sign validate --pretty-print --trust root.pem --trust-replace "
        f"{report.filename}",
        "",
        f"All reports and the audit trail: {settings.REPORT_PORTAL_URL}",
    ])
    return f"[{settings.REPORT_ORGANISATION}] Signed {what}", body


# --- signature appearances -------------------------------------------------------------------------------------


def _approval_stamp(approver: dict, decision: Decision, signed_at) -> str:
    lines = [
        f"{'APPROVED' if decision.decision == Decision.Verdict.APPROVE else 'REJECTED'} by {approver['name']} ({approver['username']}), "
        f"role: {', '.join(approver['roles']) or 'none'}",
        f"Decision: {decision.decision}, recorded {utc(decision.created_at)}",
        f"Signed: {utc(signed_at)} with a certificate issued by the {settings.REPORT_ORGANISATION} root",
    ]
    return "\n".join(lines + _wrapped("Comment: " + (decision.comment.strip() or "(none)"),
                                      limit=_STAMP_COMMENT_LINES))


def _issue_stamp(request: ChangeRequest, deployment: AliasChange | None, head: dict, issued_at) -> str:
    moved = (f"Deployed: {request.model.name}@{request.alias} "
             f"v{request.from_version.number if request.from_version else '-'} -> v{request.to_version.number}")
    if deployment is not None:
        moved += f" at {utc(deployment.created_at)} (alias change {deployment.pk})"
    return "\n".join([
        f"FINAL: issued by {settings.REPORT_ORGANISATION} on {utc(issued_at)}",
        moved,
        f"Audit chain head at issue: event #{head.get('sequence', '-')}",
        f"  {head.get('hash', '(empty chain)')}",
    ])


def _rollback_stamp(operator: dict, change: AliasChange, signed_at) -> str:
    lines = [
        f"ROLLED BACK by {operator['name']} ({operator['username']}), role: {', '.join(operator['roles']) or 'none'}",
        f"{change.alias.model.name}@{change.alias.name}: "
        f"v{change.from_version.number if change.from_version else '-'} -> v{change.to_version.number} "
        f"at {utc(change.created_at)}",
        f"Signed: {utc(signed_at)}",
    ]
    return "\n".join(lines + _wrapped("Reason: " + change.reason.strip(), limit=_STAMP_COMMENT_LINES))


def _wrapped(text: str, *, limit: int) -> list[str]:
    lines = textwrap.wrap(" ".join(text.split()), width=_STAMP_WIDTH) or [""]
    if len(lines) > limit:
        lines = lines[:limit]
        lines[-1] = lines[-1][: _STAMP_WIDTH - 45].rstrip() + " [...] (in full in the signature's reason)"
    return lines


def _advisory_lock(namespace: int, key: int) -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_xact_lock(%s, %s)", [namespace, int(key)])
