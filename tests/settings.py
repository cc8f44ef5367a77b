"""Settings for the test suite: the real services, isolated from a developer's running stack.

- PostgreSQL: pytest-django's own test database (test_<name>).
- Redis: database 15, so a running dev worker never takes a test's job.
- S3: a SeaweedFS server of the test suite's own under .var/test-s3 (started here when not running; its
  credentials are generated there), bucket registry-test.
"""
import os

from config.settings import *  # noqa: F401,F403
from config.settings import BASE_DIR
from scripts.s3server import start_server

CELERY_BROKER_URL = os.environ.get("TEST_CELERY_BROKER_URL", "redis://127.0.0.1:6379/15")
WORK_DIR = BASE_DIR / ".var" / "test-work"
EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]  # fast logins in tests only
S3_BUCKET = os.environ["S3_BUCKET"] = "registry-test"

_s3 = start_server(BASE_DIR / ".var" / "test-s3")
S3_ENDPOINT = _s3["endpoint"]
S3_ACCESS_KEY = _s3["access_key"]
S3_SECRET_KEY = _s3["secret_key"]

# One test database per run, so two runs on one machine (a developer's and CI's) never drop each other's.
DATABASES["default"]["TEST"] = {"NAME": f"test_llm_registry_{os.getpid()}"}  # noqa: F405
