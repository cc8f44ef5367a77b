"""The registry's REST API v1 over HTTP: one session with the token, errors carrying the server's detail."""
import hashlib
from pathlib import Path
from urllib.parse import quote

import requests

CHUNK_BYTES = 1024 * 1024
TIMEOUT_SECONDS = 300


class RegistryError(Exception):
    """A request the registry refused or could not answer; the message is the server's `detail`."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _error_from(response: requests.Response) -> RegistryError:
    try:
        body = response.json()
        detail = body.get("detail") or body.get("error") or response.text
        if body.get("field"):
            detail = f"{detail} (field: {body['field']})"
    except ValueError:
        detail = response.text.strip()[:500] or response.reason
    return RegistryError(f"{response.status_code} {detail}", status=response.status_code)


class Registry:
    def __init__(self, base_url: str, token: str | None):
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.session = requests.Session()
        if token:
            self.session.headers["Authorization"] = f"Token {token}"

    def clone(self) -> "Registry":
        """The same registry with a session of its own (a requests.Session is not shared between threads)."""
        return Registry(self.base_url, self.token)

    def _url(self, path: str) -> str:
        return path if path.startswith("http") else f"{self.base_url}/api/v1/{path.lstrip('/')}"

    def request(self, method: str, path: str, *, expected=(200,), **kwargs) -> requests.Response:
        try:
            response = self.session.request(method, self._url(path), timeout=TIMEOUT_SECONDS, **kwargs)
        except requests.RequestException as error:
            raise RegistryError(f"cannot reach the registry at {self.base_url}: {error}") from None
        if response.status_code not in expected:
            raise _error_from(response)
        return response

    def get(self, path: str, **kwargs) -> dict:
        return self.request("GET", path, **kwargs).json()

    def post(self, path: str, body: dict | None = None, *, expected=(200, 201, 202)) -> dict:
        return self.request("POST", path, json=body or {}, expected=expected).json()

    def list_all(self, path: str):
        """Every row of a list, following the `Link: <url>; rel="next"` header page by page."""
        url = self._url(path)
        while url:
            response = self.request("GET", url)
            yield from response.json()
            url = response.links.get("next", {}).get("url")

    def model_exists(self, model: str) -> bool:
        return self.request("GET", f"models/{quote(model)}/", expected=(200, 404)).status_code == 200

    def upload_file(self, model: str, number: int, relative_path: str, local_path: Path, *,
                    sha256: str | None = None, on_bytes=None) -> dict:
        """PUT one file, read from disk once: hashed as it streams out, the hash compared with the one the
        registry computed on arrival. `sha256`, when already known (a resumed push), goes as X-Content-SHA256 so
        the registry itself refuses different bytes. `on_bytes(n)` is told as each chunk leaves."""
        before = local_path.stat()
        headers = {"Content-Type": "application/octet-stream"}
        if sha256:
            headers["X-Content-SHA256"] = sha256
        with open(local_path, "rb") as handle:
            reader = _HashingReader(handle, before.st_size, on_bytes, relative_path)
            body = self.request(
                "PUT", f"models/{quote(model)}/versions/{number}/files/{quote(relative_path)}",
                data=reader, headers=headers, expected=(200, 201),
            ).json()
        after = local_path.stat()
        if (after.st_size, after.st_mtime_ns) != (before.st_size, before.st_mtime_ns):
            raise RegistryError(f"{relative_path} changed on disk while it was uploading, so the registry holds a "
                                "mix of old and new bytes; push it again once it is written.")
        sent = reader.digest.hexdigest()
        if body.get("sha256") != sent:
            raise RegistryError(f"{relative_path}: the registry stored SHA-256 {body.get('sha256')} but the bytes "
                                f"sent have {sent}; upload it again.")
        return body

    def download_file(self, model: str, number: int, item: dict, destination: Path, on_bytes=None) -> None:
        """Follow the 302 to the presigned URL and stream the file to disk, checking its SHA-256."""
        redirect = self.request("GET", f"models/{quote(model)}/versions/{number}/files/{quote(item['path'])}",
                                expected=(302,), allow_redirects=False)
        destination.parent.mkdir(parents=True, exist_ok=True)
        partial = destination.with_name(destination.name + ".partial")
        digest = hashlib.sha256()
        # The presigned URL carries its own signature: the registry token must not travel to object storage.
        try:
            with requests.get(redirect.headers["Location"], stream=True, timeout=TIMEOUT_SECONDS) as response:
                if response.status_code != 200:
                    raise RegistryError(f"{item['path']}: object storage answered {response.status_code}.")
                with open(partial, "wb") as handle:
                    for chunk in response.iter_content(CHUNK_BYTES):
                        digest.update(chunk)
                        handle.write(chunk)
                        if on_bytes:
                            on_bytes(len(chunk))
        except requests.RequestException as error:
            partial.unlink(missing_ok=True)
            raise RegistryError(f"{item['path']}: download failed: {error}") from None
        if digest.hexdigest() != item["sha256"]:
            partial.unlink()
            raise RegistryError(f"{item['path']}: downloaded bytes have SHA-256 {digest.hexdigest()} but the "
                                f"registry recorded {item['sha256']}; the download is corrupt, try again.")
        partial.replace(destination)


class _HashingReader:
    """A file streamed as a request body (its length known, so it goes with Content-Length), hashed on the way.

    It hands out CHUNK_BYTES whatever size the HTTP library asks for (urllib3 asks for 16 KiB): a few large
    reads and sends instead of 64 per MiB, each with its Python call, hash update and progress callback.
    """

    def __init__(self, handle, size: int, on_bytes, name: str):
        self.handle, self.size, self.on_bytes, self.name = handle, size, on_bytes, name
        self.remaining = size
        self.digest = hashlib.sha256()

    def __len__(self) -> int:
        return self.size

    def read(self, amount: int = -1) -> bytes:
        if not self.remaining:
            return b""
        chunk = self.handle.read(min(CHUNK_BYTES, self.remaining))
        if not chunk:
            raise RegistryError(f"{self.name} got shorter while it was uploading ({self.size - self.remaining} of "
                                f"{self.size} bytes sent); push it again once it is written.")
        self.remaining -= len(chunk)
        self.digest.update(chunk)
        if self.on_bytes:
            self.on_bytes(len(chunk))
        return chunk
