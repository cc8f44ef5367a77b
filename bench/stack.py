"""The local stack as the benchmarks see it: its URL, a token, a small API client, and how results are printed.

Benchmarks measure through the public HTTP API. Django's ORM is used only for setup that has no API (a user
with the ml_engineer role and its token), through `api_token()`.
"""
from __future__ import annotations

import json
import os
import platform
import secrets
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
BENCH_USER = "bench"
BENCH_ROLE = "ml_engineer"


def log(message: str) -> None:
    """Progress goes to stderr, so the last line of stdout stays the result."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def emit(result: dict) -> None:
    """Print the result as one JSON line: the last line of stdout, which `make bench` and readers pick up."""
    print(json.dumps(result, sort_keys=True), flush=True)


def median(values) -> float:
    return statistics.median(values)


def unique_name(prefix: str) -> str:
    """A model name no other run uses (the API refuses duplicates with 409)."""
    return f"{prefix}-{secrets.token_hex(4)}"


def base_url() -> str:
    host = os.environ.get("WEB_HOST", "127.0.0.1")
    port = os.environ.get("WEB_PORT", "8000")
    return os.environ.get("BENCH_BASE_URL", f"http://{host}:{port}")


def ensure_s3_env() -> None:
    """`make bench` exports the S3 settings; a benchmark started by hand reads them from the running S3 server."""
    if os.environ.get("S3_ENDPOINT"):
        return
    output = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "s3server.py"), "env"],
        check=True, capture_output=True, text=True, cwd=ROOT,
    ).stdout
    for line in output.splitlines():
        words = shlex.split(line)
        if words[:1] == ["export"]:
            for assignment in words[1:]:
                name, _, value = assignment.partition("=")
                os.environ[name] = value


def setup_django() -> None:
    ensure_s3_env()
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    import django

    django.setup()


def api_token() -> str:
    """Token of the `bench` user (ml_engineer), created on first use: setup, not part of any measurement."""
    setup_django()
    from django.contrib.auth.models import Group, User
    from rest_framework.authtoken.models import Token

    user, _ = User.objects.get_or_create(username=BENCH_USER, defaults={"email": "bench@registry.local"})
    user.groups.add(Group.objects.get(name=BENCH_ROLE))
    token, _ = Token.objects.get_or_create(user=user)
    return token.key


def raw_minio_client():
    """A plain minio client for the stack's S3 server: the baseline the benchmarks compare the product's transfers
    with (registry/storage.py stays the product's only storage module)."""
    from django.conf import settings
    from minio import Minio

    endpoint = settings.S3_ENDPOINT
    return Minio(endpoint.split("://", 1)[-1].rstrip("/"), access_key=settings.S3_ACCESS_KEY,
                 secret_key=settings.S3_SECRET_KEY, secure=endpoint.startswith("https://"), region=settings.S3_REGION)


def machine_description() -> dict:
    import psutil

    return {
        "cpus": os.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / 1024**3, 1),
        "python": platform.python_version(),
        "platform": platform.platform(terse=True),
    }


def library_versions(*names: str) -> dict:
    from importlib.metadata import version

    return {name: version(name) for name in names}


class ApiError(RuntimeError):
    pass


def job_seconds(job: dict) -> float:
    """A finished job's wall time by the server's clock: from its creation (the POST) to its end."""
    from datetime import datetime

    return (datetime.fromisoformat(job["finished_at"]) - datetime.fromisoformat(job["created_at"])).total_seconds()


class Api:
    """The registry's REST API v1 with token authentication; raises ApiError on any unexpected status."""

    def __init__(self, token: str, url: str | None = None):
        self.url = (url or base_url()).rstrip("/")
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Token {token}"

    def _check(self, response: requests.Response, *expected: int) -> requests.Response:
        if response.status_code not in expected:
            raise ApiError(f"{response.request.method} {response.url} -> {response.status_code}: {response.text[:500]}")
        return response

    def get(self, path: str, **kwargs) -> dict:
        return self._check(self.session.get(f"{self.url}{path}", **kwargs), 200).json()

    def post(self, path: str, payload: dict | None = None, *, expected: int = 201) -> dict:
        return self._check(self.session.post(f"{self.url}{path}", json=payload or {}), expected).json()

    def put_file(self, model: str, number: int, path: str, data) -> dict:
        url = f"{self.url}/api/v1/models/{model}/versions/{number}/files/{path}"
        return self._check(self.session.put(url, data=data), 201).json()

    def create_model(self, name: str, description: str) -> dict:
        return self.post("/api/v1/models/", {"name": name, "description": description})

    def create_version(self, model: str, description: str = "") -> int:
        return self.post(f"/api/v1/models/{model}/versions/", {"description": description})["number"]

    def register_directory(self, model: str, directory: Path, description: str = "") -> int:
        """Upload every file of a save_pretrained directory into a new version and seal it; return its number."""
        number = self.create_version(model, description)
        for file in sorted(Path(directory).iterdir()):
            if file.is_file():
                with open(file, "rb") as handle:
                    self.put_file(model, number, file.name, handle)
        self.post(f"/api/v1/models/{model}/versions/{number}/seal", expected=200)
        return number

    def wait_for_job(self, job_id: int, *, poll_seconds: float = 0.5, timeout: float = 600) -> dict:
        """Poll GET /api/v1/jobs/{id} until the job ends; raise ApiError unless it succeeded.

        Polls are slow on purpose: each is a request the web server and the database answer, CPU taken from the
        job on a small machine. Time a job with job_seconds(), from the server's own timestamps.
        """
        deadline = time.monotonic() + timeout
        while True:
            job = self.get(f"/api/v1/jobs/{job_id}")
            if job["status"] == "succeeded":
                return job
            if job["status"] in ("failed", "cancelled"):
                raise ApiError(f"job {job_id} {job['status']}: {job.get('error')}")
            if time.monotonic() > deadline:
                raise ApiError(f"job {job_id} still {job['status']} after {timeout:.0f} s ({job.get('message')})")
            time.sleep(poll_seconds)
