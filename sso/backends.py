"""Authentication backends: the bank's OIDC provider (mozilla-django-oidc, code flow with PKCE), and the refusal of
local passwords when OIDC_DISABLE_LOCAL_PASSWORDS is set."""
import logging

import requests
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.validators import UnicodeUsernameValidator
from django.core.exceptions import PermissionDenied, SuspiciousOperation, ValidationError
from mozilla_django_oidc.auth import OIDCAuthenticationBackend

from foundation.errors import DomainError
from sso import provider, services

logger = logging.getLogger(__name__)


class LocalPasswordsDisabledBackend:
    """Listed before ModelBackend: a username and password are refused outright (Django stops asking the backends
    that follow when one raises PermissionDenied), wherever they are offered: admin, portal, any login form."""

    def authenticate(self, request, username=None, password=None, **credentials):
        if password is not None:
            raise PermissionDenied("Local passwords are turned off; sign in through the provider.")
        return None

    def get_user(self, user_id):
        return None


class RegistryOIDCBackend(OIDCAuthenticationBackend):
    """Users are matched by the username claim (OIDC_USERNAME_CLAIM), created on first login, and their roles and
    teams refreshed from the groups claim at every login (sso.services.sign_in_from_claims)."""

    def __init__(self, *args, **kwargs):
        # Django builds a backend for every request of a logged-in user (to load the user); the provider's
        # endpoints are only looked up when a login actually runs, so a provider outage never breaks a session.
        self.UserModel = get_user_model()

    @staticmethod
    def get_settings(attr, *args):
        return provider.setting(attr, *args)

    OIDC_OP_TOKEN_ENDPOINT = property(lambda self: provider.setting("OIDC_OP_TOKEN_ENDPOINT"))
    OIDC_OP_USER_ENDPOINT = property(lambda self: provider.setting("OIDC_OP_USER_ENDPOINT"))
    OIDC_OP_JWKS_ENDPOINT = property(lambda self: provider.setting("OIDC_OP_JWKS_ENDPOINT", None))
    OIDC_RP_CLIENT_ID = property(lambda self: settings.OIDC_RP_CLIENT_ID)
    OIDC_RP_CLIENT_SECRET = property(lambda self: settings.OIDC_RP_CLIENT_SECRET)
    OIDC_RP_SIGN_ALGO = property(lambda self: settings.OIDC_RP_SIGN_ALGO)
    OIDC_RP_IDP_SIGN_KEY = property(lambda self: getattr(settings, "OIDC_RP_IDP_SIGN_KEY", None))

    def authenticate(self, request, **kwargs):
        try:
            return super().authenticate(request, **kwargs)
        except (requests.RequestException, SuspiciousOperation, DomainError) as error:
            # The callback then sends the browser back to the login page with a message; the reason goes to the
            # log (never the tokens or the client secret, which these errors do not carry).
            logger.warning("SSO login failed: %s: %s", type(error).__name__,
                           getattr(error, "message", None) or _without_body(error))
            return None

    def verify_token(self, token, **kwargs):
        """mozilla-django-oidc checks the signature and the nonce; the audience and issuer are checked here."""
        payload = super().verify_token(token, **kwargs)
        audience = payload.get("aud")
        audiences = audience if isinstance(audience, list) else [audience]
        if settings.OIDC_RP_CLIENT_ID not in audiences:
            raise SuspiciousOperation("The ID token was issued for another client (aud).")
        issuer = provider.setting("OIDC_OP_ISSUER", "")
        if issuer and payload.get("iss") != issuer:
            raise SuspiciousOperation(f"The ID token's issuer {payload.get('iss')!r} is not {issuer!r}.")
        return payload

    def _username(self, claims) -> str:
        value = claims.get(settings.OIDC_USERNAME_CLAIM)
        return value if isinstance(value, str) else ""

    def verify_claims(self, claims):
        username = self._username(claims)
        try:
            UnicodeUsernameValidator()(username)
        except ValidationError:
            logger.warning("SSO login refused: the %s claim %r is not a valid user name.",
                           settings.OIDC_USERNAME_CLAIM, username)
            return False
        return 0 < len(username) <= 150

    def filter_users_by_claims(self, claims):
        username = self._username(claims)
        return self.UserModel.objects.filter(username__iexact=username)

    def create_user(self, claims):
        return services.sign_in_from_claims(username=self._username(claims), claims=claims)

    def update_user(self, user, claims):
        return services.sign_in_from_claims(username=user.username, claims=claims)

    def get_userinfo(self, access_token, id_token, payload):
        # The groups may be in the ID token, the userinfo answer or both: userinfo wins where both have a claim.
        return {**payload, **super().get_userinfo(access_token, id_token, payload)}


def _without_body(error) -> str:
    # requests' HTTPError from the token endpoint quotes the provider's answer; keep the status line only.
    response = getattr(error, "response", None)
    if response is not None:
        return f"{response.status_code} from {response.url.split('?')[0]}"
    return type(error).__name__
