"""Fixtures of the SSO tests: a real OIDC provider (tests/oidc_provider, django-oauth-toolkit) in its own process
with its own SQLite database and an RSA key made here, and gunicorn serving the registry with OIDC_* settings in
its environment, as a deployment sets them."""
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.e2e.conftest import _free_port, browser, committed_db, configured_process_env, unique  # noqa: F401

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
ROLE_MAP = {"registry-engineers": "ml_engineer", "registry-approvers": "approver", "registry-ops": "ops",
            "registry-regulators": "regulator"}


def _wait_until_serving(url: str, process: subprocess.Popen, log_path: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            requests.get(url, timeout=10)
            return
        except requests.RequestException:
            if process.poll() is not None:
                break
            time.sleep(0.2)
    _stop(process)
    raise RuntimeError(log_path.read_text()[-3000:])


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)


class OidcProvider:
    """The bank's identity provider, as far as the registry can tell: discovery, authorize, token, userinfo, JWKS."""

    def __init__(self, directory: Path):
        self.directory = directory
        self.port = _free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.issuer = f"{self.base_url}/o"
        self.log_path = directory / "provider.log"
        self.process: subprocess.Popen | None = None
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        key_path = directory / "signing-key.pem"
        key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
        self.env = {key: value for key, value in os.environ.items() if not key.startswith(("DJANGO_", "OIDC_"))}
        self.env.update(DJANGO_SETTINGS_MODULE="tests.oidc_provider.settings", PYTHONUNBUFFERED="1",
                        OIDC_TEST_DATABASE=str(directory / "provider.sqlite3"), OIDC_TEST_RSA_KEY_FILE=str(key_path),
                        OIDC_TEST_ISSUER=self.issuer)

    def manage(self, *args: str) -> None:
        subprocess.run([sys.executable, "-m", "django", *args], cwd=ROOT, env=self.env, check=True,
                       capture_output=True, timeout=120)

    def start(self) -> None:
        self.manage("migrate", "--verbosity", "0")
        self.process = subprocess.Popen(
            [str(VENV_BIN / "gunicorn"), "tests.oidc_provider.wsgi:application", "--bind", f"127.0.0.1:{self.port}",
             "--worker-class", "gthread", "--workers", "1", "--threads", "4", "--no-control-socket"],
            cwd=ROOT, env=self.env, stdout=open(self.log_path, "ab"), stderr=subprocess.STDOUT,
            start_new_session=True)
        _wait_until_serving(f"{self.issuer}/.well-known/openid-configuration", self.process, self.log_path)

    def stop(self) -> None:
        if self.process:
            _stop(self.process)

    def set_user(self, username: str, *, password: str, groups: list[str], email: str = "") -> None:
        """Create the user at the provider or change their groups: the next login's claims name these."""
        self.manage("provider_user", username, "--password", password, "--email", email or f"{username}@bank.example",
                    "--groups", ",".join(groups))

    def register_client(self, *, client_id: str, client_secret: str, redirect_uri: str) -> None:
        self.manage("provider_client", "--client-id", client_id, "--client-secret", client_secret,
                    "--redirect-uri", redirect_uri)


@pytest.fixture(scope="module")
def oidc_provider(tmp_path_factory):
    provider = OidcProvider(tmp_path_factory.mktemp("oidc-provider"))
    provider.start()
    yield provider
    provider.stop()


class SsoWebServer:
    """gunicorn serving the registry against the test database, with SSO configured through the environment."""

    def __init__(self, directory: Path, provider: OidcProvider, extra_env: dict[str, str]):
        self.port = _free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.log_path = directory / f"web-{self.port}.log"
        self.client_id = f"registry-{uuid.uuid4().hex[:8]}"
        self.client_secret = uuid.uuid4().hex + uuid.uuid4().hex
        secret_file = directory / f"client-secret-{self.port}"
        secret_file.write_text(self.client_secret)
        provider.register_client(client_id=self.client_id, client_secret=self.client_secret,
                                 redirect_uri=f"{self.base_url}/oidc/callback/")
        self.env = configured_process_env(application_name=f"sso-web-{self.port}")
        self.env.update({
            "OIDC_RP_CLIENT_ID": self.client_id,
            "OIDC_RP_CLIENT_SECRET_FILE": str(secret_file),
            "OIDC_OP_DISCOVERY_URL": provider.issuer,
            "OIDC_PROVIDER_NAME": "Bank ID",
            "OIDC_ROLE_MAP": json.dumps(ROLE_MAP),
            "OIDC_TEAM_PREFIX": "team:",
            **extra_env,
        })
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [str(VENV_BIN / "gunicorn"), "config.wsgi:application",
             "--bind", f"127.0.0.1:{self.port}", "--worker-class", "gthread", "--workers", "1", "--threads", "4",
             "--timeout", "300", "--no-control-socket"],
            cwd=ROOT, env=self.env, stdout=open(self.log_path, "ab"), stderr=subprocess.STDOUT,
            start_new_session=True)
        _wait_until_serving(f"{self.base_url}/healthz", self.process, self.log_path)

    def stop(self) -> None:
        if self.process:
            _stop(self.process)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@pytest.fixture
def sso_web_server(committed_db, oidc_provider, tmp_path):  # noqa: F811 (the fixture imported above)
    """Starts the registry with SSO on; extra environment variables as keyword arguments."""
    servers = []

    def start(**extra_env: str) -> SsoWebServer:
        server = SsoWebServer(tmp_path, oidc_provider, extra_env)
        server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


def sign_in_with_provider(page, base_url: str, username: str, password: str, *, next_path: str = "/admin/") -> None:
    """From the registry's admin login page, through the provider's login form, back to the registry."""
    page.goto(f"{base_url}/admin/login/?next={next_path}")
    page.click("#sso-sign-in")
    page.wait_for_selector("#provider-sign-in")
    page.fill("#id_username", username)
    page.fill("#id_password", password)
    page.click("#provider-sign-in")
    page.wait_for_url(f"{base_url}{next_path}")
