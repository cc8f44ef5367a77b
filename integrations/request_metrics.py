"""Request latency by view, method and status, measured around the whole middleware stack.

Under gunicorn with several workers (and beside Celery workers) set PROMETHEUS_MULTIPROC_DIR to a directory the
processes share and empty it when the service starts: prometheus-client then keeps each process's samples in a
file there and /metrics adds them up (integrations.metrics)."""
import time

from prometheus_client import Histogram

REQUEST_SECONDS = Histogram(
    "registry_http_request_duration_seconds", "Time to answer an HTTP request, by view, method and status.",
    ["view", "method", "status"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0),
)


def view_label(request) -> str:
    """The URL pattern's name (or route), never the raw path: one series per view, whatever the ids in the URL."""
    match = getattr(request, "resolver_match", None)
    if match is None:
        return "unmatched"
    return match.view_name or match.route or "unnamed"


class RequestMetricsMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        started = time.perf_counter()
        response = self.get_response(request)
        REQUEST_SECONDS.labels(view=view_label(request), method=request.method,
                               status=str(response.status_code)).observe(time.perf_counter() - started)
        return response
