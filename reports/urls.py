"""Report API under /api/v1/reports/ and the regulator portal under /portal/ (included once by config/urls.py)."""
from django.contrib.auth import views as auth_views
from django.urls import include, path

from reports import api, portal

api_patterns = [
    path("", api.ReportListView.as_view(), name="report-list"),
    path("root-certificate", api.RootCertificateView.as_view(), name="report-root-certificate"),
    path("<int:report_id>/", api.ReportDetailView.as_view(), name="report-detail"),
    path("<int:report_id>/pdf", api.ReportPdfView.as_view(), name="report-pdf"),
    path("<int:report_id>/verification", api.ReportVerificationView.as_view(), name="report-verification"),
]

portal_patterns = [
    path("", portal.report_list, name="portal-reports"),
    path("login/", portal.PortalLoginView.as_view(), name="portal-login"),
    path("logout/", auth_views.LogoutView.as_view(next_page="portal-login"), name="portal-logout"),
    path("reports/<int:report_id>/", portal.report_detail, name="portal-report"),
    path("reports/<int:report_id>/pdf", portal.report_pdf, name="portal-report-pdf"),
    path("root.pem", portal.root_certificate, name="portal-root-certificate"),
    path("audit/", portal.audit_trail, name="portal-audit"),
    path("subscription", portal.subscription, name="portal-subscription"),
]

urlpatterns = [
    path("api/v1/reports/", include(api_patterns)),
    path("portal/", include(portal_patterns)),
]
