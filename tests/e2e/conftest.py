"""End-to-end fixtures: a real Celery worker process and a real gunicorn process on the test database.

Their data must be committed to be seen by other processes, so these tests use `committed_db` (no wrapping
transaction) and unique names; the test database is dropped at the end of the session.
"""
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import requests
from django.db import connection

from tests.conftest import make_user

ROOT = Path(__file__).resolve().parents[2]
# Playwright's sync API keeps an event loop running in this thread; the test's own ORM calls are still
# synchronous, so Django's async-safety guard is lifted for the test process (never for the server).
os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
VENV_BIN = Path(sys.executable).parent


@pytest.fixture
def committed_db(django_db_setup, django_db_blocker):
    with django_db_blocker.unblock():
        yield


@pytest.fixture
def unique():
    return uuid.uuid4().hex[:8]


@pytest.fixture
def e2e_users(committed_db, unique):
    from foundation.roles import APPROVER, ML_ENGINEER, OPS, REGULATOR

    return {
        "engineer": make_user(f"alice-{unique}", ML_ENGINEER),
        "approver": make_user(f"bob-{unique}", APPROVER),
        "approver2": make_user(f"carol-{unique}", APPROVER),
        "ops": make_user(f"oscar-{unique}", OPS),
        "regulator": make_user(f"rita-{unique}", REGULATOR),
    }


def _process_env() -> dict:
    settings_dict = connection.settings_dict
    env = dict(os.environ)
    env.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
    env.update({
        "DJANGO_SETTINGS_MODULE": "tests.settings",
        "DATABASE_URL": (f"postgresql://{settings_dict['USER'] or 'postgres'}@{settings_dict['HOST'] or '127.0.0.1'}:"
                         f"{settings_dict['PORT'] or 5432}/{settings_dict['NAME']}"),
        "PYTHONUNBUFFERED": "1",
        "CELERY_VISIBILITY_TIMEOUT": "15",
    })
    return env


class WorkerProcess:
    """A `celery worker` process (prefork, one child) consuming the test broker's cpu queue."""

    def __init__(self, log_path: Path):
        self.log_path = log_path
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            [str(VENV_BIN / "celery"), "-A", "config", "worker", "--queues", "cpu", "--concurrency", "1",
             "--loglevel", "INFO", "--without-gossip", "--without-mingle", "--hostname", f"test-{uuid.uuid4().hex[:6]}@%h"],
            cwd=ROOT, env=_process_env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if b"ready." in self.log_path.read_bytes():
                return
            if self.process.poll() is not None:
                raise RuntimeError(f"worker exited early:\n{self.log_path.read_text()[-3000:]}")
            time.sleep(0.2)
        raise RuntimeError(f"worker did not get ready:\n{self.log_path.read_text()[-3000:]}")

    def kill(self) -> None:
        """SIGKILL the whole worker (parent and pool child) at once, as a crash or OOM kill would."""
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()


def _purge_test_queue() -> None:
    import redis
    from django.conf import settings

    redis.Redis.from_url(settings.CELERY_BROKER_URL).flushdb()


@pytest.fixture
def worker(committed_db, tmp_path):
    _purge_test_queue()
    process = WorkerProcess(tmp_path / "worker.log")
    process.start()
    yield process
    process.stop()


def wait_for_job(api, job_id: int, *, timeout: float = 300, until=("succeeded", "failed", "cancelled")) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = api.get(f"/api/v1/jobs/{job_id}").json()
        if body["status"] in until:
            return body
        time.sleep(0.3)
    raise AssertionError(f"job {job_id} still {body['status']} after {timeout} s: {body}")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def web_server(committed_db, tmp_path):
    """gunicorn serving the project on a free local port, against the test database; yields its base URL."""
    port = _free_port()
    log = open(tmp_path / "web.log", "ab")
    process = subprocess.Popen(
        [str(VENV_BIN / "gunicorn"), "config.wsgi:application", "--bind", f"127.0.0.1:{port}",
         "--worker-class", "gthread", "--workers", "1", "--threads", "4", "--timeout", "300"],
        cwd=ROOT, env=_process_env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    base_url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if requests.get(f"{base_url}/healthz", timeout=10).status_code in (200, 503):
                break
        except requests.RequestException:
            time.sleep(0.2)
    else:
        process.kill()
        raise RuntimeError((tmp_path / "web.log").read_text()[-3000:])
    yield base_url
    os.killpg(process.pid, signal.SIGTERM)
    process.wait(timeout=30)


@pytest.fixture
def browser():
    """Headless Debian Chromium driven by Playwright (never Playwright's own browser download)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(
            executable_path="/usr/bin/chromium", headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--no-first-run"],
        )
        yield instance
        instance.close()


def admin_login(page, base_url: str, username: str) -> None:
    page.goto(f"{base_url}/admin/login/")
    page.fill("#id_username", username)
    page.fill("#id_password", f"{username}-password")
    page.click("input[type=submit]")
    page.wait_for_url(f"{base_url}/admin/")
