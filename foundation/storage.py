"""The only module that talks to object storage (S3 API through the minio SDK).

Uploads are streamed as multipart uploads with their SHA-256 computed on the way, so memory stays at about one
part whatever the object's size. Connection failures become `StorageUnavailable`, which the API reports as 503.
"""
import functools
import hashlib
import io
import queue
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import urllib3
from django.conf import settings
from minio import Minio
from minio.commonconfig import COMPLIANCE, GOVERNANCE
from minio.error import S3Error
from minio.retention import Retention

from foundation.errors import InvalidInput, NotFound, StorageUnavailable, TooLarge, Unprocessable

_TRANSPORT_ERRORS = (urllib3.exceptions.HTTPError, OSError)


@dataclass(frozen=True)
class StoredObject:
    key: str
    size: int
    sha256: str
    version_id: str


@functools.cache
def _client_for(endpoint: str, access_key: str, secret_key: str, region: str) -> Minio:
    secure = endpoint.startswith("https://")
    host = endpoint.split("://", 1)[-1].rstrip("/")
    # Few, quick retries: a storage outage should surface as a clear 503, not a request hanging for minutes.
    http_client = urllib3.PoolManager(
        timeout=urllib3.Timeout(connect=5, read=120),
        maxsize=16,
        retries=urllib3.Retry(total=2, backoff_factor=0.2, status_forcelist=[500, 502, 503, 504]),
    )
    return Minio(host, access_key=access_key, secret_key=secret_key, secure=secure, region=region,
                 http_client=http_client)


def _client() -> Minio:
    return _client_for(settings.S3_ENDPOINT, settings.S3_ACCESS_KEY, settings.S3_SECRET_KEY, settings.S3_REGION)


def _bucket() -> str:
    return settings.S3_BUCKET


class _HashingReader:
    """Wraps a readable stream: counts, hashes and enforces a size limit while minio reads it part by part."""

    def __init__(self, stream, max_bytes: int | None):
        self._stream = stream
        self._max_bytes = max_bytes
        self.size = 0
        self.digest = hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        chunk = self._stream.read(size) if size is not None and size >= 0 else self._stream.read()
        if chunk:
            self.size += len(chunk)
            if self._max_bytes is not None and self.size > self._max_bytes:
                raise TooLarge(f"The upload is larger than the limit of {self._max_bytes} bytes.")
            self.digest.update(chunk)
        return chunk


def _unavailable(error: Exception) -> StorageUnavailable:
    return StorageUnavailable(
        f"Object storage at {settings.S3_ENDPOINT} did not answer ({type(error).__name__}); nothing was stored. "
        "Try again when storage is back."
    )


def put_stream(key: str, stream, *, max_bytes: int | None = None, length: int | None = None,
               content_type: str = "application/octet-stream") -> StoredObject:
    """Stream `stream` to `key` as a multipart upload, returning its size and SHA-256."""
    part_size = settings.S3_PART_SIZE
    read_ahead = _ReadAhead(stream, part_size) if length is None or length > part_size else None
    reader = _HashingReader(read_ahead or stream, max_bytes)
    try:
        # One part in flight to storage (minio's parallel parts held ~4 parts in memory and leave their threads
        # behind when the stream fails); _ReadAhead keeps the next part coming in from the client meanwhile.
        result = _client().put_object(
            _bucket(), key, reader, length=length if length is not None else -1, part_size=part_size,
            content_type=content_type, num_parallel_uploads=1,
        )
    except _TRANSPORT_ERRORS as error:
        if length is not None and reader.size < length and not isinstance(error, urllib3.exceptions.HTTPError):
            # minio raises IOError when the body ends before the declared length: the client's fault, not ours.
            raise InvalidInput(f"The upload ended after {reader.size} of the {length} bytes announced in "
                               "Content-Length; nothing was stored. Send the whole file again.") from error
        raise _unavailable(error) from error
    finally:
        if read_ahead is not None:
            read_ahead.close()
    return StoredObject(key=key, size=reader.size, sha256=reader.digest.hexdigest(), version_id=result.version_id or "")


class _ReadAhead:
    """Reads a stream on a thread of its own, up to `ahead` bytes in front of its consumer.

    Profiled, an upload's web thread spent 85 % of its wall time waiting for the S3 server to answer a part,
    while nothing read the client's next bytes (so the client stalled too). With this, receiving part n+1
    overlaps storing part n; memory grows by at most `ahead` bytes.
    """

    CHUNK = 1024 * 1024

    def __init__(self, stream, ahead: int):
        self._stream = stream
        self._chunks: queue.Queue = queue.Queue(maxsize=max(1, ahead // self.CHUNK))
        self._stop = threading.Event()
        self._buffer = b""
        self._ended = False
        self._thread = threading.Thread(target=self._fill, name="upload-read-ahead", daemon=True)
        self._thread.start()

    def _fill(self) -> None:
        try:
            while not self._stop.is_set():
                chunk = self._stream.read(self.CHUNK)
                if not self._offer(chunk) or not chunk:
                    return
        except BaseException as error:  # handed to the consumer, which raises it in the request's thread
            self._offer(error)

    def _offer(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._chunks.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def read(self, size: int = -1) -> bytes:
        wanted = size if size is not None and size >= 0 else float("inf")
        pieces, held = [self._buffer] if self._buffer else [], len(self._buffer)
        while held < wanted and not self._ended:
            item = self._chunks.get()
            if isinstance(item, BaseException):
                self._ended = True
                raise item
            if not item:
                self._ended = True
                break
            pieces.append(item)
            held += len(item)
        data = b"".join(pieces)  # one copy per part, where minio's own loop would concatenate chunk by chunk
        if held > wanted:
            data, self._buffer = data[:size], data[size:]
        else:
            self._buffer = b""
        return data

    def close(self) -> None:
        """Stop reading (an upload that failed stops taking the client's bytes) and wait for the thread, so the
        request's stream is never read by two threads once the view goes on."""
        self._stop.set()
        self._thread.join()


def put_file(key: str, path: Path) -> StoredObject:
    """Upload a local file, hashing it on the way."""
    with open(path, "rb") as handle:
        return put_stream(key, handle, length=path.stat().st_size)


def put_bytes(key: str, data: bytes, *, content_type: str = "application/octet-stream") -> StoredObject:
    try:
        result = _client().put_object(_bucket(), key, io.BytesIO(data), length=len(data), content_type=content_type)
    except _TRANSPORT_ERRORS as error:
        raise _unavailable(error) from error
    return StoredObject(key=key, size=len(data), sha256=hashlib.sha256(data).hexdigest(),
                        version_id=result.version_id or "")


def put_locked_bytes(key: str, data: bytes, *, retain_days: int, mode: str,
                     content_type: str = "application/octet-stream") -> StoredObject:
    """Store an object under object-lock retention: the storage server itself refuses to delete or overwrite
    that version until the retention date (COMPLIANCE mode: not even an administrator can)."""
    retain_until = datetime.now(timezone.utc) + timedelta(days=retain_days)
    retention = Retention(COMPLIANCE if mode.upper() == "COMPLIANCE" else GOVERNANCE, retain_until)
    try:
        result = _client().put_object(_bucket(), key, io.BytesIO(data), length=len(data),
                                      content_type=content_type, retention=retention)
    except _TRANSPORT_ERRORS as error:
        raise _unavailable(error) from error
    return StoredObject(key=key, size=len(data), sha256=hashlib.sha256(data).hexdigest(),
                        version_id=result.version_id or "")


def _read(key: str, *, version_id: str, offset: int = 0, length: int = 0) -> bytes:
    response = None
    try:
        response = _client().get_object(_bucket(), key, offset=offset, length=length, version_id=version_id or None)
        return response.read()
    except S3Error as error:
        raise _missing_or_raise(key, error) from error
    except _TRANSPORT_ERRORS as error:
        raise _unavailable(error) from error
    finally:
        if response is not None:
            response.close()
            response.release_conn()


def read_range(key: str, offset: int, length: int, *, version_id: str = "") -> bytes:
    """Read `length` bytes at `offset` with a ranged GET (used to read safetensors headers without downloading)."""
    if length == 0:
        return b""
    return _read(key, version_id=version_id, offset=offset, length=length)


def read_bytes(key: str, *, version_id: str = "", sha256: str = "") -> bytes:
    """The whole object; with `sha256`, Unprocessable unless the bytes still match it."""
    data = _read(key, version_id=version_id)
    if sha256:
        _check_sha256(key, sha256, hashlib.sha256(data).hexdigest())
    return data


def _check_sha256(key: str, expected: str, read: str) -> None:
    if read != expected:
        raise Unprocessable(f"Object {key} no longer matches the SHA-256 recorded when it was stored (expected "
                            f"{expected}, read {read}): it was altered or damaged in storage, so nothing was "
                            "computed from it. Restore the object from a backup.")



DOWNLOAD_CHUNK = 8 * 1024 * 1024


def download_to(key: str, destination: Path, *, version_id: str = "", sha256: str = "") -> None:
    """Write the object to `destination`. With `sha256`, the bytes are hashed as they arrive and a mismatch is
    Unprocessable, with nothing left at `destination`: what a job computes on must be what was sealed."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    if not sha256:
        try:
            _client().fget_object(_bucket(), key, str(destination), version_id=version_id or None)
        except S3Error as error:
            raise _missing_or_raise(key, error) from error
        except _TRANSPORT_ERRORS as error:
            raise _unavailable(error) from error
        return
    partial = destination.with_name(destination.name + ".partial")
    digest = hashlib.sha256()
    response = None
    try:
        response = _client().get_object(_bucket(), key, version_id=version_id or None)
        with open(partial, "wb") as out:
            for chunk in response.stream(DOWNLOAD_CHUNK):
                digest.update(chunk)
                out.write(chunk)
    except S3Error as error:
        partial.unlink(missing_ok=True)
        raise _missing_or_raise(key, error) from error
    except _TRANSPORT_ERRORS as error:
        partial.unlink(missing_ok=True)
        raise _unavailable(error) from error
    finally:
        if response is not None:
            response.close()
            response.release_conn()
    try:
        _check_sha256(key, sha256, digest.hexdigest())
    except Unprocessable:
        partial.unlink(missing_ok=True)
        raise
    partial.replace(destination)


def _missing_or_raise(key: str, error: S3Error) -> Exception:
    """A missing object is the caller's NotFound; any other refusal from the server stays what it is."""
    if error.code in ("NoSuchKey", "NoSuchVersion"):
        return NotFound(f"Object {key} is missing from storage.")
    return error


def presigned_download_url(key: str, *, filename: str, version_id: str = "") -> str:
    try:
        return _client().presigned_get_object(
            _bucket(), key, expires=timedelta(seconds=settings.S3_PRESIGN_SECONDS),
            version_id=version_id or None,
            response_headers={"response-content-disposition": f'attachment; filename="{filename}"'},
        )
    except _TRANSPORT_ERRORS as error:
        raise _unavailable(error) from error


def remove(key: str, *, version_id: str = "") -> None:
    """Delete one object version (an upload that failed its checksum, a replaced draft file)."""
    try:
        _client().remove_object(_bucket(), key, version_id=version_id or None)
    except _TRANSPORT_ERRORS as error:
        raise _unavailable(error) from error



def list_keys(prefix: str) -> list[str]:
    try:
        return [obj.object_name for obj in _client().list_objects(_bucket(), prefix=prefix, recursive=True)]
    except _TRANSPORT_ERRORS as error:
        raise _unavailable(error) from error


def ping() -> None:
    """Raise StorageUnavailable unless the bucket answers."""
    try:
        if not _client().bucket_exists(_bucket()):
            raise StorageUnavailable(f"Bucket {_bucket()} does not exist at {settings.S3_ENDPOINT}.")
    except _TRANSPORT_ERRORS as error:
        raise _unavailable(error) from error
    except S3Error as error:
        raise StorageUnavailable(f"Object storage refused the health check: {error.code}.") from error
