"""The regulator portal: read-only pages behind Django's session login. Reports per model with a verification
badge and a download link, each report's signatures, the audit trail, and the e-mail subscription."""
import datetime
from functools import wraps

from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.shortcuts import redirect, render
from django.utils import timezone
from django.utils.http import urlencode
from django.views.decorators.http import require_POST

from foundation.anchoring import verify_anchored_chain
from foundation.audit import audit_events
from foundation.errors import DomainError, StorageUnavailable
from foundation.http import error_response, wants_json
from foundation.models import AuditEvent
from foundation.roles import REGULATOR, has_role
from governance.models import Alias, ChangeRequest
from registry.models import Dataset, ModelVersion, RegisteredModel
from reports import api, selectors, services
from reports.models import Report, ReportSubscription
from workers.models import Analysis, Job

AUDIT_PAGE_SIZE = 50


def regulator_required(view):
    """Session login, then the regulator role (superusers too); everyone else gets a 403 page."""

    @login_required(login_url="portal-login")
    @wraps(view)
    def wrapped(request, *args, **kwargs):
        if not has_role(request.user, REGULATOR):
            return _page_or_error(request, "reports/portal/forbidden.html", {}, 403, FORBIDDEN_DETAIL)
        try:
            return view(request, *args, **kwargs)
        except StorageUnavailable as error:
            return _page_or_error(request, "reports/portal/error.html", {"message": error.message}, 503,
                                  error.message)
        except DomainError as error:
            return _page_or_error(request, "reports/portal/error.html", {"message": error.message}, 404,
                                  error.message)

    return wrapped


FORBIDDEN_DETAIL = ("The regulator portal is for users with the regulator role; ask an administrator to add you "
                    "to the regulator group.")


def _page_or_error(request, template: str, context: dict, status: int, detail: str):
    """Browsers get the portal's own page; other clients the contract's JSON error."""
    if wants_json(request):
        return error_response(request, status, detail)
    return render(request, template, context, status=status)


class PortalLoginView(auth_views.LoginView):
    template_name = "reports/portal/login.html"
    redirect_authenticated_user = True

    def get_default_redirect_url(self):
        return "/portal/"


REPORTS_PER_PAGE = 50


@regulator_required
def report_list(request):
    model_name = request.GET.get("model") or None
    # Each badge validates a stored PDF, so a page holds a bounded number of reports.
    page = Paginator(selectors.reports(model_name=model_name).exclude(object_key=""), REPORTS_PER_PAGE).get_page(
        request.GET.get("page"))
    rows = []
    for report in page:
        rows.append({"report": report, "title": selectors.report_title(report), "verification": _badge(report)})
    by_model: dict[str, list] = {}
    for row in rows:
        by_model.setdefault(row["report"].model.name, []).append(row)
    subscriptions = set(ReportSubscription.objects.filter(user=request.user).values_list("model__name", flat=True))
    return render(request, "reports/portal/reports.html", {
        "by_model": sorted(by_model.items()), "model_name": model_name, "page": page,
        "models": RegisteredModel.objects.order_by("name").values_list("name", flat=True),
        "subscribed_all": None in subscriptions, "subscribed_models": subscriptions - {None},
        "root": selectors.root_certificate()["summary"],
    })


@regulator_required
def report_detail(request, report_id):
    report = selectors.get_report(report_id)
    return render(request, "reports/portal/report.html", {
        "report": report, "title": selectors.report_title(report), "document": api.report_document(report),
        "verification": selectors.verify_report(report), "change": change_summary(report),
    })


def change_summary(report: Report) -> dict:
    """What the report is about, in a few rows: the change, who asked and why, its gates and approvals."""
    if report.kind == Report.Kind.ROLLBACK and report.alias_change:
        change = report.alias_change
        return {"kind": "rollback", "alias": f"{report.model.name}@{change.alias.name}",
                "from": change.from_version, "to": change.to_version, "by": change.actor, "reason": change.reason,
                "at": change.created_at, "gates": [], "decisions": []}
    request = report.change_request
    if request is None:
        return {}
    return {"kind": "change", "alias": f"{report.model.name}@{request.alias}", "from": request.from_version,
            "to": request.to_version, "by": request.requested_by, "reason": request.justification,
            "at": request.created_at, "status": request.status, "request": request,
            "required_approvals": request.required_approvals, "gates": request.gates,
            "decisions": [d for d in request.decisions.select_related("decided_by").order_by("created_at")
                          if d.round == request.round]}


@regulator_required
def report_pdf(request, report_id):
    return api.pdf_response(selectors.get_report(report_id))


@regulator_required
def root_certificate(request):
    return api.root_certificate_response()


def _day(text: str | None, *, end: bool = False) -> datetime.datetime | None:
    """'2026-03-01' as the start (or the end) of that day in UTC; None when empty; ValueError when malformed."""
    if not text:
        return None
    day = datetime.date.fromisoformat(text)
    moment = datetime.datetime.combine(day, datetime.time.max if end else datetime.time.min)
    return timezone.make_aware(moment, datetime.timezone.utc)


def audit_filters(params) -> tuple[dict, list[str]]:
    """The audit page's filters from its query string, and a message for each one that could not be read."""
    filters = {name: (params.get(name) or "").strip() for name in ("model", "action", "actor", "since", "until")}
    problems = []
    for name, end in (("since", False), ("until", True)):
        try:
            filters[f"{name}_at"] = _day(filters[name], end=end)
        except ValueError:
            problems.append(f"“{filters[name]}” is not a date (YYYY-MM-DD); the {name} filter is ignored.")
            filters[f"{name}_at"] = None
    return filters, problems


def filtered_audit_events(filters: dict):
    events = audit_events(model_name=filters["model"] or None, action=filters["action"] or None)
    if filters["actor"]:
        events = events.filter(actor_name__iexact=filters["actor"])
    if filters["since_at"]:
        events = events.filter(occurred_at__gte=filters["since_at"])
    if filters["until_at"]:
        events = events.filter(occurred_at__lte=filters["until_at"])
    return events.order_by("-sequence")


def _ids(events, object_type: str) -> set[int]:
    return {int(e.object_id) for e in events if e.object_type == object_type and str(e.object_id).isdigit()}


def audit_object_names(events) -> dict[tuple[str, str], str]:
    """(object type, id) -> the object in product words: 'credit-llm v3', 'change request #4', ..."""
    names = {}
    for version in ModelVersion.objects.select_related("model").filter(pk__in=_ids(events, "version")):
        names[("version", str(version.pk))] = f"{version.model.name} v{version.number}"
    for model in RegisteredModel.objects.filter(pk__in=_ids(events, "model")):
        names[("model", str(model.pk))] = f"model {model.name}"
    for alias in Alias.objects.select_related("model").filter(pk__in=_ids(events, "alias")):
        names[("alias", str(alias.pk))] = f"{alias.model.name}@{alias.name}"
    for request in (ChangeRequest.objects.select_related("model", "to_version")
                    .filter(pk__in=_ids(events, "change_request"))):
        names[("change_request", str(request.pk))] = (f"change request #{request.pk} ({request.model.name}@"
                                                      f"{request.alias} → v{request.to_version.number})")
    for analysis in (Analysis.objects.select_related("candidate__model", "reference")
                     .filter(pk__in=_ids(events, "analysis"))):
        names[("analysis", str(analysis.pk))] = (f"analysis {analysis.pk} ({analysis.candidate.model.name} "
                                                 f"v{analysis.candidate.number} against v{analysis.reference.number})")
    for dataset in Dataset.objects.filter(pk__in=_ids(events, "dataset")):
        names[("dataset", str(dataset.pk))] = f"dataset {dataset.name} (#{dataset.pk}, {dataset.purpose})"
    for job in Job.objects.select_related("source_version__model").filter(pk__in=_ids(events, "job")):
        source = f" on {job.source_version.model.name} v{job.source_version.number}" if job.source_version else ""
        names[("job", str(job.pk))] = f"{job.kind} job {job.pk}{source}"
    for report in Report.objects.filter(pk__in=_ids(events, "report")):
        names[("report", str(report.pk))] = f"{report.get_kind_display().lower()} report {report.pk}"
    return names


def _object_name(event, names: dict) -> str:
    known = names.get((event.object_type, str(event.object_id)))
    return known or f"{event.object_type.replace('_', ' ')} {event.object_id}"


@regulator_required
def audit_trail(request):
    filters, problems = audit_filters(request.GET)
    page = Paginator(filtered_audit_events(filters), AUDIT_PAGE_SIZE).get_page(request.GET.get("page"))
    events = list(page)
    names = audit_object_names(events)
    chain, anchor = verify_anchored_chain()
    query = {name: filters[name] for name in ("model", "action", "actor", "since", "until") if filters[name]}
    return render(request, "reports/portal/audit.html", {
        "rows": [{"event": event, "object": _object_name(event, names)} for event in events], "page": page,
        "filters": filters, "problems": problems, "query": urlencode(query), "chain": chain, "anchor": anchor,
        "anchored_at": datetime.datetime.fromisoformat(anchor["occurred_at"]) if anchor and anchor.get("occurred_at")
        else None,
        "page_size": AUDIT_PAGE_SIZE,
        "models": RegisteredModel.objects.order_by("name").values_list("name", flat=True),
        "actions": AuditEvent.objects.order_by("action").values_list("action", flat=True).distinct(),
    })


@require_POST
@regulator_required
def subscription(request):
    """Subscribe to (or stop) e-mail delivery of final reports, for one model or for all."""
    model = RegisteredModel.objects.filter(name=request.POST.get("model") or "").first()
    if request.POST.get("action") == "unsubscribe":
        services.unsubscribe(user=request.user, model=model)
    else:
        services.subscribe(user=request.user, model=model)
    return redirect("portal-reports")


def _badge(report) -> dict:
    try:
        verdict = selectors.verify_report(report)
    except StorageUnavailable:
        return {"state": "unknown", "text": "storage unavailable"}
    if verdict["verified"]:
        return {"state": "ok", "text": "verified" if report.is_final else "signatures valid (draft)"}
    return {"state": "bad", "text": verdict.get("error") or "verification failed"}
