"""GET /healthz: 200 when the database, the broker and object storage all answer; 503 naming the one that doesn't."""
import redis
from django.conf import settings
from django.db import connection
from django.http import JsonResponse

from foundation import storage
from foundation.errors import StorageUnavailable


def _check_database():
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")


def _check_broker():
    client = redis.Redis.from_url(settings.CELERY_BROKER_URL, socket_connect_timeout=2, socket_timeout=2)
    try:
        client.ping()
    finally:
        client.close()


def healthz(request):
    checks = {"database": _check_database, "broker": _check_broker, "object_storage": storage.ping}
    results, failing = {}, []
    for name, check in checks.items():
        try:
            check()
            results[name] = "ok"
        except (StorageUnavailable, Exception) as error:  # any failure of a dependency is reported, not raised
            results[name] = f"unavailable: {getattr(error, 'message', None) or type(error).__name__}"
            failing.append(name)
    if failing:
        return JsonResponse({"status": "unavailable", "failing": failing, "checks": results}, status=503)
    return JsonResponse({"status": "ok", "checks": results})
