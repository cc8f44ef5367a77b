"""Settings of the platform integrations (Prometheus metrics, webhooks, alarm-driven rollback), from the environment."""
import os
from pathlib import Path

from config.env import env_bool, env_int, env_list, env_secret, env_str
from scripts import local_secrets


def _optional_secret(name: str) -> str:
    """A secret that may be left unset: NAME_FILE, NAME, else the local stack's generated secrets file when it holds
    one (scripts/local_secrets.py); empty when none has it."""
    if os.environ.get(name) or os.environ.get(f"{name}_FILE"):
        return env_secret(name)
    secrets_file = Path(env_str("LOCAL_SECRETS_FILE", str(Path(__file__).resolve().parent.parent / ".var"
                                                         / "secrets.json")))
    try:
        return local_secrets.read_secrets(secrets_file).get(name) or ""
    except local_secrets.SecretsFileError:
        return ""


INTEGRATION_APPS: list[str] = ["integrations"]
# Request timing wraps everything else, so the status it records is the one the client got.
METRICS_MIDDLEWARE_BEFORE: list[str] = ["integrations.request_metrics.RequestMetricsMiddleware"]
METRICS_MIDDLEWARE_AFTER: list[str] = []

# /metrics answers a scraper that sends `Authorization: Bearer <METRICS_TOKEN>`, or one whose address (REMOTE_ADDR,
# the peer gunicorn sees) lies in METRICS_ALLOWED_NETWORKS (comma-separated CIDRs, e.g. "10.0.0.0/8,127.0.0.1/32").
# Neither set: every scrape is refused (403).
METRICS_TOKEN = _optional_secret("METRICS_TOKEN")
METRICS_ALLOWED_NETWORKS = env_list("METRICS_ALLOWED_NETWORKS", "")
# The audit chain is verified at most this often by a scrape (the walk reads every event); the result is kept.
METRICS_AUDIT_VERIFY_SECONDS = env_int("METRICS_AUDIT_VERIFY_SECONDS", 300)

# Webhooks. Destinations on private, loopback or link-local addresses are refused unless this is on (SSRF).
WEBHOOK_ALLOW_PRIVATE_NETWORKS = env_bool("WEBHOOK_ALLOW_PRIVATE_NETWORKS", False)
# Encrypts subscriptions' signing secrets at rest (Fernet). Unset: a key derived from SECRET_KEY (HKDF), so
# rotating SECRET_KEY without setting this makes the stored secrets unreadable; set it in production.
WEBHOOK_SECRETS_KEY = _optional_secret("WEBHOOK_SECRETS_KEY")
# The queue deliveries go to: the default one unless a deployment runs a worker for webhooks alone.
WEBHOOK_QUEUE = env_str("WEBHOOK_QUEUE", "cpu")
WEBHOOK_TIMEOUT_SECONDS = env_int("WEBHOOK_TIMEOUT_SECONDS", 10)
# Attempts per delivery (timeouts, refused connections, 429 and 5xx are retried with exponential back-off:
# base, 2 x base, 4 x base ... at most WEBHOOK_RETRY_BACKOFF_MAX_SECONDS apart).
WEBHOOK_MAX_ATTEMPTS = env_int("WEBHOOK_MAX_ATTEMPTS", 8)
WEBHOOK_RETRY_BACKOFF_SECONDS = env_int("WEBHOOK_RETRY_BACKOFF_SECONDS", 10)
WEBHOOK_RETRY_BACKOFF_MAX_SECONDS = env_int("WEBHOOK_RETRY_BACKOFF_MAX_SECONDS", 1800)
# Where the links in webhook payloads point.
PUBLIC_BASE_URL = env_str("PUBLIC_BASE_URL", "http://127.0.0.1:8000").rstrip("/")

# Periodic tasks of the integrations, merged into CELERY_BEAT_SCHEDULE by config/settings.py: queue again webhook
# deliveries whose broker message was lost, and verify the audit chain (a failure is announced to webhooks).
INTEGRATION_BEAT_SCHEDULE = {
    "resend-pending-webhook-deliveries": {
        "task": "integrations.resend_pending_deliveries",
        "schedule": env_int("WEBHOOK_RESEND_SECONDS", 300),
        "options": {"queue": "cpu"},
    },
    "verify-audit-chain": {
        "task": "integrations.verify_audit_chain",
        "schedule": env_int("AUDIT_VERIFY_SECONDS", 3600),
        "options": {"queue": "cpu"},
    },
}
