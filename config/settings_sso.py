"""Settings of single sign-on through the bank's OIDC provider (all from the environment)."""

SSO_APPS: list[str] = []
SSO_MIDDLEWARE: list[str] = []
SSO_AUTHENTICATION_BACKENDS: list[str] = []
