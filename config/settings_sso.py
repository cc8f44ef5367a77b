"""Settings of single sign-on through the bank's OIDC provider (all from the environment).

SSO is on when OIDC_RP_CLIENT_ID is set; without it nothing here changes how anyone logs in. The provider's
endpoints come from its discovery document (OIDC_OP_DISCOVERY_URL, read when the first login starts, never at
start-up) or one by one (OIDC_OP_AUTHORIZATION_ENDPOINT, OIDC_OP_TOKEN_ENDPOINT, OIDC_OP_USER_ENDPOINT,
OIDC_OP_JWKS_ENDPOINT), which win over discovery. README, "Single sign-on", lists every setting.
"""
from django.core.exceptions import ImproperlyConfigured

from config.env import env_bool, env_int, env_json, env_secret, env_str
from foundation.roles import ALL_ROLES as _ALL_ROLES  # underscore: not a setting of its own

OIDC_RP_CLIENT_ID = env_str("OIDC_RP_CLIENT_ID", "")
SSO_ENABLED = bool(OIDC_RP_CLIENT_ID)

# The app holds the login button, the token page and the claim mapping; it has no models, so it is always
# installed (the admin login template loads its tags) and does nothing while SSO is off.
SSO_APPS: list[str] = ["sso"]
SSO_MIDDLEWARE: list[str] = []
SSO_AUTHENTICATION_BACKENDS: list[str] = []

# Read whether SSO is on or not, so that a typo in one of them fails loudly before anybody relies on it.
OIDC_PROVIDER_NAME = env_str("OIDC_PROVIDER_NAME", "single sign-on")
OIDC_DISABLE_LOCAL_PASSWORDS = env_bool("OIDC_DISABLE_LOCAL_PASSWORDS", False)
OIDC_GROUPS_CLAIM = env_str("OIDC_GROUPS_CLAIM", "groups")
OIDC_USERNAME_CLAIM = env_str("OIDC_USERNAME_CLAIM", "preferred_username")
# Claim value -> one of the four roles; empty: a claim value that is a role's name grants that role.
OIDC_ROLE_MAP = env_json("OIDC_ROLE_MAP", {})
# Claim value -> team name, and/or a prefix: with OIDC_TEAM_PREFIX="team:" the value "team:risk-models" puts the
# user in the team risk-models. With neither set, teams are left as the admin manages them.
OIDC_TEAM_MAP = env_json("OIDC_TEAM_MAP", {})
OIDC_TEAM_PREFIX = env_str("OIDC_TEAM_PREFIX", "")

if not isinstance(OIDC_ROLE_MAP, dict) or not all(isinstance(v, str) for v in OIDC_ROLE_MAP.values()):
    raise ImproperlyConfigured('OIDC_ROLE_MAP must be a JSON object {"claim value": "role"}.')
if not isinstance(OIDC_TEAM_MAP, dict) or not all(isinstance(v, str) for v in OIDC_TEAM_MAP.values()):
    raise ImproperlyConfigured('OIDC_TEAM_MAP must be a JSON object {"claim value": "team name"}.')
_unknown_roles = sorted(set(OIDC_ROLE_MAP.values()) - set(_ALL_ROLES))
if _unknown_roles:
    raise ImproperlyConfigured(f"OIDC_ROLE_MAP maps to {', '.join(_unknown_roles)}; the roles are "
                               f"{', '.join(_ALL_ROLES)}.")
if OIDC_DISABLE_LOCAL_PASSWORDS and not SSO_ENABLED:
    raise ImproperlyConfigured("OIDC_DISABLE_LOCAL_PASSWORDS is set but OIDC_RP_CLIENT_ID is not: nobody could log "
                               "in. Configure the OIDC client or turn local passwords back on.")

if SSO_ENABLED:
    SSO_APPS = ["sso", "mozilla_django_oidc"]
    SSO_MIDDLEWARE = ["sso.middleware.LocalPasswordsMiddleware"] if OIDC_DISABLE_LOCAL_PASSWORDS else []
    # The refusal of passwords comes first: it stops Django's ModelBackend from being asked at all.
    SSO_AUTHENTICATION_BACKENDS = (["sso.backends.LocalPasswordsDisabledBackend"] if OIDC_DISABLE_LOCAL_PASSWORDS
                                   else []) + ["sso.backends.RegistryOIDCBackend"]

    OIDC_RP_CLIENT_SECRET = env_secret("OIDC_RP_CLIENT_SECRET")
    OIDC_RP_SIGN_ALGO = env_str("OIDC_RP_SIGN_ALGO", "RS256")
    OIDC_RP_SCOPES = env_str("OIDC_RP_SCOPES", "openid email profile")
    OIDC_OP_DISCOVERY_URL = env_str("OIDC_OP_DISCOVERY_URL", "")
    OIDC_OP_AUTHORIZATION_ENDPOINT = env_str("OIDC_OP_AUTHORIZATION_ENDPOINT", "")
    OIDC_OP_TOKEN_ENDPOINT = env_str("OIDC_OP_TOKEN_ENDPOINT", "")
    OIDC_OP_USER_ENDPOINT = env_str("OIDC_OP_USER_ENDPOINT", "")
    OIDC_OP_JWKS_ENDPOINT = env_str("OIDC_OP_JWKS_ENDPOINT", "")
    # The issuer the ID tokens must name; default: the discovery document's.
    OIDC_OP_ISSUER = env_str("OIDC_OP_ISSUER", "")
    if not OIDC_OP_DISCOVERY_URL and not (OIDC_OP_AUTHORIZATION_ENDPOINT and OIDC_OP_TOKEN_ENDPOINT
                                          and OIDC_OP_USER_ENDPOINT):
        raise ImproperlyConfigured(
            "SSO is on (OIDC_RP_CLIENT_ID is set) but the provider is not: set OIDC_OP_DISCOVERY_URL, or "
            "OIDC_OP_AUTHORIZATION_ENDPOINT, OIDC_OP_TOKEN_ENDPOINT and OIDC_OP_USER_ENDPOINT "
            "(and OIDC_OP_JWKS_ENDPOINT for RS256/ES256 ID tokens).")

    # Authorization code flow with PKCE (S256) and a nonce; tokens are not kept in the session.
    OIDC_USE_PKCE = True
    OIDC_PKCE_CODE_CHALLENGE_METHOD = "S256"
    OIDC_USE_NONCE = True
    OIDC_CREATE_USER = True
    OIDC_TIMEOUT = env_int("OIDC_TIMEOUT_SECONDS", 10)
    OIDC_VERIFY_SSL = env_bool("OIDC_VERIFY_SSL", True)
    OIDC_TOKEN_USE_BASIC_AUTH = env_bool("OIDC_TOKEN_USE_BASIC_AUTH", False)
    OIDC_AUTHENTICATE_CLASS = "sso.views.SignInView"
    LOGIN_REDIRECT_URL = env_str("OIDC_LOGIN_REDIRECT_URL", "/admin/")
    LOGIN_REDIRECT_URL_FAILURE = "/admin/login/?sso=failed"
