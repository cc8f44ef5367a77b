"""Jobs compute only on the bytes that were sealed: a download or read checked against the recorded SHA-256 fails
clearly, leaving no file behind, when storage hands back anything else."""
import hashlib
import os

import pytest

from foundation import storage
from foundation.errors import Unprocessable

MIB = 1024 * 1024


@pytest.fixture(scope="module")
def stored():
    data = os.urandom(9 * MIB + 3)  # more than one download chunk
    return storage.put_stream(f"tests/integrity/{os.getpid()}", _Body(data), length=len(data)), data


class _Body:
    def __init__(self, data: bytes):
        self.data, self.position = data, 0

    def read(self, size=-1):
        size = size if size and size > 0 else len(self.data)
        chunk = self.data[self.position:self.position + size]
        self.position += len(chunk)
        return chunk


def test_a_download_matching_its_sha256_is_written_whole(stored, tmp_path):
    obj, data = stored
    destination = tmp_path / "model" / "model.safetensors"
    storage.download_to(obj.key, destination, version_id=obj.version_id, sha256=hashlib.sha256(data).hexdigest())
    assert destination.read_bytes() == data
    assert sorted(path.name for path in destination.parent.iterdir()) == ["model.safetensors"]


def test_a_download_not_matching_its_recorded_sha256_fails_and_leaves_nothing(stored, tmp_path):
    obj, data = stored
    recorded = hashlib.sha256(data + b"as sealed").hexdigest()
    destination = tmp_path / "model" / "model.safetensors"
    with pytest.raises(Unprocessable) as refused:
        storage.download_to(obj.key, destination, version_id=obj.version_id, sha256=recorded)
    assert recorded in refused.value.message and hashlib.sha256(data).hexdigest() in refused.value.message
    assert "altered or damaged" in refused.value.message
    assert list(destination.parent.iterdir()) == []


def test_a_read_not_matching_its_recorded_sha256_fails(stored):
    obj, data = stored
    assert storage.read_bytes(obj.key, version_id=obj.version_id, sha256=hashlib.sha256(data).hexdigest()) == data
    with pytest.raises(Unprocessable):
        storage.read_bytes(obj.key, version_id=obj.version_id, sha256="0" * 64)
