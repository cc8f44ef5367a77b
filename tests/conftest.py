"""Shared fixtures: named users per role, authenticated API clients, a tiny model built once per session.

Tests run against the real PostgreSQL (pytest-django's test database), Redis and the S3 server that
tests/settings.py starts; nothing here is mocked.
"""
import hashlib
import json
import shutil
from pathlib import Path

import pytest
from django.contrib.auth.models import Group, User
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from foundation.roles import APPROVER, ML_ENGINEER, OPS, REGULATOR
from registry.models import Team

SHARED_TEAM = "risk-models"


def make_user(username: str, *roles: str, superuser: bool = False, team: str | None = SHARED_TEAM) -> User:
    """A user with these roles; ML engineers join `team` (by default one team that all test engineers share)."""
    user = User.objects.create_user(username=username, password=f"{username}-password", is_staff=True,
                                    is_superuser=superuser, email=f"{username}@bank.example")
    for role in roles:
        user.groups.add(Group.objects.get(name=role))
    if team and ML_ENGINEER in roles:
        Team.objects.get_or_create(name=team)[0].members.add(user)
    return user


def client_for(user: User | None) -> APIClient:
    client = APIClient()
    if user is not None:
        token, _ = Token.objects.get_or_create(user=user)
        client.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")
    return client


@pytest.fixture
def engineer(db):
    return make_user("alice", ML_ENGINEER)


@pytest.fixture
def second_engineer(db):
    return make_user("erin", ML_ENGINEER)


@pytest.fixture
def approver(db):
    return make_user("bob", APPROVER)


@pytest.fixture
def second_approver(db):
    return make_user("carol", APPROVER)


@pytest.fixture
def ops_user(db):
    return make_user("oscar", OPS)


@pytest.fixture
def regulator(db):
    return make_user("rita", REGULATOR)


@pytest.fixture
def no_role_user(db):
    return make_user("nobody")


@pytest.fixture
def engineer_api(engineer):
    return client_for(engineer)


@pytest.fixture
def anonymous_api():
    return APIClient()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A tiny Llama (config, safetensors weights, tokenizer) built by the project, once per test session."""
    from workers.pipelines.tiny_model import build_tiny_llama

    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"), seed=0)


@pytest.fixture
def tiny_model_copy(tiny_model_dir, tmp_path) -> Path:
    destination = tmp_path / "model"
    shutil.copytree(tiny_model_dir, destination)
    return destination


def upload_directory(api: APIClient, model: str, number: int, directory: Path) -> list[dict]:
    uploaded = []
    for file_path in sorted(p for p in directory.rglob("*") if p.is_file()):
        data = file_path.read_bytes()
        response = api.put(f"/api/v1/models/{model}/versions/{number}/files/{file_path.relative_to(directory)}",
                           data=data, content_type="application/octet-stream",
                           HTTP_X_CONTENT_SHA256=hashlib.sha256(data).hexdigest())
        assert response.status_code == 201, response.content
        uploaded.append(response.json())
    return uploaded


def register_sealed_version(api: APIClient, model: str, directory: Path) -> dict:
    """Create the model if needed, upload a directory as a new version and seal it, all through the API."""
    if api.get(f"/api/v1/models/{model}/").status_code == 404:
        assert api.post("/api/v1/models/", {"name": model, "description": "test"}, format="json").status_code == 201
    created = api.post(f"/api/v1/models/{model}/versions/", {"description": "upload"}, format="json")
    assert created.status_code == 201, created.content
    number = created.json()["number"]
    upload_directory(api, model, number, directory)
    sealed = api.post(f"/api/v1/models/{model}/versions/{number}/seal")
    assert sealed.status_code == 200, sealed.content
    return sealed.json()


def jsonl(records: list[dict]) -> bytes:
    return b"".join(json.dumps(record).encode() + b"\n" for record in records)


def pytest_collection_modifyitems(config, items):
    # End-to-end tests commit their data (other processes must see it), so they run after the tests that rely
    # on an empty, rolled-back database.
    for item in items:
        if "/tests/e2e/" in str(item.fspath):
            item.add_marker(pytest.mark.e2e)
    items.sort(key=lambda item: item.get_closest_marker("e2e") is not None)


@pytest.fixture(scope="session")
def django_db_setup(django_test_environment, django_db_blocker):
    """Always create the test database, also for a run of end-to-end tests alone (they use committed_db, not the
    django_db marker from which pytest-django would otherwise decide whether a database is needed)."""
    from django.test.utils import setup_databases, teardown_databases

    with django_db_blocker.unblock():
        config = setup_databases(verbosity=0, interactive=False, aliases={"default"})
    yield
    with django_db_blocker.unblock():
        from django.db import connection

        # A server or worker process that an interrupted test left behind must not keep the database alive.
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                           "WHERE datname = current_database() AND pid <> pg_backend_pid()")
        teardown_databases(config, verbosity=0)
