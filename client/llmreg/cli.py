"""`llmreg` commands: push, pull, job, quantize, analyse, lora, models.

Configuration comes from LLMREG_URL and LLMREG_TOKEN, or --url and --token. Exit code 0 on success, 1 when the
registry refuses a request or a followed job does not succeed, 2 for bad command-line usage.
"""
import argparse
import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from urllib.parse import quote

from llmreg.api import Registry, RegistryError, file_sha256

FINISHED = ("succeeded", "failed", "cancelled")


def _version_path(model: str, number) -> str:
    return f"models/{quote(model)}/versions/{number}"


def push(registry: Registry, args) -> int:
    directory = Path(args.directory)
    files = sorted(p for p in directory.rglob("*") if p.is_file())
    if not files:
        raise RegistryError(f"{directory} holds no files to push.")
    stored: dict[str, dict] = {}
    if args.version:  # resume a push that was cut short: its draft keeps what already arrived
        number = args.version
        detail = registry.get(f"{_version_path(args.model, number)}/")
        if detail["status"] != "draft":
            raise RegistryError(f"{args.model} v{number} is {detail['status']}; only a draft takes more files.")
        stored = {item["path"]: item for item in detail["files"]}
    else:
        if not registry.model_exists(args.model):
            body = {"name": args.model, "description": args.description or ""}
            if args.team:
                body["team"] = args.team
            registry.post("models/", body)
        number = registry.post(f"models/{quote(args.model)}/versions/",
                               {"description": args.description or ""})["number"]
    progress = PushProgress(files)
    print(f"pushing {len(files)} files ({_megabytes(progress.total_bytes)}) to {args.model} v{number}; if it is cut "
          f"short, resume with: llmreg push {directory} --model {args.model} --version {number}", file=sys.stderr)
    pending = []
    for path in files:
        relative = path.relative_to(directory).as_posix()
        known = stored.get(relative)
        if known and known["size"] == path.stat().st_size and known["sha256"] == file_sha256(path):
            progress.file_done(relative, path.stat().st_size, skipped=True)
        else:
            pending.append((relative, path))
    sessions = threading.local()

    def upload(relative: str, path: Path) -> None:
        if not hasattr(sessions, "registry"):
            sessions.registry = registry.clone()
        sessions.registry.upload_file(args.model, number, relative, path, on_bytes=progress.sent)
        progress.file_done(relative, path.stat().st_size)

    with ThreadPoolExecutor(max_workers=max(1, args.parallel)) as pool:
        futures = [pool.submit(upload, relative, path) for relative, path in pending]
        try:
            for future in as_completed(futures):
                future.result()
        except RegistryError as error:
            for future in futures:
                future.cancel()
            raise RegistryError(f"{error}. The files that arrived stay in the draft: resume with "
                                f"`llmreg push {directory} --model {args.model} --version {number}`.") from None
    registry.post(f"{_version_path(args.model, number)}/seal")
    print(number)
    return 0


def _megabytes(count: int) -> str:
    return f"{count / 1e6:,.1f} MB"


class PushProgress:
    """Progress of a push on stderr: each file as it completes, and the overall bytes every few percent."""

    def __init__(self, files: list[Path]):
        self.total_files = len(files)
        self.total_bytes = sum(p.stat().st_size for p in files) or 1
        self.files_done = self.bytes_done = 0
        self._last_percent = -1
        self._lock = threading.Lock()

    def sent(self, count: int) -> None:
        with self._lock:
            self.bytes_done += count
            percent = int(100 * self.bytes_done / self.total_bytes)
            finished = self.bytes_done >= self.total_bytes and percent != self._last_percent
            if percent >= self._last_percent + 5 or finished:
                self._last_percent = percent
                print(f"  {percent:3d}% {_megabytes(self.bytes_done)} of {_megabytes(self.total_bytes)}",
                      file=sys.stderr)

    def file_done(self, relative: str, size: int, *, skipped: bool = False) -> None:
        with self._lock:
            self.files_done += 1
            if skipped:
                self.bytes_done += size
            what = "skipped (already uploaded with the same SHA-256)" if skipped else "uploaded"
            print(f"[{self.files_done}/{self.total_files}] {what} {relative} ({size} bytes)", file=sys.stderr)


def resolve_version(registry: Registry, model: str, version_or_alias: str) -> int:
    if version_or_alias.isdigit():
        return int(version_or_alias)
    return registry.get(f"models/{quote(model)}/aliases/{quote(version_or_alias)}")["version"]


def pull(registry: Registry, args) -> int:
    number = resolve_version(registry, args.model, args.version)
    detail = registry.get(f"{_version_path(args.model, number)}/")
    destination = Path(args.directory)
    root = destination.resolve()
    for item in detail["files"]:
        target = (destination / item["path"]).resolve()
        if root not in target.parents:  # the server validates paths; never write outside DIR whatever it says
            raise RegistryError(f"refusing to write {item['path']!r} outside {destination}.")
        registry.download_file(args.model, number, item, target)
        print(f"downloaded {item['path']} ({item['size']} bytes)", file=sys.stderr)
    print(number)
    return 0


def follow_job(registry: Registry, job_id, *, interval: float = 1.0) -> int:
    last = None
    while True:
        job = registry.get(f"jobs/{job_id}")
        line = f"job {job['id']} {job['status']} {job.get('progress', 0)}% {job.get('message') or ''}".rstrip()
        if line != last:
            print(line, file=sys.stderr)
            last = line
        if job["status"] in FINISHED:
            break
        time.sleep(interval)
    if job["status"] != "succeeded":
        print(f"error: job {job['id']} {job['status']}: {job.get('error') or 'no error recorded'}", file=sys.stderr)
        return 1
    if job.get("result"):
        print(" ".join(f"{key}={value}" for key, value in job["result"].items()))
    return 0


def job(registry: Registry, args) -> int:
    if args.follow:
        return follow_job(registry, args.id, interval=args.interval)
    body = registry.get(f"jobs/{args.id}")
    print(f"job {body['id']} {body['status']} {body.get('progress', 0)}% {body.get('message') or ''}".rstrip())
    return 0 if body["status"] != "failed" else 1


def _start_job(registry: Registry, args, endpoint: str, body: dict) -> int:
    started = registry.post(f"{_version_path(args.model, args.number)}/{endpoint}",
                            {key: value for key, value in body.items() if value is not None})
    print(started["job"])
    return follow_job(registry, started["job"], interval=args.interval) if args.follow else 0


def quantize(registry: Registry, args) -> int:
    return _start_job(registry, args, "quantize", {
        "method": args.method, "compute_dtype": args.compute_dtype, "double_quant": args.double_quant,
        "skip_modules": args.skip_module, "bits": args.bits, "group_size": args.group_size,
        "calibration_dataset": args.calibration_dataset, "calibration_samples": args.calibration_samples,
    })


def analyse(registry: Registry, args) -> int:
    return _start_job(registry, args, "analyses", {
        "dataset": args.dataset, "reference": args.reference, "max_tokens": args.max_tokens, "top_k": args.top_k,
    })


def lora(registry: Registry, args) -> int:
    return _start_job(registry, args, "lora-updates", {
        "dataset": args.dataset, "steps": args.steps, "r": args.r, "alpha": args.alpha,
        "learning_rate": args.learning_rate, "target_modules": args.target_module, "seed": args.seed,
    })


def models(registry: Registry, args) -> int:
    for row in registry.list_all(f"models/?limit={args.limit}"):
        print(row["name"])
    return 0


def _job_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model")
    parser.add_argument("number", type=int, help="version number")
    parser.add_argument("--follow", action="store_true", help="wait for the job; exit non-zero unless it succeeds")
    parser.add_argument("--interval", type=float, default=1.0, help=argparse.SUPPRESS)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llmreg", description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=os.environ.get("LLMREG_URL"), help="registry base URL (LLMREG_URL)")
    parser.add_argument("--token", default=os.environ.get("LLMREG_TOKEN"), help="API token (LLMREG_TOKEN)")
    commands = parser.add_subparsers(dest="command", required=True)

    command = commands.add_parser("push", help="upload a directory as a new sealed version; prints its number")
    command.add_argument("directory")
    command.add_argument("--model", required=True)
    command.add_argument("--description")
    command.add_argument("--team")
    command.add_argument("--version", type=int, help="resume: add the missing files to this draft, then seal it")
    command.add_argument("--parallel", type=int, default=4, help="files uploaded at once (default 4)")
    command.set_defaults(handler=push)

    command = commands.add_parser("pull", help="download a version (number or alias) into a directory")
    command.add_argument("model")
    command.add_argument("version", metavar="VERSION|ALIAS")
    command.add_argument("directory")
    command.set_defaults(handler=pull)

    command = commands.add_parser("job", help="show a job; --follow waits for it")
    command.add_argument("id")
    command.add_argument("--follow", action="store_true")
    command.add_argument("--interval", type=float, default=1.0, help=argparse.SUPPRESS)
    command.set_defaults(handler=job)

    command = commands.add_parser("quantize", help="start a quantization job; prints the job id")
    _job_arguments(command)
    command.add_argument("--method", required=True, choices=["nf4", "fp4", "int8", "gptq", "awq"])
    command.add_argument("--compute-dtype", choices=["float16", "bfloat16", "float32"])
    command.add_argument("--double-quant", action=argparse.BooleanOptionalAction, default=None)
    command.add_argument("--skip-module", action="append", help="module to keep unquantized (repeatable)")
    command.add_argument("--bits", type=int)
    command.add_argument("--group-size", type=int)
    command.add_argument("--calibration-dataset", type=int)
    command.add_argument("--calibration-samples", type=int)
    command.set_defaults(handler=quantize)

    command = commands.add_parser("analyse", help="start an analysis against a reference version")
    _job_arguments(command)
    command.add_argument("--dataset", required=True, type=int)
    command.add_argument("--reference", type=int, help="reference version number (default: the parent)")
    command.add_argument("--max-tokens", type=int)
    command.add_argument("--top-k", type=int)
    command.set_defaults(handler=analyse)

    command = commands.add_parser("lora", help="start a LoRA training job")
    _job_arguments(command)
    command.add_argument("--dataset", required=True, type=int)
    command.add_argument("--steps", type=int)
    command.add_argument("--r", type=int)
    command.add_argument("--alpha", type=int)
    command.add_argument("--learning-rate", type=float)
    command.add_argument("--target-module", action="append", help="module name to adapt (repeatable)")
    command.add_argument("--seed", type=int)
    command.set_defaults(handler=lora)

    command = commands.add_parser("models", help="list model names (all pages)")
    command.add_argument("--limit", type=int, default=100, help=argparse.SUPPRESS)
    command.set_defaults(handler=models)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if not args.url:
        print("error: set LLMREG_URL or pass --url with the registry's base URL.", file=sys.stderr)
        return 2
    try:
        return args.handler(Registry(args.url, args.token), args)
    except RegistryError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except OSError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
