"""The regulator portal: read-only pages behind Django's session login. Reports per model with a verification
badge and a download link, each report's signatures, the audit trail, and the e-mail subscription."""
from functools import wraps

from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from foundation.anchoring import verify_anchored_chain
from foundation.errors import DomainError, StorageUnavailable
from foundation.http import error_response, wants_json
from foundation.models import AuditEvent
from foundation.roles import REGULATOR, has_role
from registry.models import RegisteredModel
from reports import api, selectors, services
from reports.models import ReportSubscription

AUDIT_PAGE_SIZE = 200


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
        "verification": selectors.verify_report(report),
    })


@regulator_required
def report_pdf(request, report_id):
    return api.pdf_response(selectors.get_report(report_id))


@regulator_required
def root_certificate(request):
    return api.root_certificate_response()


@regulator_required
def audit_trail(request):
    model_name = request.GET.get("model") or None
    events = AuditEvent.objects.all()
    if model_name:
        events = events.filter(model_name=model_name)
    chain, anchor = verify_anchored_chain()
    return render(request, "reports/portal/audit.html", {
        "events": events[:AUDIT_PAGE_SIZE], "model_name": model_name, "chain": chain, "anchor": anchor,
        "page_size": AUDIT_PAGE_SIZE,
        "models": RegisteredModel.objects.order_by("name").values_list("name", flat=True),
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
