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
    """Drop this run's queued messages (its own key prefix only: another run may share the broker database)."""
    import redis
    from django.conf import settings

    client = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    prefix = settings.CELERY_BROKER_TRANSPORT_OPTIONS["global_keyprefix"]
    keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
    if keys:
        client.delete(*keys)


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


@pytest.fixture
def page(browser):
    """A fresh browser context per test, at a desktop size, waiting up to a minute for what a busy machine renders."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(60_000)
    yield page
    context.close()


def admin_login(page, base_url: str, username: str) -> None:
    page.goto(f"{base_url}/admin/login/")
    page.fill("#id_username", username)
    page.fill("#id_password", f"{username}-password")
    page.click("input[type=submit]")
    page.wait_for_url(f"{base_url}/admin/")


# --- fault injection (tests/e2e/test_faults.py) ----------------------------------------------------------------
# Processes started with settings of their own (a private Redis or S3 server) and a libpq application name, so
# that a test can find their database sessions in pg_stat_activity and terminate them.

# tests.settings takes the S3 server (and more) from its own defaults; a process of a fault test applies the JSON
# in TEST_SETTINGS_OVERRIDES to that module before Django reads it (a dict is merged into the setting's dict,
# names ending in _DIR become paths), then runs the named program.
_WITH_SETTINGS_OVERRIDES = (
    "import json, os, pathlib, sys\n"
    "import tests.settings as test_settings\n"
    "for name, value in json.loads(os.environ.get('TEST_SETTINGS_OVERRIDES') or '{}').items():\n"
    "    current = getattr(test_settings, name, None)\n"
    "    if isinstance(value, dict) and isinstance(current, dict):\n"
    "        value = {**current, **value}\n"
    "    setattr(test_settings, name, pathlib.Path(value) if name.endswith('_DIR') else value)\n"
    "program, sys.argv = sys.argv[1], sys.argv[1:]\n"
    "if program == 'celery':\n"
    "    from celery.__main__ import main\n"
    "else:\n"
    "    from gunicorn.app.wsgiapp import run as main\n"
    "sys.exit(main())\n"
)


def configured_process_env(*, application_name: str, settings_overrides: dict | None = None,
                           broker_url: str | None = None) -> dict:
    import json

    env = _process_env()
    env["PGAPPNAME"] = application_name  # libpq sends it; pg_stat_activity.application_name shows it
    env["TEST_SETTINGS_OVERRIDES"] = json.dumps(settings_overrides or {})
    if broker_url:
        env["TEST_CELERY_BROKER_URL"] = broker_url  # tests.settings gives it to Celery (environment and setting)
    return env


class ConfiguredWorker(WorkerProcess):
    """A worker like `worker`'s, with its own database application name and settings overrides."""

    def __init__(self, log_path: Path, *, application_name: str, settings_overrides: dict | None = None,
                 broker_url: str | None = None, concurrency: int = 1):
        super().__init__(log_path)
        self.application_name, self.settings_overrides, self.broker_url = application_name, settings_overrides, broker_url
        self.concurrency = concurrency

    def start(self) -> None:
        log = open(self.log_path, "ab")
        ready_before = self.log_path.read_bytes().count(b"ready.")
        self.process = subprocess.Popen(
            [sys.executable, "-c", _WITH_SETTINGS_OVERRIDES, "celery", "-A", "config", "worker", "--queues", "cpu",
             "--concurrency", str(self.concurrency), "--loglevel", "INFO", "--without-gossip", "--without-mingle",
             "--hostname", f"fault-{uuid.uuid4().hex[:6]}@%h"],
            cwd=ROOT, env=configured_process_env(application_name=self.application_name,
                                                 settings_overrides=self.settings_overrides,
                                                 broker_url=self.broker_url),
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.log_path.read_bytes().count(b"ready.") > ready_before:
                return
            if self.process.poll() is not None:
                raise RuntimeError(f"worker exited early:\n{self.log_path.read_text()[-3000:]}")
            time.sleep(0.2)
        self.kill()
        raise RuntimeError(f"worker did not get ready:\n{self.log_path.read_text()[-3000:]}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


class ConfiguredWebServer:
    """gunicorn like `web_server`'s, with its own database application name and settings overrides."""

    def __init__(self, log_path: Path, *, application_name: str, settings_overrides: dict | None = None,
                 broker_url: str | None = None, threads: int = 4):
        self.log_path, self.application_name = log_path, application_name
        self.settings_overrides, self.broker_url, self.threads = settings_overrides, broker_url, threads
        self.process: subprocess.Popen | None = None
        self.base_url = ""

    def start(self) -> str:
        port = _free_port()
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            [sys.executable, "-c", _WITH_SETTINGS_OVERRIDES, "gunicorn", "config.wsgi:application",
             "--bind", f"127.0.0.1:{port}", "--worker-class", "gthread", "--workers", "1",
             "--threads", str(self.threads), "--timeout", "300"],
            cwd=ROOT, env=configured_process_env(application_name=self.application_name,
                                                 settings_overrides=self.settings_overrides,
                                                 broker_url=self.broker_url),
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        self.base_url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if requests.get(f"{self.base_url}/healthz", timeout=10).status_code in (200, 503):
                    return self.base_url
            except requests.RequestException:
                if self.process.poll() is not None:
                    break
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(self.log_path.read_text()[-3000:])

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=30)


def database_sessions(application_name: str) -> list[dict]:
    """The test database's sessions opened by processes started with this application name."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pid, state, wait_event_type, query FROM pg_stat_activity "
                       "WHERE datname = current_database() AND application_name = %s", [application_name])
        return [dict(zip(("pid", "state", "wait_event_type", "query"), row)) for row in cursor.fetchall()]


def terminate_database_sessions(pids) -> None:
    with connection.cursor() as cursor:
        for pid in pids:
            cursor.execute("SELECT pg_terminate_backend(%s)", [pid])


class PrivateRedis:
    """A redis-server of the test's own on a free port, keeping nothing on disk (as the production broker)."""

    def __init__(self, log_path: Path):
        self.port, self.log_path = _free_port(), log_path
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        import redis

        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--daemonize", "no"],
            stdout=open(self.log_path, "ab"), stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                if redis.Redis.from_url(self.url).ping():
                    return
            except redis.RedisError:
                time.sleep(0.05)
        raise RuntimeError(f"redis-server did not start:\n{self.log_path.read_text()[-2000:]}")

    def kill(self) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)

    def client(self):
        import redis

        return redis.Redis.from_url(self.url)


@pytest.fixture
def private_redis(tmp_path):
    server = PrivateRedis(tmp_path / "redis.log")
    server.start()
    yield server
    server.kill()
