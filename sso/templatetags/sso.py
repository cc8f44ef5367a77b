"""`{% sso_login_state as sso %}`: whether SSO is on, the provider's name, whether passwords are turned off, and the
URL that starts a provider login. Safe to load while SSO is off (sso.enabled is then false)."""
from urllib.parse import urlencode

from django import template
from django.conf import settings
from django.urls import reverse

register = template.Library()


@register.simple_tag(takes_context=True)
def sso_login_state(context, next_url: str = "") -> dict:
    enabled = getattr(settings, "SSO_ENABLED", False)
    request = context.get("request")
    state = {
        "enabled": enabled,
        "provider_name": getattr(settings, "OIDC_PROVIDER_NAME", ""),
        "local_passwords_disabled": enabled and getattr(settings, "OIDC_DISABLE_LOCAL_PASSWORDS", False),
        "failed": bool(request is not None and request.GET.get("sso") == "failed"),
        "sign_in_url": "",
        "token_url": "",
    }
    if enabled:
        start = reverse("oidc_authentication_init")
        state["sign_in_url"] = f"{start}?{urlencode({'next': next_url})}" if next_url else start
        state["token_url"] = reverse("sso-api-token")
    return state
