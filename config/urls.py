from django.contrib import admin
from django.urls import include, path
from django.views.generic import RedirectView
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from config.health import healthz

urlpatterns = [
    path("", RedirectView.as_view(url="/admin/", permanent=False)),
    path("healthz", healthz, name="healthz"),
    path("admin/", admin.site.urls),
    path("api/v1/", include("registry.urls")),
    path("api/v1/", include("workers.urls")),
    path("api/v1/", include("governance.urls")),
    path("", include("reports.urls")),
    path("", include("integrations.urls")),
    path("", include("sso.urls")),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="api-docs"),
]

# Errors Django answers itself (unmatched URLs, oversized bodies, crashes) come out in the contract's shape too.
handler400 = "foundation.http.bad_request"
handler403 = "foundation.http.permission_denied"
handler404 = "foundation.http.not_found"
handler500 = "foundation.http.server_error"
