"""put_stream reads a large body ahead of the S3 upload on a thread of its own: what a user and an operator see."""
import hashlib
import os
import threading

import pytest

from foundation import storage
from foundation.errors import InvalidInput, TooLarge

MIB = 1024 * 1024


class ClientBody:
    """A request body arriving in pieces of odd sizes; it can break off (the client went away) after `fail_after`."""

    def __init__(self, data: bytes, fail_after: int | None = None):
        self.data, self.position, self.fail_after = data, 0, fail_after

    def read(self, size=-1):
        if self.fail_after is not None and self.position >= self.fail_after:
            raise OSError("connection reset by peer")
        size = min(size if size and size > 0 else len(self.data), 300_001)
        chunk = self.data[self.position:self.position + size]
        self.position += len(chunk)
        return chunk


def _read_ahead_threads() -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread.name == "upload-read-ahead"]


@pytest.fixture
def small_parts(settings):
    settings.S3_PART_SIZE = 5 * MIB  # the S3 minimum: a 13 MiB body goes in three parts


def test_a_multi_part_body_is_stored_byte_for_byte_with_its_sha256(small_parts):
    data = os.urandom(13 * MIB + 7)
    stored = storage.put_stream(f"tests/read-ahead/{os.getpid()}-whole", ClientBody(data), length=len(data))
    assert stored.size == len(data)
    assert stored.sha256 == hashlib.sha256(data).hexdigest()
    assert storage.read_bytes(stored.key, version_id=stored.version_id) == data
    assert not _read_ahead_threads()


def test_a_body_of_unknown_length_is_stored_whole(small_parts):
    data = os.urandom(11 * MIB)
    stored = storage.put_stream(f"tests/read-ahead/{os.getpid()}-chunked", ClientBody(data))
    assert storage.read_bytes(stored.key, version_id=stored.version_id) == data


def test_a_client_that_goes_away_mid_body_gets_a_4xx_and_leaves_no_thread_behind(small_parts):
    data = os.urandom(13 * MIB)
    with pytest.raises(InvalidInput, match="ended after"):
        storage.put_stream(f"tests/read-ahead/{os.getpid()}-cut", ClientBody(data, fail_after=7 * MIB),
                           length=len(data))
    assert not _read_ahead_threads()


def test_a_body_over_the_limit_is_refused_and_leaves_no_thread_behind(small_parts):
    data = os.urandom(13 * MIB)
    with pytest.raises(TooLarge):
        storage.put_stream(f"tests/read-ahead/{os.getpid()}-large", ClientBody(data), max_bytes=6 * MIB)
    assert not _read_ahead_threads()
