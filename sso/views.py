"""Pages of single sign-on: the start of the provider login, and the page where a user creates their API token."""
from django.conf import settings
from django.contrib import admin
from django.contrib.auth.decorators import login_required
from django.shortcuts import render
from django.views.decorators.cache import never_cache
from mozilla_django_oidc.views import OIDCAuthenticationRequestView
from rest_framework.authtoken.models import Token

from sso import provider, services


class SignInView(OIDCAuthenticationRequestView):
    """Redirects to the provider's authorization endpoint (state, nonce and a PKCE S256 challenge in the session)."""

    def __init__(self, **kwargs):
        # The endpoint is looked up per request (discovery may not have been read yet), not when the view is built.
        super(OIDCAuthenticationRequestView, self).__init__(**kwargs)

    get_settings = staticmethod(provider.setting)
    OIDC_OP_AUTH_ENDPOINT = property(lambda self: provider.setting("OIDC_OP_AUTHORIZATION_ENDPOINT"))
    OIDC_RP_CLIENT_ID = property(lambda self: settings.OIDC_RP_CLIENT_ID)

    def get(self, request):
        try:
            return super().get(request)
        except provider.ProviderUnavailable as error:
            return render(request, "sso/unavailable.html", {**admin.site.each_context(request),
                                                            "message": error.message}, status=503)


@never_cache
@login_required(login_url="admin:login")
def api_token(request):
    """GET: whether the user has a token. POST: a new token, shown on this answer only."""
    created, replaced = None, False
    if request.method == "POST":
        replaced = Token.objects.filter(user=request.user).exists()
        created = services.create_api_token(user=request.user)
    existing = Token.objects.filter(user=request.user).first()
    return render(request, "sso/api_token.html", {
        **admin.site.each_context(request), "title": "Your API token", "created": created, "replaced": replaced,
        "existing": existing,
        "api_base": request.build_absolute_uri("/api/v1/"),
    })
