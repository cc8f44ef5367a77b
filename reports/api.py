"""Report endpoints (read-only for every role): list, detail, the PDF, its verification, the root certificate."""
from django.http import HttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema
from rest_framework.response import Response
from rest_framework.views import APIView

from foundation.errors import InvalidInput
from foundation.pagination import ARRAY_OF_OBJECTS, filter_parameter, list_parameters, paginated_response
from foundation.permissions import role_permission
from reports import selectors
from reports.models import Report

ReportReads = role_permission()


def report_document(report: Report) -> dict:
    return {
        "id": report.pk,
        "kind": report.kind,
        "model": report.model.name,
        "title": selectors.report_title(report),
        "change_request": report.change_request_id,
        "round": report.round if report.kind == Report.Kind.CHANGE_IMPACT else None,
        "alias_change": report.alias_change_id,
        "status": report.status,
        "sha256": report.sha256 if report.is_final else None,
        "audit_head": ({"sequence": report.audit_head_sequence, "hash": report.audit_head_hash}
                       if report.audit_head_hash else None),
        "signatures": [{"field": s["field"], "signer": s.get("name"), "signed_at": s.get("signed_at"),
                        "decision": s.get("decision")} for s in report.signatures],
        "pending_fields": [slot["field"] for slot in report.signature_fields
                           if slot["field"] not in {s["field"] for s in report.signatures}],
        "created_at": report.created_at,
        "finalised_at": report.finalised_at,
        "pdf": f"/api/v1/reports/{report.pk}/pdf",
        "verification": f"/api/v1/reports/{report.pk}/verification",
    }


class ReportListView(APIView):
    permission_classes = [ReportReads]

    @extend_schema(responses=ARRAY_OF_OBJECTS, operation_id="reports_list", parameters=list_parameters(
        filter_parameter("model", "Only reports about this model."),
        filter_parameter("kind", "change_impact or rollback."),
        filter_parameter("status", "draft, final or superseded."),
        filter_parameter("change_request", "Only the reports of this change request.", OpenApiTypes.INT)))
    def get(self, request):
        params = request.query_params
        change_request = params.get("change_request")
        if change_request and not change_request.isdigit():
            raise InvalidInput(f"change_request must be a change request id, not {change_request!r}.",
                               field="change_request")
        queryset = selectors.reports(model_name=params.get("model"), kind=params.get("kind"),
                                     status=params.get("status"), change_request_id=change_request or None)
        return paginated_response(request, queryset, ordering=("-pk",),
                                  serialize=lambda page: [report_document(report) for report in page])


class ReportDetailView(APIView):
    permission_classes = [ReportReads]

    @extend_schema(responses=OpenApiTypes.OBJECT)
    def get(self, request, report_id):
        return Response(report_document(selectors.get_report(report_id)))


class ReportPdfView(APIView):
    permission_classes = [ReportReads]

    @extend_schema(responses={(200, "application/pdf"): bytes})
    def get(self, request, report_id):
        return pdf_response(selectors.get_report(report_id))


class ReportVerificationView(APIView):
    permission_classes = [ReportReads]

    @extend_schema(responses=OpenApiTypes.OBJECT)
    def get(self, request, report_id):
        return Response(selectors.verify_report(selectors.get_report(report_id)))


class RootCertificateView(APIView):
    permission_classes = [ReportReads]

    @extend_schema(responses={(200, "application/x-pem-file"): bytes})
    def get(self, request):
        return root_certificate_response()


def root_certificate_response() -> HttpResponse:
    """The organisation root certificate as a download, with its fingerprint to compare before pinning it."""
    root = selectors.root_certificate()
    response = HttpResponse(root["pem"], content_type="application/x-pem-file")
    response["Content-Disposition"] = 'attachment; filename="root.pem"'
    response["X-Root-SHA256-Fingerprint"] = root["summary"]["sha256_fingerprint"]
    return response


def pdf_response(report: Report) -> HttpResponse:
    response = HttpResponse(selectors.report_pdf(report), content_type="application/pdf")
    response["Content-Disposition"] = f'attachment; filename="{report.filename}"'
    response["X-Report-Status"] = report.status
    if report.is_final:
        response["X-Report-SHA256"] = report.sha256
    return response
