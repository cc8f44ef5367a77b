"""Upload and download throughput of the file endpoint against the raw minio client, and the web's memory.

    .venv/bin/python bench/upload.py [--file-mb 2048] [--ratio-mb 512] [--repetitions 5] [--push-mb 512]

1. Memory: one `--file-mb` upload (os.urandom blocks generated while sending, never held whole) through
   PUT /api/v1/models/{m}/versions/1/files/{path}, while a thread samples the RSS of every gunicorn worker
   (children of .var/run/web.pid) every 50 ms. peak_rss_growth_mb is the largest rise of the workers' summed
   RSS over the pre-upload baseline. It runs first, before the ratio repetitions warm the workers' heaps; but
   long-lived workers keep the high-water mark of earlier large uploads, which then hides part of a request's
   working set. `--web fresh` measures on a private gunicorn (one gthread worker, same settings, free port)
   started for the purpose instead, which gives the same number whatever the stack served before.
2. Throughput: `--repetitions` rounds over one `--ratio-mb` file on local disk (page cache), each round timing
   the API upload (Content-Length, 1 MiB sends), a minio put_object of the same file to the same server with the
   project's part size (settings.S3_PART_SIZE), the API download (GET the file endpoint, follow its 302 to the
   presigned URL, stream the body) and a minio get_object of an object of the same size. The order of API and
   raw alternates between rounds; the ratios are medians of the per-round ratios. CPU seconds per GiB of the
   web workers, the S3 server and this process are recorded per step, to show where a gap comes from.

3. Push (`push_ratio`): a four-shard checkpoint of `--push-mb` MiB in all (valid safetensors shards of random
   bytes, their index and a config.json) pushed `--push-repetitions` times with the project's client, `python -m
   llmreg push DIR --model M` (a new version each time: upload with each file hashed on the way, seal) as a
   subprocess, timed whole, against the raw minio client putting the same four shards one after another (what an
   engineer with a plain S3 client would do) and, for reference, all four at once from four threads. push_ratio is the
   median per-round ratio of the client's MB/s to the sequential raw MB/s; push_ratio_vs_parallel_raw uses the
   parallel one. Each push leaves a sealed version of `--push-mb` MiB behind (sealed versions are immutable).

Uploads into one draft version under one path replace the previous file, which the service then deletes from
storage; the raw objects are deleted after each round, and the last upload is replaced by a small one at the end
so that a run leaves no gigabytes behind.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import requests
import urllib3

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.stack import (  # noqa: E402
    ROOT,
    Api,
    api_token,
    base_url,
    emit,
    library_versions,
    log,
    machine_description,
    median,
    raw_minio_client,
    unique_name,
)

MIB = 1024 * 1024
SEND_BLOCK = MIB
RSS_SAMPLE_SECONDS = 0.05


# --- what is sent ------------------------------------------------------------------------------------------------


def random_blocks(total: int):
    """os.urandom blocks adding up to `total` bytes, made as they are sent."""
    remaining = total
    while remaining:
        size = min(SEND_BLOCK, remaining)
        yield os.urandom(size)
        remaining -= size


def file_blocks(path: Path):
    """The file in SEND_BLOCK pieces, read into one reused buffer."""
    buffer = bytearray(SEND_BLOCK)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as handle:
        while True:
            count = handle.readinto(buffer)
            if not count:
                return
            yield view[:count]


def write_random_file(path: Path, size: int) -> str:
    digest = hashlib.sha256()
    with open(path, "wb") as handle:
        for block in random_blocks(size):
            digest.update(block)
            handle.write(block)
    return digest.hexdigest()


# --- the API path ------------------------------------------------------------------------------------------------


def api_put(url: str, token: str, path: str, blocks, size: int) -> dict:
    """PUT with Content-Length, body sent block by block: what a careful client streaming a file does."""
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=3600)
    try:
        connection.putrequest("PUT", path)
        connection.putheader("Authorization", f"Token {token}")
        connection.putheader("Content-Type", "application/octet-stream")
        connection.putheader("Content-Length", str(size))
        connection.endheaders()
        try:
            for block in blocks:
                connection.send(block)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered early (an error); its response says why
        response = connection.getresponse()
        body = response.read()
    finally:
        connection.close()
    if response.status != 201:
        raise RuntimeError(f"PUT {path} -> {response.status}: {body[:500]!r}")
    return json.loads(body)


def stream_count(response) -> int:
    received = 0
    for chunk in response.stream(MIB):
        received += len(chunk)
    response.release_conn()
    return received


def api_get(api: Api, pool, model: str, number: int, path: str) -> int:
    """GET the file endpoint, follow its redirect to the presigned URL, stream the body; return the bytes read."""
    answer = api.session.get(f"{api.url}/api/v1/models/{model}/versions/{number}/files/{path}",
                             allow_redirects=False)
    if answer.status_code != 302:
        raise RuntimeError(f"GET file -> {answer.status_code}: {answer.text[:300]}")
    return stream_count(pool.request("GET", answer.headers["Location"], preload_content=False))


# --- web process memory ------------------------------------------------------------------------------------------


class WebMemorySampler:
    """Samples the RSS of every gunicorn worker (children of the master's pid) every 50 ms."""

    def __init__(self, master_pid: int):
        import psutil

        master = psutil.Process(master_pid)
        self.workers = master.children() or [master]
        self.baseline = {worker.pid: worker.memory_info().rss for worker in self.workers}
        self.peak_sum = sum(self.baseline.values())
        self.peak = dict(self.baseline)
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            total = 0
            for worker in self.workers:
                rss = worker.memory_info().rss
                self.peak[worker.pid] = max(self.peak[worker.pid], rss)
                total += rss
            self.peak_sum = max(self.peak_sum, total)
            self.samples += 1
            self._stop.wait(RSS_SAMPLE_SECONDS)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc_info):
        self._stop.set()
        self._thread.join()

    def result(self) -> dict:
        return {
            "peak_rss_growth_mb": round((self.peak_sum - sum(self.baseline.values())) / MIB, 1),
            "per_worker_rss_growth_mb": {
                str(pid): round((self.peak[pid] - self.baseline[pid]) / MIB, 1) for pid in self.baseline
            },
            "baseline_rss_mb": {str(pid): round(rss / MIB, 1) for pid, rss in self.baseline.items()},
            "rss_samples": self.samples,
        }


class CpuMeter:
    """CPU seconds (user + system) spent by the web workers, the S3 server and this process during a step.

    On a 2-core machine every extra CPU second in the upload path takes time from the S3 server, so this says where
    a throughput gap comes from.
    """

    def __init__(self, web_pid_file: Path, s3_pid_file: Path):
        import psutil

        master = psutil.Process(int(web_pid_file.read_text().strip()))
        self.groups = {"web": master.children() or [master], "client": [psutil.Process()]}
        if s3_pid_file.is_file():
            self.groups["s3"] = [psutil.Process(int(s3_pid_file.read_text().strip()))]

    def read(self) -> dict:
        def seconds(process):
            times = process.cpu_times()
            return times.user + times.system + times.children_user + times.children_system

        return {name: sum(seconds(process) for process in processes) for name, processes in self.groups.items()}

    @staticmethod
    def spent(before: dict, after: dict) -> dict:
        return {name: after[name] - before[name] for name in before}


class FreshWeb:
    """A private gunicorn (one gthread worker, the stack's settings) on a free port, for a memory measurement
    that does not depend on what the stack's long-lived workers have served before (their heaps keep their
    high-water mark, so growth over their baseline under-reports a request's working set)."""

    def __init__(self):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = None

    def __enter__(self):
        self.process = subprocess.Popen(
            [str(ROOT / ".venv" / "bin" / "gunicorn"), "config.wsgi:application", "--bind", f"127.0.0.1:{self.port}",
             "--worker-class", "gthread", "--workers", "1", "--threads", "8", "--timeout", "3600"],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if requests.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                    return self
            except requests.ConnectionError:
                pass
            time.sleep(0.5)
        self.__exit__()
        raise RuntimeError("the private gunicorn did not become healthy within 60 s")

    def __exit__(self, *exc_info):
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=60)


# --- the push figure -----------------------------------------------------------------------------------------------


def write_random_safetensors(path: Path, name: str, size: int) -> None:
    """A valid safetensors file holding one uint8 tensor of `size` random bytes, written block by block."""
    header = json.dumps({name: {"dtype": "U8", "shape": [size], "data_offsets": [0, size]}}).encode()
    header += b" " * (-len(header) % 8)  # the data starts 8-byte aligned, as the format recommends
    with open(path, "wb") as handle:
        handle.write(len(header).to_bytes(8, "little"))
        handle.write(header)
        for block in random_blocks(size):
            handle.write(block)


def write_push_checkpoint(directory: Path, total: int, shards: int = 4) -> list[Path]:
    """config.json, `shards` model-0000i-of-0000n.safetensors and their index; returns the shard paths."""
    directory.mkdir(parents=True, exist_ok=True)
    per_shard = total // shards
    paths, weight_map = [], {}
    for number in range(1, shards + 1):
        file_name = f"model-{number:05d}-of-{shards:05d}.safetensors"
        tensor = f"model.blob_{number}"
        write_random_safetensors(directory / file_name, tensor, per_shard)
        weight_map[tensor] = file_name
        paths.append(directory / file_name)
    (directory / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {"total_size": per_shard * shards}, "weight_map": weight_map}))
    (directory / "config.json").write_text(json.dumps({"model_type": "llama", "architectures": ["LlamaForCausalLM"],
                                                       "note": "bench/upload.py push figure: random bytes"}))
    return paths


def client_push(directory: Path, model: str, token: str) -> float:
    """Seconds of one `python -m llmreg push` of the directory (a new sealed version)."""
    env = {**os.environ, "LLMREG_URL": base_url(), "LLMREG_TOKEN": token}
    started = time.perf_counter()
    completed = subprocess.run([sys.executable, "-m", "llmreg", "push", str(directory), "--model", model,
                                "--description", "bench/upload.py push figure"],
                               env=env, capture_output=True, text=True, cwd=ROOT)
    seconds = time.perf_counter() - started
    if completed.returncode != 0:
        raise RuntimeError(f"llmreg push exited {completed.returncode}: {completed.stderr[-1500:]}")
    return seconds


def raw_put_files(client, bucket: str, prefix: str, paths: list[Path], part_size: int, *, parallel: bool) -> tuple:
    """Seconds to put every file with the raw minio client, sequentially or one thread per file; the keys."""
    from concurrent.futures import ThreadPoolExecutor

    def put(path: Path):
        key = f"{prefix}/{path.name}"
        with open(path, "rb") as handle:
            written = client.put_object(bucket, key, handle, length=path.stat().st_size, part_size=part_size)
        return key, written.version_id or ""

    started = time.perf_counter()
    if parallel:
        with ThreadPoolExecutor(max_workers=len(paths)) as pool:
            keys = list(pool.map(put, paths))
    else:
        keys = [put(path) for path in paths]
    return time.perf_counter() - started, keys


def push_figure(args, token: str, client, bucket: str, part_size: int, scratch: Path) -> dict:
    """push_ratio and what it is made of (see the module docstring, step 3)."""
    total = args.push_mb * MIB
    directory = scratch / "push-model"
    log(f"push: writing a four-shard checkpoint of {args.push_mb} MiB")
    paths = write_push_checkpoint(directory, total)
    pushed_bytes = sum(path.stat().st_size for path in directory.iterdir())
    model = unique_name("bench-push")
    rounds = []
    for repetition in range(args.push_repetitions):
        prefix = f"bench/{model}/raw-{repetition}"
        timings, keys = {}, []

        def client_step():
            timings["client"] = client_push(directory, model, token)

        def raw_step():
            seconds, written = raw_put_files(client, bucket, prefix + "-seq", paths, part_size, parallel=False)
            timings["raw"] = seconds
            keys.extend(written)

        def raw_parallel_step():
            seconds, written = raw_put_files(client, bucket, prefix + "-par", paths, part_size, parallel=True)
            timings["raw_parallel"] = seconds
            keys.extend(written)

        order = [client_step, raw_step, raw_parallel_step]
        for step in (order if repetition % 2 == 0 else list(reversed(order))):
            step()
        for key, version_id in keys:
            client.remove_object(bucket, key, version_id=version_id or None)
        rate = {"client": pushed_bytes / MIB / timings["client"], "raw": total / MIB / timings["raw"],
                "raw_parallel": total / MIB / timings["raw_parallel"]}
        rounds.append(rate)
        log(f"push round {repetition + 1}/{args.push_repetitions}: MiB/s " + ", ".join(
            f"{name} {value:.0f}" for name, value in sorted(rate.items())))
    return {
        "push_ratio": round(median([r["client"] / r["raw"] for r in rounds]), 3),
        "push_ratio_vs_parallel_raw": round(median([r["client"] / r["raw_parallel"] for r in rounds]), 3),
        "push_mb_per_s": round(median([r["client"] for r in rounds]), 1),
        "push_raw_mb_per_s": round(median([r["raw"] for r in rounds]), 1),
        "push_raw_parallel_mb_per_s": round(median([r["raw_parallel"] for r in rounds]), 1),
        "push_mb": args.push_mb,
        "push_shards": len(paths),
        "push_repetitions": args.push_repetitions,
        "push_model": model,
        "push_note": ("llmreg push (process start, upload with each file hashed as it streams, seal) timed whole; "
                      "raw: minio put_object of the four shards, one after another (push_ratio) or from four threads"),
    }


# --- the benchmark -------------------------------------------------------------------------------------------------


def check_disk(directory: Path, needed: int) -> None:
    free = shutil.disk_usage(directory).free
    if free < needed:
        sys.exit(f"Not enough free disk under {directory}: {free / MIB:,.0f} MiB free, this run needs about "
                 f"{needed / MIB:,.0f} MiB (local file + storage). Lower --file-mb / --ratio-mb.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--file-mb", type=int, default=2048, help="size of the upload whose memory is watched")
    parser.add_argument("--ratio-mb", type=int, default=512, help="size of the file the throughputs are timed on")
    parser.add_argument("--repetitions", type=int, default=5)
    parser.add_argument("--push-mb", type=int, default=512, help="size of the four-shard model pushed (0: skip)")
    parser.add_argument("--push-repetitions", type=int, default=3)
    parser.add_argument("--web", choices=["stack", "fresh"], default="stack",
                        help="measure memory on the stack's workers (.var/run/web.pid) or on a fresh private gunicorn")
    args = parser.parse_args()

    token = api_token()
    from django.conf import settings

    api = Api(token)
    pool = urllib3.PoolManager()
    client = raw_minio_client()
    cpu = CpuMeter(ROOT / ".var" / "run" / "web.pid", ROOT / ".var" / "s3" / "weed.pid")
    bucket = settings.S3_BUCKET
    file_size, ratio_size = args.file_mb * MIB, args.ratio_mb * MIB
    scratch = Path(tempfile.mkdtemp(prefix="bench-upload-"))
    # Storage reclaims deleted volumes lazily, so count every byte written plus the local file and a margin.
    check_disk(scratch, ratio_size + file_size + 2 * args.repetitions * ratio_size + args.push_mb * MIB + 1024 * MIB)
    check_disk(ROOT / ".var", file_size + 2 * args.repetitions * ratio_size + 1024 * MIB)

    model = unique_name("bench-upload")
    api.create_model(model, "upload/download throughput benchmark (bench/upload.py)")
    number = api.create_version(model, "benchmark uploads; never sealed")
    file_path = "model.safetensors"
    put_path = f"/api/v1/models/{model}/versions/{number}/files/{file_path}"
    raw_objects: list[tuple[str, str]] = []
    result: dict = {}
    try:
        log(f"memory: uploading {args.file_mb} MiB of os.urandom blocks to {model} while sampling the RSS of "
            f"the {args.web} web workers")
        with contextlib.ExitStack() as stack:
            if args.web == "fresh":
                web = stack.enter_context(FreshWeb())
                master_pid, memory_url = web.process.pid, web.url
            else:
                master_pid, memory_url = int((ROOT / ".var" / "run" / "web.pid").read_text().strip()), api.url
            with WebMemorySampler(master_pid) as sampler:
                started = time.perf_counter()
                stored = api_put(memory_url, token, put_path, random_blocks(file_size), file_size)
                seconds = time.perf_counter() - started
        if stored["size"] != file_size:
            raise RuntimeError(f"stored {stored['size']} bytes of {file_size}")
        memory = sampler.result()
        log(f"memory: {seconds:.1f} s ({args.file_mb / seconds:.0f} MiB/s), "
            f"peak RSS growth {memory['peak_rss_growth_mb']} MiB {memory['per_worker_rss_growth_mb']}")
        result.update(memory)
        result["memory_measured_on"] = ("a fresh private gunicorn worker" if args.web == "fresh" else
                                        "the stack's gunicorn workers (growth over their current RSS)")
        result["large_upload_mb_per_s"] = round(args.file_mb / seconds, 1)

        local = scratch / "ratio.bin"
        log(f"throughput: writing a {args.ratio_mb} MiB random file")
        local_sha256 = write_random_file(local, ratio_size)
        rounds = []
        cpu_rounds: list[tuple[str, dict]] = []
        for repetition in range(args.repetitions):
            raw_key = f"bench/{model}/raw-{repetition}"
            timings = {}

            def api_upload():
                started = time.perf_counter()
                stored = api_put(api.url, token, put_path, file_blocks(local), ratio_size)
                timings["api_upload"] = time.perf_counter() - started
                if stored["sha256"] != local_sha256:
                    raise RuntimeError("the API stored a different SHA-256 than the file's")

            def raw_upload():
                started = time.perf_counter()
                with open(local, "rb") as handle:
                    written = client.put_object(bucket, raw_key, handle, length=ratio_size,
                                                part_size=settings.S3_PART_SIZE)
                timings["raw_upload"] = time.perf_counter() - started
                raw_objects.append((raw_key, written.version_id or ""))

            def api_download():
                started = time.perf_counter()
                received = api_get(api, pool, model, number, file_path)
                timings["api_download"] = time.perf_counter() - started
                if received != ratio_size:
                    raise RuntimeError(f"API download gave {received} bytes of {ratio_size}")

            def raw_download():
                started = time.perf_counter()
                received = stream_count(client.get_object(bucket, raw_key))
                timings["raw_download"] = time.perf_counter() - started
                if received != ratio_size:
                    raise RuntimeError(f"raw download gave {received} bytes of {ratio_size}")

            # Alternate which side goes first, so neither always gets the warmer cache or the quieter moment.
            order = ([api_upload, raw_upload, api_download, raw_download] if repetition % 2 == 0
                     else [raw_upload, api_upload, raw_download, api_download])
            for step in order:
                before = cpu.read()
                step()
                cpu_rounds.append((step.__name__, CpuMeter.spent(before, cpu.read())))
            for key, version_id in raw_objects:
                client.remove_object(bucket, key, version_id=version_id or None)
            raw_objects.clear()
            rate = {name: args.ratio_mb / value for name, value in timings.items()}
            rounds.append(rate)
            log(f"round {repetition + 1}/{args.repetitions}: MiB/s " + ", ".join(
                f"{name} {value:.0f}" for name, value in sorted(rate.items())))

        result.update({
            "upload_ratio": round(median([r["api_upload"] / r["raw_upload"] for r in rounds]), 3),
            "download_ratio": round(median([r["api_download"] / r["raw_download"] for r in rounds]), 3),
            "file_mb": args.file_mb,
            "ratio_file_mb": args.ratio_mb,
            "ratio_note": (f"ratios are medians over {args.repetitions} interleaved rounds of a {args.ratio_mb} MiB "
                           f"file; peak_rss_growth_mb is from one {args.file_mb} MiB upload"),
            "repetitions": args.repetitions,
            **{f"{name}_mb_per_s": round(median([r[name] for r in rounds]), 1)
               for name in ("api_upload", "raw_upload", "api_download", "raw_download")},
            "cpu_seconds_per_gib": {
                step: {group: round(median([spent[group] for name, spent in cpu_rounds if name == step])
                                    * 1024 / args.ratio_mb, 2)
                       for group in cpu.groups}
                for step in ("api_upload", "raw_upload", "api_download", "raw_download")
            },
            **(push_figure(args, token, client, bucket, settings.S3_PART_SIZE, scratch) if args.push_mb else {}),
            "part_size_mb": settings.S3_PART_SIZE / MIB,
            "upload_client": "http.client, Content-Length, 1 MiB sends",
            "storage": "SeaweedFS S3 (scripts/s3server.py)",
            "base_url": base_url(),
            "model": model,
            "machine": machine_description(),
            "versions": library_versions("minio", "Django", "gunicorn", "urllib3"),
        })
    finally:
        for key, version_id in raw_objects:
            client.remove_object(bucket, key, version_id=version_id or None)
        # Replacing the file makes the service delete the large object it held.
        api.put_file(model, number, file_path, b"replaced after the benchmark")
        shutil.rmtree(scratch, ignore_errors=True)
    emit(result)


if __name__ == "__main__":
    main()
