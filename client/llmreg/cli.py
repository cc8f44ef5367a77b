"""`llmreg` commands: push, pull, jobs, job, quantize, analyse, lora, models.

The URL and token come from --url and --token, else LLMREG_URL and LLMREG_TOKEN, else the config file
(~/.config/llmreg/config, or LLMREG_CONFIG). Exit code 0 on success, 1 when the
registry refuses a request or a followed job does not succeed, 2 for bad command-line usage.
"""
import argparse
import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from urllib.parse import quote, urlencode

from llmreg.api import Registry, RegistryError, file_sha256
from llmreg.config import config_path, read_config
from llmreg.progress import JobProgress, TransferProgress

FINISHED = ("succeeded", "failed", "cancelled")


def _version_path(model: str, number) -> str:
    return f"models/{quote(model)}/versions/{number}"


def push(registry: Registry, args) -> int:
    directory = Path(args.directory)
    files = {p.relative_to(directory).as_posix(): p for p in sorted(directory.rglob("*")) if p.is_file()}
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
    sizes = {relative: path.stat().st_size for relative, path in files.items()}
    resume = f"llmreg push {directory} --model {args.model} --version {number}"
    print(f"pushing {len(files)} files ({_megabytes(sum(sizes.values()))}) to {args.model} v{number}; if it is cut "
          f"short, resume with: {resume}", file=sys.stderr)
    progress = TransferProgress(sizes, verb="uploaded")
    pending = []
    for relative, path in files.items():
        known = stored.get(relative)
        # Only a file already in the draft with the same size is worth hashing beforehand: the rest are hashed
        # as they stream out, so each file is read from disk once.
        local_sha256 = file_sha256(path) if known and known["size"] == sizes[relative] else None
        if local_sha256 and local_sha256 == known["sha256"]:
            progress.finish(relative, skipped=True)
        else:
            pending.append((relative, path, local_sha256))

    def upload(registry: Registry, relative: str, path: Path, sha256: str | None) -> None:
        progress.start(relative)
        try:
            registry.upload_file(args.model, number, relative, path, sha256=sha256,
                                 on_bytes=lambda count: progress.advance(relative, count))
        except BaseException:
            progress.fail(relative)
            raise
        progress.finish(relative)

    try:
        _in_parallel(registry, upload, pending, args.parallel)
    except RegistryError as error:
        raise RegistryError(f"{error}. The files that arrived stay in the draft: resume with `{resume}`.") from None
    finally:
        progress.close()
    registry.post(f"{_version_path(args.model, number)}/seal")
    print(number)
    return 0


def _in_parallel(registry: Registry, work, items: list[tuple], parallel: int) -> None:
    """`work(registry, *item)` for every item, `parallel` at a time, each thread with its own HTTP session; the
    first error is raised once the files already in flight have ended (the queued ones are not started)."""
    sessions = threading.local()

    def run(item: tuple) -> None:
        if not hasattr(sessions, "registry"):
            sessions.registry = registry.clone()
        work(sessions.registry, *item)

    with ThreadPoolExecutor(max_workers=max(1, parallel)) as pool:
        futures = [pool.submit(run, item) for item in items]
        try:
            for future in as_completed(futures):
                future.result()
        except BaseException:
            for future in futures:
                future.cancel()
            raise


def _megabytes(count: int) -> str:
    return f"{count / 1e6:,.1f} MB"


def resolve_version(registry: Registry, model: str, version_or_alias: str) -> int:
    if version_or_alias.isdigit():
        return int(version_or_alias)
    return registry.get(f"models/{quote(model)}/aliases/{quote(version_or_alias)}")["version"]


def pull(registry: Registry, args) -> int:
    number = resolve_version(registry, args.model, args.version)
    detail = registry.get(f"{_version_path(args.model, number)}/")
    destination = Path(args.directory)
    root = destination.resolve()
    targets = []
    for item in detail["files"]:
        target = (destination / item["path"]).resolve()
        if root not in target.parents:  # the server validates paths; never write outside DIR whatever it says
            raise RegistryError(f"refusing to write {item['path']!r} outside {destination}.")
        targets.append((item, target))
    progress = TransferProgress({item["path"]: item["size"] for item in detail["files"]}, verb="downloaded")

    def download(registry: Registry, item: dict, target: Path) -> None:
        progress.start(item["path"])
        try:
            registry.download_file(args.model, number, item, target,
                                   on_bytes=lambda count: progress.advance(item["path"], count))
        except BaseException:
            progress.fail(item["path"])
            raise
        progress.finish(item["path"])

    try:
        _in_parallel(registry, download, targets, args.parallel)
    finally:
        progress.close()
    print(number)
    return 0


def follow_job(registry: Registry, job_id, *, interval: float = 1.0) -> int:
    progress = JobProgress(job_id)
    while True:
        job = registry.get(f"jobs/{job_id}")
        progress.show(job)
        if job["status"] in FINISHED:
            break
        time.sleep(interval)
    progress.close(job)
    if job["status"] != "succeeded":
        print(f"error: job {job['id']} {job['status']}: {job.get('error') or 'no error recorded'}", file=sys.stderr)
        return 1
    if job.get("result"):
        print(" ".join(f"{key}={value}" for key, value in job["result"].items()))
    return 0


def _job_line(body: dict) -> str:
    return (f"{body['id']}\t{body.get('kind', '')}\t{body['status']}\t{body.get('progress', 0)}%\t"
            f"{body.get('message') or ''}").rstrip()


def job(registry: Registry, args) -> int:
    if args.follow:
        return follow_job(registry, args.id, interval=args.interval)
    body = registry.get(f"jobs/{args.id}")
    print(_job_line(body))
    return 0 if body["status"] != "failed" else 1


def jobs(registry: Registry, args) -> int:
    """The most recent jobs (one page), newest first, optionally of one status, kind or model."""
    query = {"limit": args.limit, "status": args.status, "kind": args.kind, "model": args.model}
    rows = registry.get("jobs/?" + urlencode({key: value for key, value in query.items() if value}))
    for row in rows:
        print(_job_line(row))
    return 0


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
    parser.add_argument("--url", help="registry base URL (default: LLMREG_URL, else the config file's url)")
    parser.add_argument("--token", help="API token (default: LLMREG_TOKEN, else the config file's token)")
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
    command.add_argument("--parallel", type=int, default=4, help="files downloaded at once (default 4)")
    command.set_defaults(handler=pull)

    command = commands.add_parser("job", help="show a job; --follow waits for it")
    command.add_argument("id")
    command.add_argument("--follow", action="store_true")
    command.add_argument("--interval", type=float, default=1.0, help=argparse.SUPPRESS)
    command.set_defaults(handler=job)

    command = commands.add_parser("jobs", help="list recent jobs, newest first")
    command.add_argument("--status", choices=["queued", "running", "succeeded", "failed", "cancelled"])
    command.add_argument("--kind")
    command.add_argument("--model")
    command.add_argument("--limit", type=int, default=20)
    command.set_defaults(handler=jobs)

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
    try:
        config = read_config()
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    url = args.url or os.environ.get("LLMREG_URL") or config.get("url")
    token = args.token or os.environ.get("LLMREG_TOKEN") or config.get("token")
    if not url:
        print("error: set LLMREG_URL, pass --url or write url = ... in the config file "
              f"({config_path()}).", file=sys.stderr)
        return 2
    try:
        return args.handler(Registry(url, token), args)
    except RegistryError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except OSError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
