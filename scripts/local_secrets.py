#!/usr/bin/env python3
"""The local stack's own secrets, generated once: SECRET_KEY and REPORT_PKI_PASSPHRASE have no default anywhere.

    python scripts/local_secrets.py ensure   # create the file, or add what it lacks (idempotent); prints no secret

The file is $LOCAL_SECRETS_FILE, else <repo>/.var/secrets.json: a JSON object {name: value}, mode 0600, written
atomically. config/settings.py reads it for whichever secret the environment does not set (NAME or NAME_FILE),
so the stack's processes and `python manage.py ...` run by hand share one set. A deployment sets its secrets in
the environment and has no such file. The S3 credentials of the local SeaweedFS live beside it, in
.var/s3/credentials.json (scripts/s3server.py), made the same way.

Importable, stdlib only (config/env.py uses it): default_secrets_file(), read_secrets(path), ensure_secrets(path).
"""
from __future__ import annotations

import contextlib
import json
import os
import secrets
import stat
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# 64 URL-safe bytes of randomness; Django's deploy check wants a SECRET_KEY of 50+ characters, 5+ distinct.
GENERATED = {
    "SECRET_KEY": lambda: secrets.token_urlsafe(64),
    "REPORT_PKI_PASSPHRASE": lambda: secrets.token_urlsafe(32),
    "WEBHOOK_SECRETS_KEY": lambda: secrets.token_urlsafe(32),
}


class SecretsFileError(RuntimeError):
    """The secrets file cannot be used; the message says why and what to do."""


def default_secrets_file() -> Path:
    return Path(os.environ.get("LOCAL_SECRETS_FILE") or REPO / ".var" / "secrets.json")


def read_secrets(path: Path | str) -> dict:
    """The generated secrets ({} when the file does not exist). A file that other users may read is refused:
    its secrets must be taken as known."""
    path = Path(path)
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return {}
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise SecretsFileError(f"{path} is readable by other users (mode {stat.S_IMODE(mode):o}); treat its secrets "
                               "as leaked: delete it and run `make up` to generate new ones (or chmod 600 it).")
    try:
        with open(path, encoding="utf-8") as handle:
            stored = json.load(handle)
    except (OSError, ValueError) as error:
        raise SecretsFileError(f"Cannot read {path}: {error}; delete it and run `make up` to regenerate it.") from None
    if not isinstance(stored, dict):
        raise SecretsFileError(f"{path} does not hold a JSON object; delete it and run `make up` to regenerate it.")
    return stored


def _write_private(path: Path, text: str) -> None:
    """Write a file readable by this user only (0600, whatever the umask), atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def ensure_secrets(path: Path | str) -> list[str]:
    """Generate the secrets the file lacks (0600). Returns the names generated now (none when all existed).
    A file that others could read is refused, not tightened: its secrets must be replaced, not kept."""
    path = Path(path)
    stored = read_secrets(path)
    missing = [name for name in GENERATED if not stored.get(name)]
    if missing:
        stored.update({name: GENERATED[name]() for name in missing})
        _write_private(path, json.dumps(stored, indent=2) + "\n")
    return missing


def main(argv: list[str]) -> int:
    if argv != ["ensure"]:
        print("usage: local_secrets.py ensure", file=sys.stderr)
        return 2
    path = default_secrets_file()
    try:
        generated = ensure_secrets(path)
    except (OSError, SecretsFileError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    if generated:
        print(f"generated {', '.join(generated)} into {path} (mode 0600)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
