"""With OIDC_DISABLE_LOCAL_PASSWORDS the login forms are closed: a posted password is refused with a message that
says where to sign in, and the regulator portal's login page sends the browser to the provider."""
from urllib.parse import urlencode

from django.conf import settings
from django.http import HttpResponseRedirect
from django.urls import NoReverseMatch, reverse

from foundation.http import error_response


def _path(name: str) -> str | None:
    try:
        return reverse(name)
    except NoReverseMatch:
        return None


class LocalPasswordsMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        login_paths = {_path("admin:login"), _path("portal-login")} - {None}
        if request.path_info in login_paths and request.method == "POST":
            return error_response(
                request, 403, f"Password login is turned off here; sign in with {settings.OIDC_PROVIDER_NAME} at "
                f"{reverse('oidc_authentication_init')}. Scripts use an API token (Authorization: Token <key>), "
                f"which you can create at {reverse('sso-api-token')}.", code="local_passwords_disabled")
        if request.path_info == _path("portal-login") and request.method == "GET":
            next_url = request.GET.get("next") or "/portal/"
            return HttpResponseRedirect(f"{reverse('oidc_authentication_init')}?{urlencode({'next': next_url})}")
        return self.get_response(request)
