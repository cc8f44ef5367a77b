"""Settings of the platform integrations (Prometheus metrics, webhooks, alarm-driven rollback)."""

INTEGRATION_APPS: list[str] = []
# Middleware that must wrap everything else (request timing), and middleware that runs last.
METRICS_MIDDLEWARE_BEFORE: list[str] = []
METRICS_MIDDLEWARE_AFTER: list[str] = []
