"""The one door to the bank's OIDC provider settings: endpoints configured one by one, else from its discovery
document, fetched when the first login needs it (never at start-up, so the registry starts while the provider is
down) and kept for the life of the process."""
import threading

import requests
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from foundation.errors import DomainError

DISCOVERY_SUFFIX = "/.well-known/openid-configuration"
# Our setting name -> the discovery document's key.
_DISCOVERED = {
    "OIDC_OP_AUTHORIZATION_ENDPOINT": "authorization_endpoint",
    "OIDC_OP_TOKEN_ENDPOINT": "token_endpoint",
    "OIDC_OP_USER_ENDPOINT": "userinfo_endpoint",
    "OIDC_OP_JWKS_ENDPOINT": "jwks_uri",
    "OIDC_OP_ISSUER": "issuer",
}
_discovery_lock = threading.Lock()
_discovery: dict | None = None


class ProviderUnavailable(DomainError):
    """The provider's discovery document could not be read."""


def discovery_url() -> str:
    url = settings.OIDC_OP_DISCOVERY_URL.rstrip("/")
    return url if url.endswith(DISCOVERY_SUFFIX) else url + DISCOVERY_SUFFIX


def _discovery_document() -> dict:
    global _discovery
    with _discovery_lock:
        if _discovery is None:
            try:
                response = requests.get(discovery_url(), timeout=settings.OIDC_TIMEOUT,
                                        verify=settings.OIDC_VERIFY_SSL)
                response.raise_for_status()
                document = response.json()
            except (requests.RequestException, ValueError) as error:
                raise ProviderUnavailable(
                    f"The sign-on provider's discovery document ({discovery_url()}) cannot be read: "
                    f"{type(error).__name__}. Try again later, or ask the platform team to check OIDC_OP_DISCOVERY_URL."
                ) from None
            if not isinstance(document, dict):
                raise ProviderUnavailable(f"{discovery_url()} is not an OpenID Connect discovery document.")
            _discovery = document
        return _discovery


def setting(name: str, *default):
    """A setting as mozilla-django-oidc asks for it; provider endpoints not configured come from discovery."""
    if name in _DISCOVERED:
        value = getattr(settings, name, "")
        if not value and settings.OIDC_OP_DISCOVERY_URL:
            value = _discovery_document().get(_DISCOVERED[name])
        if value:
            return value
    elif hasattr(settings, name):
        return getattr(settings, name)
    if default:
        return default[0]
    raise ImproperlyConfigured(f"Set {name}; the provider's discovery document does not give it either.")
