"""Settings a bank can expose: DEBUG off unless asked for, no secret with a default, the generated secrets file
private, `check --deploy` clean once the deployment sets its HTTPS variables, and a broker namespace per deployment.

The production settings (config.settings) are imported in subprocesses with a clean environment: the test
process itself runs tests.settings, which sets test-only values in its own environment.
"""
import json
import os
import re
import secrets
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured

from config.env import env_header

REPO = Path(__file__).resolve().parent.parent
HTTPS_VARIABLES = {
    "SECURE_SSL_REDIRECT": "true",
    "SECURE_PROXY_SSL_HEADER": "X-Forwarded-Proto: https",
    "SESSION_COOKIE_SECURE": "true",
    "CSRF_COOKIE_SECURE": "true",
    "SECURE_HSTS_SECONDS": "31536000",
    "SECURE_HSTS_INCLUDE_SUBDOMAINS": "true",
    "SECURE_HSTS_PRELOAD": "true",
}
# What `check --deploy` may still ask for when the HTTPS variables are not set: each of them is one.
HTTPS_WARNINGS = {"security.W004", "security.W008", "security.W012", "security.W016"}


def deployment_environment(directory: Path) -> dict:
    """A clean environment holding only what a deployment must set (no generated secrets file)."""
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(directory),
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "LOCAL_SECRETS_FILE": str(directory / "no-such-secrets.json"),
        "SECRET_KEY": secrets.token_urlsafe(64),
        "REPORT_PKI_PASSPHRASE": secrets.token_urlsafe(32),
        "S3_ENDPOINT": "https://s3.bank.example",
        "S3_ACCESS_KEY": "registry",
        "S3_SECRET_KEY": secrets.token_urlsafe(24),
    }


@pytest.fixture
def deployment(tmp_path) -> dict:
    return deployment_environment(tmp_path)


@pytest.fixture(scope="module")
def https_deployment_check(tmp_path_factory) -> subprocess.CompletedProcess:
    """`manage.py check --deploy` once for the tests below (it builds the whole API schema: seconds)."""
    return check_deploy({**deployment_environment(tmp_path_factory.mktemp("deploy")), **HTTPS_VARIABLES})


def run_python(env: dict, code: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=120, check=False, **kwargs)


def production_settings(env: dict, *names: str) -> dict:
    code = ("import json, django; from django.conf import settings; django.setup(); "
            f"print(json.dumps({{name: getattr(settings, name) for name in {list(names)!r}}}, default=str))")
    result = run_python(env, code)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.splitlines()[-1])


def check_deploy(env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "manage.py", "check", "--deploy"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300, check=False)


def generate_secrets(path: Path, **kwargs) -> subprocess.CompletedProcess:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LOCAL_SECRETS_FILE": str(path)}
    return subprocess.run([sys.executable, "scripts/local_secrets.py", "ensure"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=60, check=False, **kwargs)


def test_debug_is_off_when_the_environment_does_not_set_it(deployment):
    assert production_settings(deployment, "DEBUG") == {"DEBUG": False}


def test_debug_is_on_only_when_a_developer_turns_it_on(deployment):
    assert production_settings({**deployment, "DEBUG": "1"}, "DEBUG") == {"DEBUG": True}


@pytest.mark.parametrize("name", ["SECRET_KEY", "REPORT_PKI_PASSPHRASE"])
def test_a_missing_secret_fails_loudly_and_names_the_variable(deployment, name):
    del deployment[name]
    result = run_python(deployment, "import django; django.setup()")
    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr
    assert f"Set {name} (or {name}_FILE" in result.stderr


def test_a_secret_is_read_from_the_file_named_by_name_file(deployment, tmp_path):
    (tmp_path / "secret_key").write_text("from-a-mounted-file-" + "k" * 40 + "\n")
    deployment.pop("SECRET_KEY")
    deployment["SECRET_KEY_FILE"] = str(tmp_path / "secret_key")
    assert production_settings(deployment, "SECRET_KEY") == {"SECRET_KEY": "from-a-mounted-file-" + "k" * 40}


def test_the_generated_secrets_file_is_private_and_generated_once(tmp_path):
    path = tmp_path / "var" / "secrets.json"
    first = generate_secrets(path, umask=0)  # even with a umask that lets everyone read new files
    assert first.returncode == 0, first.stderr
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    stored = json.loads(path.read_text())
    assert set(stored) == {"SECRET_KEY", "REPORT_PKI_PASSPHRASE", "WEBHOOK_SECRETS_KEY"}
    assert len(stored["SECRET_KEY"]) >= 50 and len(set(stored["SECRET_KEY"])) >= 5  # what check --deploy wants
    for value in stored.values():
        assert value not in first.stdout + first.stderr

    again = generate_secrets(path)
    assert again.returncode == 0 and again.stdout == ""
    assert json.loads(path.read_text()) == stored
    assert not path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO)


def test_settings_read_the_generated_secrets_when_the_variables_are_unset(deployment, tmp_path):
    path = tmp_path / "secrets.json"
    assert generate_secrets(path).returncode == 0
    del deployment["SECRET_KEY"], deployment["REPORT_PKI_PASSPHRASE"]
    deployment["LOCAL_SECRETS_FILE"] = str(path)
    assert production_settings(deployment, "SECRET_KEY", "REPORT_PKI_PASSPHRASE",
                               "WEBHOOK_SECRETS_KEY") == json.loads(path.read_text())


def test_a_secrets_file_that_others_can_read_is_refused(deployment, tmp_path):
    path = tmp_path / "secrets.json"
    assert generate_secrets(path).returncode == 0
    path.chmod(0o644)
    del deployment["SECRET_KEY"]
    deployment["LOCAL_SECRETS_FILE"] = str(path)
    result = run_python(deployment, "import django; django.setup()")
    assert result.returncode != 0 and "readable by other users" in result.stderr
    refused = generate_secrets(path)
    assert refused.returncode == 1 and "readable by other users" in refused.stderr
    assert stat.S_IMODE(path.stat().st_mode) == 0o644  # left for a person to replace, not silently reused


def test_check_deploy_without_https_variables_asks_only_for_them(deployment):
    result = check_deploy(deployment)
    security = set(re.findall(r"\((security\.[WE]\d+)\)", result.stdout + result.stderr))
    assert security <= HTTPS_WARNINGS, result.stderr


def test_check_deploy_with_https_variables_set_reports_no_security_warning(https_deployment_check):
    result = https_deployment_check
    assert result.returncode == 0, result.stderr
    assert "security." not in result.stdout + result.stderr


def test_check_deploy_with_https_variables_set_reports_nothing(https_deployment_check):
    result = https_deployment_check
    assert result.returncode == 0, result.stderr
    assert "System check identified no issues" in result.stdout, result.stderr


def test_https_variables_reach_the_settings(deployment):
    values = production_settings({**deployment, **HTTPS_VARIABLES}, "SECURE_SSL_REDIRECT", "SECURE_PROXY_SSL_HEADER",
                                 "SESSION_COOKIE_SECURE", "CSRF_COOKIE_SECURE", "SECURE_HSTS_SECONDS",
                                 "SECURE_HSTS_INCLUDE_SUBDOMAINS", "SECURE_HSTS_PRELOAD")
    assert values == {"SECURE_SSL_REDIRECT": True, "SECURE_PROXY_SSL_HEADER": ["HTTP_X_FORWARDED_PROTO", "https"],
                      "SESSION_COOKIE_SECURE": True, "CSRF_COOKIE_SECURE": True, "SECURE_HSTS_SECONDS": 31536000,
                      "SECURE_HSTS_INCLUDE_SUBDOMAINS": True, "SECURE_HSTS_PRELOAD": True}


@pytest.mark.parametrize("raw", ["X-Forwarded-Proto", "X-Forwarded-Proto:", "X Forwarded: https", ": https"])
def test_a_malformed_proxy_header_is_refused(monkeypatch, raw):
    monkeypatch.setenv("SECURE_PROXY_SSL_HEADER", raw)
    with pytest.raises(ImproperlyConfigured, match="Header-Name: value"):
        env_header("SECURE_PROXY_SSL_HEADER")


def test_each_deployment_has_its_own_broker_key_prefix(deployment):
    by_database = {**deployment, "DATABASE_URL": "postgresql://registry@db.bank.example:5432/credit_registry"}
    assert production_settings(by_database, "CELERY_BROKER_TRANSPORT_OPTIONS")[
        "CELERY_BROKER_TRANSPORT_OPTIONS"]["global_keyprefix"] == "credit_registry:"
    named = {**by_database, "DEPLOYMENT_NAME": "risk-eu"}
    assert production_settings(named, "CELERY_BROKER_TRANSPORT_OPTIONS")[
        "CELERY_BROKER_TRANSPORT_OPTIONS"]["global_keyprefix"] == "risk-eu:"


def test_the_periodic_reconciler_is_scheduled_on_the_cpu_queue(deployment):
    schedule = production_settings({**deployment, "JOB_RECONCILE_SECONDS": "30"},
                                   "CELERY_BEAT_SCHEDULE")["CELERY_BEAT_SCHEDULE"]
    assert schedule["reconcile-queued-jobs"] == {"task": "workers.tasks.reconcile_queued_jobs", "schedule": 30,
                                                 "options": {"queue": "cpu"}}


def test_the_suite_uses_its_own_broker_whatever_the_shell_exported():
    """A shell (or scripts/stack.sh) exporting the dev stack's broker must not send the suite's jobs to it."""
    env = {key: value for key, value in os.environ.items() if key != "TEST_RUN_BROKER_KEY_PREFIX"}
    env.update(DJANGO_SETTINGS_MODULE="tests.settings", CELERY_BROKER_URL="redis://127.0.0.1:6379/0")
    code = ("import json, os, django; django.setup(); from config.celery import app; "
            "print(json.dumps([app.conf.broker_url, app.conf.broker_transport_options['global_keyprefix'], "
            "os.environ['TEST_RUN_BROKER_KEY_PREFIX']]))")
    result = run_python(env, code)
    assert result.returncode == 0, result.stderr
    broker_url, prefix, inherited = json.loads(result.stdout.splitlines()[-1])
    assert broker_url == os.environ.get("TEST_CELERY_BROKER_URL", "redis://127.0.0.1:6379/15")
    assert prefix.startswith("test-") and prefix == inherited  # what the suite's worker processes inherit
    assert prefix != os.environ["TEST_RUN_BROKER_KEY_PREFIX"]  # a fresh one per run
