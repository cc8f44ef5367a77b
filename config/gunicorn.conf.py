"""gunicorn settings of the web process, wherever it runs: scripts/stack.sh, the Docker image and
tests/e2e/test_keepalive.py all start `gunicorn -c config/gunicorn.conf.py`, adding only where to listen (--bind)
and, for the local stack, its pid and log files. Each value can be changed through the environment.
"""
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # gunicorn runs this file from .venv/bin

from config.env import env_bool, env_int  # noqa: E402

wsgi_app = "config.wsgi:application"
# The master imports the application once and forks workers from it: a new or recycled worker starts in
# milliseconds instead of spending ~2 s of CPU importing Django, DRF and the apps again (at max_requests below a
# busy 2-core web host recycled a worker every few seconds of load), and the workers share the imported code's
# memory. The master opens no database connection (pre_fork closes any), so no worker inherits a socket.
preload_app = env_bool("WEB_PRELOAD_APP", True)
worker_class = "gthread"
workers = env_int("WEB_WORKERS", 2)
threads = env_int("WEB_THREADS", 8)
# A request may stream a large weights file for as long as the network needs.
timeout = env_int("WEB_TIMEOUT_SECONDS", 3600)
# Idle keep-alive connections stay open longer than clients and proxies keep theirs (AWS ALB 60 s, nginx's
# upstream keepalive_timeout 60 s), so the server is never the side that closes a connection the other side is
# about to reuse. gunicorn's default of 2 s races a client that polls every 2 s and makes it see resets.
keepalive = env_int("WEB_KEEPALIVE_SECONDS", 75)
# Each worker is replaced after about this many requests, so slow memory growth never accumulates (a web worker
# loads no ML library; its memory is flat). The jitter (a fifth) keeps workers from recycling together: at
# 1,000 +- 100 both workers of a busy host retired within a second of each other and for ~4 s no worker took new
# connections. A recycling worker stops accepting, finishes its in-flight requests (for up to graceful_timeout:
# as long as an upload may take) and answers a request that arrives on one of its kept-alive connections with
# "Connection: close"; the client's next request goes to another worker.
max_requests = env_int("WEB_MAX_REQUESTS", 20000)
max_requests_jitter = env_int("WEB_MAX_REQUESTS_JITTER", 4000)
graceful_timeout = env_int("WEB_GRACEFUL_TIMEOUT_SECONDS", timeout)
# A request thread that holds a row lock or the audit chain's lock and has just been answered by PostgreSQL waits
# for the GIL before it can commit; with Python's default 5 ms switch interval and eight threads per worker, that
# wait (not the work) sets the write throughput under concurrency. A 0.5 ms interval hands the GIL over sooner.
GIL_SWITCH_INTERVAL_S = env_int("WEB_GIL_SWITCH_INTERVAL_US", 500) / 1_000_000


def pre_fork(server, worker):
    if preload_app:
        from django.db import connections

        connections.close_all()


def post_fork(server, worker):
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)


def child_exit(server, worker):
    # prometheus-client's multiprocess mode (PROMETHEUS_MULTIPROC_DIR): a worker that exits has its live gauges
    # dropped from the shared directory, so /metrics never adds up a dead process.
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)
