"""scripts/s3server.py against a real SeaweedFS started in a temporary data dir on its own free ports.

Checks what the registry relies on: credentials (a wrong secret is refused), object lock (a retained version cannot
be deleted), presigned GET, ranged GET, multipart upload of a stream of unknown length, idempotent start and stop,
and a restart that keeps ports and data and applies rotated credentials. About 40 s, most of it SeaweedFS's ~15 s
graceful stop (twice).
"""
import datetime as dt
import hashlib
import io
import json
import os
import socket
import stat
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from minio import Minio
from minio.commonconfig import COMPLIANCE, GOVERNANCE
from minio.error import S3Error
from minio.retention import Retention

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "s3server.py"
sys.path.insert(0, str(REPO / "scripts"))
import s3server  # noqa: E402

ENV_NAMES = ("S3_ACCESS_KEY", "S3_SECRET_KEY", "S3_ACCESS_KEY_FILE", "S3_SECRET_KEY_FILE", "S3_BUCKET",
             "S3_DATA_DIR", "S3_ENDPOINT")


def client_for(info: dict, secret_key: str | None = None, access_key: str | None = None) -> Minio:
    return Minio(info["endpoint"].split("://", 1)[1], access_key=access_key or info["access_key"],
                 secret_key=secret_key or info["secret_key"], secure=False, region="us-east-1")


def in_seconds(seconds: int) -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=seconds)


def listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def run_cli(*args: str, data_dir: Path) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if key not in ENV_NAMES}
    return subprocess.run([sys.executable, str(SCRIPT), *args, "--data-dir", str(data_dir)],
                          capture_output=True, text=True, env=env, timeout=120, check=False)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("s3")


@pytest.fixture(scope="module")
def server(data_dir):
    with pytest.MonkeyPatch.context() as patch:
        for name in ENV_NAMES:
            patch.delenv(name, raising=False)
        info = s3server.start_server(data_dir, timeout=60)
        try:
            yield info
        finally:
            s3server.stop_server(data_dir)


@pytest.fixture
def client(server) -> Minio:
    return client_for(server)


def test_start_reports_a_loopback_endpoint_and_bucket(server, data_dir):
    assert server["running"] and not server["already_running"]
    assert server["endpoint"] == f"http://127.0.0.1:{server['ports']['s3']}"
    assert server["bucket"] == "registry"
    assert server["data_dir"] == str(data_dir.resolve())
    assert server["startup_seconds"] < 30
    assert len(set(server["ports"].values())) == len(s3server.PORT_NAMES)
    state = json.loads((data_dir / "state.json").read_text())
    assert state["ports"] == server["ports"]


def test_every_listener_is_on_loopback_and_extras_are_off(server):
    psutil = pytest.importorskip("psutil")
    listeners = {(c.laddr.ip, c.laddr.port) for c in psutil.Process(server["pid"]).net_connections(kind="inet")
                 if c.status == psutil.CONN_LISTEN or c.type == socket.SOCK_DGRAM}
    assert {ip for ip, _ in listeners} == {"127.0.0.1"}
    # Exactly master, volume, filer and s3 with their gRPC ports: no Iceberg (8181), Lance (9101), metrics, ...
    assert {port for _, port in listeners} == set(server["ports"].values())


def test_credentials_are_private_and_the_secret_stays_out_of_the_log(server, data_dir):
    for name in ("credentials.json", "s3-identities.json", "state.json"):
        assert stat.S_IMODE((data_dir / name).stat().st_mode) == 0o600, name
    log = (data_dir / "weed.log").read_text(errors="replace")
    assert server["secret_key"] not in log
    assert server["secret_key"] not in s3server._cmdline(server["pid"])  # only the config file holds it


def test_wrong_secret_and_anonymous_requests_are_rejected(server, client):
    assert client.bucket_exists(server["bucket"])
    with pytest.raises(S3Error) as wrong:
        client_for(server, secret_key=server["secret_key"] + "x").list_buckets()
    assert wrong.value.code in ("SignatureDoesNotMatch", "AccessDenied", "InvalidAccessKeyId")
    with pytest.raises(S3Error) as unknown:
        client_for(server, access_key="nobody").list_buckets()
    assert unknown.value.code in ("InvalidAccessKeyId", "AccessDenied", "SignatureDoesNotMatch")
    anonymous = Minio(server["endpoint"].split("://", 1)[1], secure=False, region="us-east-1")
    with pytest.raises(S3Error) as anon:
        anonymous.get_object(server["bucket"], s3server.PROBE_KEY)
    assert anon.value.code == "AccessDenied"


def test_bucket_has_versioning_and_object_lock(server, client):
    assert client.get_bucket_versioning(server["bucket"]).status == "Enabled"
    client.get_object_lock_config(server["bucket"])  # raises on a bucket created without object lock


@pytest.mark.parametrize("mode", [COMPLIANCE, GOVERNANCE])
def test_object_lock_refuses_deleting_a_retained_version(server, client, mode):
    bucket, key = server["bucket"], f"tests/locked-{mode.lower()}"
    written = client.put_object(bucket, key, io.BytesIO(b"sealed"), 6, retention=Retention(mode, in_seconds(120)))
    assert written.version_id
    assert client.get_object_retention(bucket, key, version_id=written.version_id).mode == mode
    with pytest.raises(S3Error) as refused:
        client.remove_object(bucket, key, version_id=written.version_id)
    assert refused.value.code == "AccessDenied"
    if mode == COMPLIANCE:
        with pytest.raises(S3Error):  # a COMPLIANCE retention cannot be shortened
            client.set_object_retention(bucket, key, Retention(mode, in_seconds(5)), version_id=written.version_id)
    client.remove_object(bucket, key)  # without a version id: only a delete marker on top
    versions = list(client.list_objects(bucket, prefix=key, include_version=True))
    assert any(v.is_delete_marker for v in versions)
    response = client.get_object(bucket, key, version_id=written.version_id)
    try:
        assert response.read() == b"sealed"
    finally:
        response.close()
        response.release_conn()


def test_legal_hold_blocks_deletion_until_released(server, client):
    bucket, key = server["bucket"], "tests/legal-hold"
    written = client.put_object(bucket, key, io.BytesIO(b"x"), 1, legal_hold=True)
    assert client.is_object_legal_hold_enabled(bucket, key, version_id=written.version_id)
    with pytest.raises(S3Error):
        client.remove_object(bucket, key, version_id=written.version_id)
    client.disable_object_legal_hold(bucket, key, version_id=written.version_id)
    client.remove_object(bucket, key, version_id=written.version_id)


def test_presigned_get_works_and_a_tampered_url_is_refused(server, client):
    bucket, key = server["bucket"], "tests/presigned.txt"
    written = client.put_object(bucket, key, io.BytesIO(b"presigned body"), 14)
    url = client.presigned_get_object(bucket, key, expires=dt.timedelta(minutes=5), version_id=written.version_id,
                                      response_headers={"response-content-disposition":
                                                        'attachment; filename="p.txt"'})
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.read() == b"presigned body"
        assert response.headers["Content-Disposition"] == 'attachment; filename="p.txt"'
    with pytest.raises(urllib.error.HTTPError) as tampered:
        urllib.request.urlopen(url.replace("presigned.txt", "other.txt"), timeout=10)
    assert tampered.value.code == 403


def test_ranged_get_returns_exactly_the_range(server, client):
    bucket, key = server["bucket"], "tests/range.bin"
    data = bytes(range(256)) * 64
    client.put_object(bucket, key, io.BytesIO(data), len(data))
    response = client.get_object(bucket, key, offset=1000, length=37)
    try:
        assert response.status == 206
        assert response.read() == data[1000:1037]
    finally:
        response.close()
        response.release_conn()


class UnknownLengthStream(io.RawIOBase):
    """A stream that only supports read(), like a request body: the size is not known in advance."""

    def __init__(self, data: bytes):
        self._data, self._position = data, 0

    def readable(self):
        return True

    def read(self, size=-1):
        if size is None or size < 0:
            size = len(self._data) - self._position
        chunk = self._data[self._position:self._position + size]
        self._position += len(chunk)
        return chunk


def test_multipart_upload_of_a_stream_of_unknown_length(server, client):
    bucket, key = server["bucket"], "tests/multipart.bin"
    data = os.urandom(12 * 1024 * 1024 + 12345)
    # minio: length=-1 needs part_size (>= 5 MiB); 12 MB at 5 MiB parts is a 3-part multipart upload.
    written = client.put_object(bucket, key, UnknownLengthStream(data), length=-1, part_size=5 * 1024 * 1024)
    assert written.etag.endswith("-3")
    assert client.stat_object(bucket, key).size == len(data)
    response = client.get_object(bucket, key)
    try:
        assert hashlib.sha256(response.read()).digest() == hashlib.sha256(data).digest()
    finally:
        response.close()
        response.release_conn()


def test_a_bucket_without_object_lock_is_refused(server, client):
    client.make_bucket("plain-no-lock")
    with pytest.raises(s3server.S3ServerError, match="without object lock"):
        s3server.ensure_bucket(client, "plain-no-lock")


def test_recorded_ports_are_reused_when_free_and_replaced_when_taken():
    ports, changed = s3server._choose_ports(None)
    assert set(ports) == set(s3server.PORT_NAMES) and len(set(ports.values())) == len(ports) and not changed
    assert s3server._choose_ports(ports) == (ports, [])
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", ports["s3"]))
        busy.listen()
        again, changed = s3server._choose_ports(ports)
    assert again["s3"] != ports["s3"] and again["master"] == ports["master"]
    assert changed == [f"s3 {ports['s3']} -> {again['s3']}"]


def test_a_server_that_dies_at_startup_gives_a_clear_error_with_the_log_tail(tmp_path, monkeypatch):
    fake = tmp_path / "weed"
    fake.write_text("#!/bin/sh\n[ \"$1\" = version ] && { echo 'version 8000GB 4.48 fake'; exit 0; }\n"
                    "echo 'F1123 fake: listen tcp: address already in use' >&2\nexit 3\n")
    fake.chmod(0o755)
    monkeypatch.setenv("S3_WEED_BIN", str(fake))
    with pytest.raises(s3server.S3ServerError) as failed:
        s3server.start_server(tmp_path / "data", timeout=10)
    assert "exited with code 3" in str(failed.value)
    assert "address already in use" in str(failed.value)
    assert not (tmp_path / "data" / "weed.pid").exists()
    assert s3server.server_status(tmp_path / "data")["running"] is False


def test_start_is_idempotent_and_env_prints_the_exports(server, data_dir):
    again = s3server.start_server(data_dir)
    assert again["already_running"]
    assert (again["pid"], again["endpoint"]) == (server["pid"], server["endpoint"])
    cli = run_cli("start", data_dir=data_dir)
    assert cli.returncode == 0, cli.stderr
    assert "already running" in cli.stdout and server["endpoint"] in cli.stdout
    assert server["secret_key"] not in cli.stdout + cli.stderr
    env = run_cli("env", data_dir=data_dir)
    assert env.returncode == 0, env.stderr
    assert env.stdout.splitlines() == [
        f"export S3_ENDPOINT={server['endpoint']}",
        f"export S3_ACCESS_KEY={server['access_key']}",
        f"export S3_SECRET_KEY={server['secret_key']}",
        "export S3_BUCKET=registry",
    ]
    assert run_cli("status", data_dir=data_dir).returncode == 0


def test_stop_then_restart_keeps_ports_and_data_and_applies_new_credentials(server, data_dir):
    assert s3server.stop_server(data_dir) is True
    status = s3server.server_status(data_dir)
    assert not status["running"]
    assert not listening(server["ports"]["s3"])
    assert not (data_dir / "weed.pid").exists()
    assert s3server.stop_server(data_dir) is False  # stopping a stopped server is fine
    stopped = run_cli("stop", data_dir=data_dir)
    assert stopped.returncode == 0 and "not running" in stopped.stdout
    assert run_cli("status", data_dir=data_dir).returncode == 3

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("S3_ACCESS_KEY", "rotated-key")
        patch.setenv("S3_SECRET_KEY", "rotated-secret-0123456789")
        restarted = s3server.start_server(data_dir, timeout=60)
        try:
            assert restarted["ports"] == server["ports"]
            assert restarted["endpoint"] == server["endpoint"]
            fresh = client_for(restarted)
            assert fresh.stat_object(server["bucket"], "tests/multipart.bin").size == 12 * 1024 * 1024 + 12345
            with pytest.raises(S3Error):  # the old generated credentials no longer work
                client_for(server).list_buckets()
        finally:
            assert s3server.stop_server(data_dir) is True
