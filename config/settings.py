"""All settings come from the environment, with defaults that work on a local development machine."""
import os
from pathlib import Path

from config.env import database_from_url, env_bool, env_int, env_secret, env_str

BASE_DIR = Path(__file__).resolve().parent.parent

DEBUG = env_bool("DEBUG", True)
SECRET_KEY = env_secret("SECRET_KEY", "dev-only-insecure-key-do-not-deploy" if DEBUG else None)
ALLOWED_HOSTS = env_str("ALLOWED_HOSTS", "127.0.0.1,localhost,testserver").split(",")
CSRF_TRUSTED_ORIGINS = [o for o in env_str("CSRF_TRUSTED_ORIGINS", "").split(",") if o]

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework.authtoken",
    "drf_spectacular",
    "foundation",
    "registry",
    "workers",
    "governance",
    "reports",
    "console",
    "operations",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

DATABASES = {"default": database_from_url(env_str("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/llm_registry"))}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / ".var" / "static"
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}
# Tests and a fresh checkout run without collectstatic: serve app static files straight from the finders then.
WHITENOISE_USE_FINDERS = True

# Uploads stream straight to object storage (registry.api); Django never buffers a request body to
# memory beyond this, and never spools uploads to disk for the raw PUT endpoint.
DATA_UPLOAD_MAX_MEMORY_SIZE = 10 * 1024 * 1024
FILE_UPLOAD_MAX_MEMORY_SIZE = 10 * 1024 * 1024
MAX_VERSION_FILE_BYTES = env_int("MAX_VERSION_FILE_BYTES", 200 * 1024**3)
MAX_DATASET_BYTES = env_int("MAX_DATASET_BYTES", 512 * 1024**2)

# Object storage (MinIO in docker-compose, SeaweedFS started by scripts/s3server.py elsewhere).
S3_ENDPOINT = env_str("S3_ENDPOINT", "http://127.0.0.1:9000")
S3_ACCESS_KEY = env_secret("S3_ACCESS_KEY", "registry-dev" if DEBUG else None)
S3_SECRET_KEY = env_secret("S3_SECRET_KEY", "registry-dev-secret" if DEBUG else None)
S3_BUCKET = env_str("S3_BUCKET", "registry")
if DEBUG and not os.environ.get("S3_ENDPOINT"):
    # Development convenience: `python manage.py ...` run by hand talks to the SeaweedFS server that
    # scripts/s3server.py runs for this checkout, without exporting its variables first.
    from scripts.s3server import STATE_FILE, default_data_dir, server_status

    if (default_data_dir() / STATE_FILE).exists():
        _local_s3 = server_status()
        if _local_s3["running"] and _local_s3["endpoint"]:
            S3_ENDPOINT, S3_ACCESS_KEY, S3_SECRET_KEY = (
                _local_s3["endpoint"], _local_s3["access_key"], _local_s3["secret_key"])
S3_REGION = env_str("S3_REGION", "us-east-1")
S3_PRESIGN_SECONDS = env_int("S3_PRESIGN_SECONDS", 300)
S3_PART_SIZE = env_int("S3_PART_SIZE", 8 * 1024 * 1024)
REPORT_RETENTION_DAYS = env_int("REPORT_RETENTION_DAYS", 1)
REPORT_RETENTION_MODE = env_str("REPORT_RETENTION_MODE", "GOVERNANCE" if DEBUG else "COMPLIANCE")

# Celery: Redis broker; results live in our Job rows, not in a result backend.
CELERY_BROKER_URL = env_str("CELERY_BROKER_URL", "redis://127.0.0.1:6379/0")
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_DEFAULT_QUEUE = "cpu"
CELERY_TASK_IGNORE_RESULT = True
CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": env_int("CELERY_VISIBILITY_TIMEOUT", 3600)}
# Name of the queue for GPU work; empty means every job runs on the cpu queue.
GPU_QUEUE = env_str("GPU_QUEUE", "")
JOB_TIME_LIMIT_SECONDS = env_int("JOB_TIME_LIMIT_SECONDS", 6 * 3600)
WORK_DIR = Path(env_str("WORK_DIR", str(BASE_DIR / ".var" / "work")))

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        # Token first: its WWW-Authenticate header makes anonymous requests 401 rather than 403.
        "rest_framework.authentication.TokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "foundation.error_responses.exception_handler",
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "LLM model registry and governance API",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
}

# Signed reports (reports app). The organisation PKI lives in REPORT_PKI_DIR: root.pem (what regulators pin),
# root-key.pem (issues approvers' certificates) and organisation.p12 (certifies every report). `manage.py init_pki`
# creates a development PKI there; production mounts its own three files there instead. One secret protects the
# root key, the organisation's PKCS#12 and every approver's stored PKCS#12.
REPORT_PKI_DIR = Path(env_str("REPORT_PKI_DIR", str(BASE_DIR / ".var" / "pki")))
REPORT_PKI_PASSPHRASE = env_secret("REPORT_PKI_PASSPHRASE", "dev-only-report-pki-passphrase" if DEBUG else None)
# Create the development PKI on first use instead of failing (never in production: a new root silently
# invalidates what regulators pinned).
REPORT_PKI_AUTO_CREATE = env_bool("REPORT_PKI_AUTO_CREATE", DEBUG)
REPORT_ORGANISATION = env_str("REPORT_ORGANISATION", "Example Bank")
# Where regulators' e-mails point to for the portal.
REPORT_PORTAL_URL = env_str("REPORT_PORTAL_URL", "http://127.0.0.1:8000/portal/")

EMAIL_BACKEND = env_str("EMAIL_BACKEND", "django.core.mail.backends.filebased.EmailBackend")
EMAIL_FILE_PATH = BASE_DIR / ".var" / "mail"
DEFAULT_FROM_EMAIL = env_str("DEFAULT_FROM_EMAIL", "reports@registry.local")

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": env_str("LOG_LEVEL", "INFO")},
}
