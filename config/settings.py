"""All settings come from the environment, with defaults that work on a local machine and are safe to expose.

DEBUG is off unless a developer turns it on. Secrets have no default: a deployment sets them (NAME or NAME_FILE);
the local stack generates its own once into LOCAL_SECRETS_FILE (scripts/local_secrets.py, run by scripts/stack.sh).
"""
import os
from pathlib import Path

from config.env import database_from_url, env_bool, env_header, env_int, env_json, env_list, env_secret, env_str

BASE_DIR = Path(__file__).resolve().parent.parent

DEBUG = env_bool("DEBUG", False)
LOCAL_SECRETS_FILE = Path(env_str("LOCAL_SECRETS_FILE", str(BASE_DIR / ".var" / "secrets.json")))
SECRET_KEY = env_secret("SECRET_KEY", generated_file=LOCAL_SECRETS_FILE)
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", "127.0.0.1,localhost")
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", "")

# HTTPS. The local stack serves plain HTTP on 127.0.0.1, so these are off by default; a deployment behind TLS
# turns them on (README, Configuration). SECURE_PROXY_SSL_HEADER: the header the TLS-terminating proxy sets,
# e.g. "X-Forwarded-Proto: https"; set it only when that proxy always overwrites the header.
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", False)
# Load balancers probe /healthz over plain HTTP from inside the network; a redirect would read as "down".
SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^metrics$"]
SECURE_PROXY_SSL_HEADER = env_header("SECURE_PROXY_SSL_HEADER")
SESSION_COOKIE_SECURE = env_bool("SESSION_COOKIE_SECURE", False)
CSRF_COOKIE_SECURE = env_bool("CSRF_COOKIE_SECURE", False)
SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", False)
SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", False)

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
    "drf_spectacular_sidecar",
    "foundation",
    "registry",
    "workers",
    "governance",
    "reports",
    "console",
    "operations",
]

MIDDLEWARE = [
    # First, so that whatever fails below it (an oversized body, too many fields, a control character in the
    # request) is answered in the contract's error shape, and no request with a NUL byte reaches a view.
    "foundation.http.ErrorShapeMiddleware",
    "foundation.http.RejectControlCharactersMiddleware",
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
CSRF_FAILURE_VIEW = "foundation.http.csrf_failure"
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
# Personal data in datasets: files up to this size are scanned while they are registered (the answer already
# says clean or found); larger ones by a job. Phone numbers in national format are looked for in these regions
# (comma-separated ISO codes; empty: mainland China and the EU countries, the scanner's default).
PII_INLINE_SCAN_BYTES = env_int("PII_INLINE_SCAN_BYTES", 8 * 1024**2)
PII_PHONE_REGIONS = env_list("PII_PHONE_REGIONS", "")
# Extra patterns to report, as JSON {"type name": "regular expression"}, e.g. internal customer numbers.
PII_CUSTOM_PATTERNS = env_json("PII_CUSTOM_PATTERNS", {})

# Object storage (MinIO in docker-compose, SeaweedFS started by scripts/s3server.py elsewhere).
_checkout_s3 = {}
if not os.environ.get("S3_ENDPOINT"):
    # Convenience on a checkout: `python manage.py ...` run by hand talks to the SeaweedFS server that
    # scripts/s3server.py runs for it (.var/s3), with its generated credentials, without exporting anything.
    # Only a server that is running and was started from this checkout's data dir is used.
    from scripts.s3server import STATE_FILE, default_data_dir, server_status

    if (default_data_dir() / STATE_FILE).exists():
        _status = server_status()
        if _status["running"] and _status["endpoint"]:
            _checkout_s3 = _status
S3_ENDPOINT = env_str("S3_ENDPOINT", _checkout_s3.get("endpoint", "http://127.0.0.1:9000"))
S3_ACCESS_KEY = env_secret("S3_ACCESS_KEY", _checkout_s3.get("access_key"))
S3_SECRET_KEY = env_secret("S3_SECRET_KEY", _checkout_s3.get("secret_key"))
S3_BUCKET = env_str("S3_BUCKET", "registry")
S3_REGION = env_str("S3_REGION", "us-east-1")
S3_PRESIGN_SECONDS = env_int("S3_PRESIGN_SECONDS", 300)
S3_PART_SIZE = env_int("S3_PART_SIZE", 8 * 1024 * 1024)
REPORT_RETENTION_DAYS = env_int("REPORT_RETENTION_DAYS", 1)
# COMPLIANCE: nobody, not even the bucket's owner, can shorten a report's or an audit anchor's retention. The
# checkout's own SeaweedFS (scripts/stack.sh exports GOVERNANCE too) keeps GOVERNANCE, which lets a developer
# delete what the demo and `make bench` leave behind (with the bypass header) instead of waiting out the retention.
REPORT_RETENTION_MODE = env_str("REPORT_RETENTION_MODE", "GOVERNANCE" if _checkout_s3 else "COMPLIANCE")

# Celery: Redis broker; results live in our Job rows, not in a result backend.
CELERY_BROKER_URL = env_str("CELERY_BROKER_URL", "redis://127.0.0.1:6379/0")
# Every Redis key of this deployment (queues, unacknowledged messages, broadcast channels) starts with this
# prefix, so deployments that share one Redis, and the test suite beside a running stack, never take each
# other's jobs. The default is the database's name: one database, one deployment.
DEPLOYMENT_NAME = env_str("DEPLOYMENT_NAME", DATABASES["default"]["NAME"])
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_DEFAULT_QUEUE = "cpu"
CELERY_TASK_IGNORE_RESULT = True
CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": env_int("CELERY_VISIBILITY_TIMEOUT", 3600),
                                   "global_keyprefix": f"{DEPLOYMENT_NAME}:"}
# Beat runs inside the worker (`celery worker -B`, scripts/stack.sh and docker-compose.yml): one per deployment.
# A job still queued this long after it was created (or running with no worker holding it) is sent again.
JOB_RECONCILE_AFTER_SECONDS = env_int("JOB_RECONCILE_AFTER_SECONDS", 120)
CELERY_BEAT_SCHEDULE = {
    # Re-enqueues jobs whose row says queued but whose broker message is gone (Redis lost it, or the commit
    # that recorded the job and the send were split by a crash).
    "reconcile-queued-jobs": {
        "task": "workers.tasks.reconcile_queued_jobs",
        "schedule": env_int("JOB_RECONCILE_SECONDS", 60),
        "options": {"queue": "cpu"},
    },
}
# Name of the queue for GPU work; empty means every job runs on the cpu queue.
GPU_QUEUE = env_str("GPU_QUEUE", "")
# A pool child whose peak RSS (billiard reads ru_maxrss) passed this many KiB during a job is replaced after it:
# a fresh child per heavy job, so an idle worker gives the memory back.
CELERY_WORKER_MAX_MEMORY_PER_CHILD = env_int("WORKER_MAX_MEMORY_PER_CHILD_KB", 2_000_000)
JOB_TIME_LIMIT_SECONDS = env_int("JOB_TIME_LIMIT_SECONDS", 6 * 3600)
WORK_DIR = Path(env_str("WORK_DIR", str(BASE_DIR / ".var" / "work")))

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        # Token first: its WWW-Authenticate header makes anonymous requests 401 rather than 403.
        "registry.authentication.TokenWithRolesAndTeamsAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "foundation.error_responses.exception_handler",
    "DEFAULT_PARSER_CLASSES": [
        "foundation.parsers.BoundedJSONParser",
        "foundation.parsers.CheckedFormParser",
        "foundation.parsers.CheckedMultiPartParser",
    ],
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "LLM model registry and governance API",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    # The browsable docs load Swagger UI from this project's own static files, never from a CDN.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    # Models, versions and jobs all have a `kind` and a `status`: each enum gets its own name.
    "ENUM_NAME_OVERRIDES": {
        "VersionKindEnum": "registry.models.ModelVersion.Kind",
        "VersionStatusEnum": "registry.models.ModelVersion.Status",
        "JobKindEnum": "workers.models.Job.Kind",
        "JobStatusEnum": "workers.models.Job.Status",
    },
    # Every operation documents the error responses it can give, in the one error shape.
    "POSTPROCESSING_HOOKS": ["drf_spectacular.hooks.postprocess_schema_enums",
                             "foundation.api_schema.document_error_responses"],
}

# Signed reports (reports app). The organisation PKI lives in REPORT_PKI_DIR: root.pem (what regulators pin),
# root-key.pem (issues approvers' certificates) and organisation.p12 (certifies every report). `manage.py init_pki`
# creates a development PKI there; production mounts its own three files there instead. One secret protects the
# root key, the organisation's PKCS#12 and every approver's stored PKCS#12.
REPORT_PKI_DIR = Path(env_str("REPORT_PKI_DIR", str(BASE_DIR / ".var" / "pki")))
REPORT_PKI_PASSPHRASE = env_secret("REPORT_PKI_PASSPHRASE", generated_file=LOCAL_SECRETS_FILE)
# Create the PKI on first use instead of failing: off by default, since a new root silently invalidates what
# regulators pinned. The local stack runs `manage.py init_pki` when it starts; the test suite turns this on.
REPORT_PKI_AUTO_CREATE = env_bool("REPORT_PKI_AUTO_CREATE", False)
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

# Single sign-on and the platform integrations (metrics, webhooks, alarms) keep their settings in their own modules.
from config.settings_integrations import *  # noqa: E402,F401,F403
from config.settings_sso import *  # noqa: E402,F401,F403

INSTALLED_APPS += [*INTEGRATION_APPS, *SSO_APPS]  # noqa: F405
MIDDLEWARE = [*METRICS_MIDDLEWARE_BEFORE, *MIDDLEWARE, *SSO_MIDDLEWARE, *METRICS_MIDDLEWARE_AFTER]  # noqa: F405
AUTHENTICATION_BACKENDS = [*SSO_AUTHENTICATION_BACKENDS, "django.contrib.auth.backends.ModelBackend"]  # noqa: F405
CELERY_BEAT_SCHEDULE.update(INTEGRATION_BEAT_SCHEDULE)  # noqa: F405
