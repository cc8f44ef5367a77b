import os

from celery import Celery
from celery.signals import worker_process_init

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

app = Celery("registry")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@worker_process_init.connect
def _yield_the_cpu_to_requests(**_) -> None:
    """Jobs and report rendering are background work: where a worker shares CPUs with the web process (the local
    stack, a small deployment), a request must not queue behind a PDF being rendered. WORKER_NICENESS=0 turns
    this off."""
    niceness = int(os.environ.get("WORKER_NICENESS", "10"))
    if niceness > 0:
        os.nice(niceness)
