"""Object storage dying during an upload: a clear 503, no VersionFile row, no object recorded."""
import os
import signal

import pytest

from foundation.errors import StorageUnavailable
from registry import services
from registry.models import VersionFile
from scripts.s3server import start_server

pytestmark = pytest.mark.django_db


@pytest.fixture
def doomed_s3(tmp_path, settings):
    """A second S3 server of our own, which the test kills (SIGKILL, like a crash)."""
    server = start_server(tmp_path / "s3")
    settings.S3_ENDPOINT, settings.S3_ACCESS_KEY, settings.S3_SECRET_KEY = (
        server["endpoint"], server["access_key"], server["secret_key"])
    settings.S3_PART_SIZE = 5 * 1024 * 1024

    def kill():
        try:
            os.killpg(server["pid"], signal.SIGKILL)
        except ProcessLookupError:
            pass

    yield kill
    kill()


class StreamThatKillsStorage:
    """A request body that kills the storage server after the first part has gone out."""

    def __init__(self, kill, total=12 * 1024 * 1024, kill_after=6 * 1024 * 1024):
        self.kill, self.total, self.kill_after, self.sent = kill, total, kill_after, 0

    def read(self, size=-1):
        if self.sent >= self.kill_after:
            self.kill()
        size = min(size if size and size > 0 else 1 << 20, self.total - self.sent)
        self.sent += size
        return b"\0" * size


def test_storage_dying_mid_upload_records_nothing(engineer, doomed_s3):
    model = services.create_model(name="credit-llm", description="", actor=engineer)
    version = services.create_version(model=model, description="", actor=engineer)
    with pytest.raises(StorageUnavailable, match="did not answer"):
        services.upload_version_file(version=version, path="model.safetensors",
                                     stream=StreamThatKillsStorage(doomed_s3), content_length=None,
                                     expected_sha256=None, actor=engineer)
    assert not VersionFile.objects.exists()


def test_upload_while_storage_is_down_is_a_503(engineer, engineer_api, doomed_s3):
    engineer_api.post("/api/v1/models/", {"name": "credit-llm"}, format="json")
    engineer_api.post("/api/v1/models/credit-llm/versions/", {}, format="json")
    doomed_s3()
    response = engineer_api.put("/api/v1/models/credit-llm/versions/1/files/config.json", data=b"{}",
                                content_type="application/octet-stream")
    assert response.status_code == 503
    assert response.json()["error"] == "storage_unavailable" and "nothing was stored" in response.json()["detail"]
    assert not VersionFile.objects.exists()


def test_health_check_names_object_storage_when_it_is_down(client, doomed_s3):
    assert client.get("/healthz").status_code == 200
    doomed_s3()
    response = client.get("/healthz")
    assert response.status_code == 503 and response.json()["failing"] == ["object_storage"]


def test_a_dataset_whose_object_is_gone_is_a_404_not_a_crash(engineer_api):
    from django.core.files.uploadedfile import SimpleUploadedFile

    from foundation import storage
    from registry.models import Dataset

    created = engineer_api.post("/api/v1/datasets/", {
        "name": "gone", "purpose": "training",
        "file": SimpleUploadedFile("gone.jsonl", b'{"text": "Net interest margin rose."}\n')}, format="multipart")
    dataset = Dataset.objects.get(pk=created.json()["id"])
    storage.remove(dataset.object_key, version_id=dataset.storage_version_id)

    response = engineer_api.post(f"/api/v1/datasets/{dataset.pk}/redact", {"strategy": "mask"}, format="json")

    assert response.status_code == 404 and "missing from storage" in response.json()["detail"]
