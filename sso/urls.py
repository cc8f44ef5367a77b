"""Single sign-on URLs, only while SSO is on (OIDC_RP_CLIENT_ID set); config/urls.py includes them at the root."""
from django.conf import settings
from django.urls import include, path

urlpatterns: list = []

if settings.SSO_ENABLED:
    from sso import views

    urlpatterns = [
        # callback/, authenticate/ (our SignInView, through OIDC_AUTHENTICATE_CLASS) and logout/
        path("oidc/", include("mozilla_django_oidc.urls")),
        path("sso/token/", views.api_token, name="sso-api-token"),
    ]
