"""Settings for the test suite: the real services, isolated from a developer's running stack and from whatever the
shell exported.

- PostgreSQL: pytest-django's own test database (test_<name>_<pid>).
- Redis: database 15 (TEST_CELERY_BROKER_URL), and every key under a prefix of this run's own, so neither a
  running dev worker nor another test run ever takes this run's job messages.
- S3: a SeaweedFS server of the test suite's own under .var/test-s3 (started here when not running; its
  credentials are generated there), bucket registry-test.
- Secrets and the report PKI: test-only values and a PKI of the suite's own under .var/test-pki.

What the suite's worker and web processes must share with it goes into os.environ here, before config.settings
reads it: they are started with this environment and import this module again. Celery reads CELERY_BROKER_URL
from the environment before any setting, so that one is overwritten, not defaulted.
"""
import os
import secrets
from pathlib import Path

from scripts.s3server import start_server

_BASE_DIR = Path(__file__).resolve().parent.parent

_TEST_SECRETS = {
    "SECRET_KEY": "test-only-secret-key-" + "x" * 40,
    "REPORT_PKI_PASSPHRASE": "test-only-report-pki-passphrase",
}
for _name, _value in _TEST_SECRETS.items():
    os.environ.pop(f"{_name}_FILE", None)
    os.environ[_name] = _value

_BROKER_URL = os.environ.get("TEST_CELERY_BROKER_URL", "redis://127.0.0.1:6379/15")
for _name in ("CELERY_BROKER_READ_URL", "CELERY_BROKER_WRITE_URL", "CELERY_RESULT_BACKEND"):
    os.environ.pop(_name, None)
os.environ["CELERY_BROKER_URL"] = _BROKER_URL
# Set once per run by the pytest process; its worker and web processes inherit it.
_BROKER_KEY_PREFIX = os.environ.setdefault("TEST_RUN_BROKER_KEY_PREFIX", f"test-{os.getpid()}-{secrets.token_hex(4)}:")

# Metrics of the suite's processes stay in each process (a developer's stack shares its own directory).
os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)

# The suite's own S3 server, with its own generated credentials (never a developer's exported ones).
for _name in ("S3_ACCESS_KEY", "S3_SECRET_KEY", "S3_ACCESS_KEY_FILE", "S3_SECRET_KEY_FILE"):
    os.environ.pop(_name, None)
os.environ["S3_BUCKET"] = "registry-test"
_s3 = start_server(_BASE_DIR / ".var" / "test-s3")
os.environ.update(S3_ENDPOINT=_s3["endpoint"], S3_ACCESS_KEY=_s3["access_key"], S3_SECRET_KEY=_s3["secret_key"])

from config.settings import *  # noqa: E402,F401,F403
from config.settings import BASE_DIR, CELERY_BROKER_TRANSPORT_OPTIONS, DATABASES  # noqa: E402

DEBUG = False
CELERY_BROKER_URL = _BROKER_URL
# Unacknowledged messages of a killed worker are looked for every second (kombu's default is every 10 s, ten at
# a time), so the suite's kill-and-redeliver tests wait seconds, not minutes.
CELERY_BROKER_TRANSPORT_OPTIONS = {**CELERY_BROKER_TRANSPORT_OPTIONS, "global_keyprefix": _BROKER_KEY_PREFIX,
                                   "unacked_restore_interval": 1, "unacked_restore_throttle": 1}
WORK_DIR = BASE_DIR / ".var" / "test-work"
EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]  # fast logins in tests only

S3_ENDPOINT = _s3["endpoint"]
S3_ACCESS_KEY = _s3["access_key"]
S3_SECRET_KEY = _s3["secret_key"]
S3_BUCKET = "registry-test"
# Tests delete what they store; GOVERNANCE retention allows that, COMPLIANCE would not.
REPORT_RETENTION_MODE = "GOVERNANCE"

# Tests that need a PKI of their own set REPORT_PKI_DIR (in the environment too, for the worker process).
if not os.environ.get("REPORT_PKI_DIR"):
    REPORT_PKI_DIR = BASE_DIR / ".var" / "test-pki"
REPORT_PKI_AUTO_CREATE = True

# One test database per run, so two runs on one machine (a developer's and CI's) never drop each other's.
DATABASES["default"]["TEST"] = {"NAME": f"test_llm_registry_{os.getpid()}"}
