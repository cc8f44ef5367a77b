"""Typed readers for settings that come from the environment; they fail loudly on bad values."""
import json
import os
from pathlib import Path
from urllib.parse import unquote, urlparse

from django.core.exceptions import ImproperlyConfigured

from scripts import local_secrets


def env_str(name: str, default: str | None = None) -> str:
    value = os.environ.get(name, default)
    if value is None:
        raise ImproperlyConfigured(f"Set the environment variable {name}.")
    return value


def env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    if raw.lower() in ("1", "true", "yes", "on"):
        return True
    if raw.lower() in ("0", "false", "no", "off"):
        return False
    raise ImproperlyConfigured(f"{name}={raw!r} is not a boolean; use true or false.")


def env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ImproperlyConfigured(f"{name}={raw!r} is not an integer.") from None


def env_secret(name: str, default: str | None = None, *, generated_file: Path | None = None) -> str:
    """A secret from the file named by NAME_FILE, else NAME, else `default` (a value found at run time, such as the
    local S3 server's generated credentials), else the file of secrets that scripts/local_secrets.py generated for
    the local stack. Never a constant: without any of them, fail and say how to set it."""
    file_path = os.environ.get(f"{name}_FILE")
    if file_path:
        try:
            with open(file_path, encoding="utf-8") as handle:
                value = handle.read().strip()
        except OSError as error:
            raise ImproperlyConfigured(f"{name}_FILE={file_path!r} cannot be read: {error.strerror}.") from None
        if not value:
            raise ImproperlyConfigured(f"{name}_FILE={file_path!r} is empty; put the secret in it.")
        return value
    value = os.environ.get(name)
    if value:
        return value
    if default:
        return default
    if generated_file is not None:
        try:
            value = local_secrets.read_secrets(generated_file).get(name)
        except local_secrets.SecretsFileError as error:
            raise ImproperlyConfigured(str(error)) from None
        if value:
            return value
    raise ImproperlyConfigured(
        f"Set {name} (or {name}_FILE, the path of a file that holds it); it has no default. "
        "The local stack (make up) generates one into .var/secrets.json.")


def env_header(name: str) -> tuple[str, str] | None:
    """`Header-Name: value` -> the (META key, value) pair Django's SECURE_PROXY_SSL_HEADER takes; None when unset."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return None
    header, separator, value = (part.strip() for part in raw.partition(":"))
    if not separator or not header or not value or not all(c.isalnum() or c == "-" for c in header):
        raise ImproperlyConfigured(f"{name}={raw!r} is not `Header-Name: value`, e.g. `X-Forwarded-Proto: https`.")
    return "HTTP_" + header.upper().replace("-", "_"), value


def env_list(name: str, default: str) -> list[str]:
    """A comma-separated list; blanks dropped."""
    return [item.strip() for item in os.environ.get(name, default).split(",") if item.strip()]


def env_json(name: str, default):
    """A JSON value (object, list...) from the environment."""
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        return json.loads(raw)
    except ValueError as error:
        raise ImproperlyConfigured(f"{name} is not valid JSON: {error}.") from None


def database_from_url(url: str) -> dict:
    """postgresql://user:password@host:port/name -> Django DATABASES entry (psycopg 3)."""
    parsed = urlparse(url)
    if parsed.scheme not in ("postgres", "postgresql"):
        raise ImproperlyConfigured(f"DATABASE_URL must be a postgresql:// URL, not {parsed.scheme}://")
    return {
        "ENGINE": "foundation.postgresql",  # Django's, with a health check that costs no round trip
        "NAME": unquote(parsed.path.lstrip("/")),
        "USER": unquote(parsed.username or ""),
        "PASSWORD": unquote(parsed.password or ""),
        "HOST": parsed.hostname or "",
        "PORT": str(parsed.port or ""),
        "CONN_MAX_AGE": 60,
        "CONN_HEALTH_CHECKS": True,
    }
