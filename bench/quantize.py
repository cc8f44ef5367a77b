"""A whole NF4 quantize job through the API against a bare bitsandbytes load + save of the same model.

    .venv/bin/python bench/quantize.py [--repetitions 5] [--hidden 1024] [--layers 12] ...

Builds a tiny Llama (workers.pipelines.tiny_model, random weights; quantization time does not depend on their
values), registers and seals it through the API, then alternates, `--repetitions` times each:

- job: POST /api/v1/models/{m}/versions/1/quantize {"method": "nf4"} and poll GET /api/v1/jobs/{id} until it
  succeeded. job_s is the job's created_at -> finished_at (server clock; polls are sparse so that they take no
  CPU from the job), so it holds queueing, downloading the version, quantizing, uploading and registering the
  result.
- bare: in this process, AutoModelForCausalLM.from_pretrained(dir, quantization_config=BitsAndBytesConfig(...))
  with the job's settings (nf4, float32 compute, no double quantization, lm_head kept) on the same device,
  then save_pretrained to a scratch directory.
- raw transfer (after each bare run, not part of bare_s): fetch the source version's files to disk through the
  API's presigned URLs and put the quantized output (weights + tokenizer) with a plain minio client, the
  transfers the job makes, without the job; job_over_bare_plus_transfer = job_s / (bare_s + raw_transfer_s).

A first job and a first bare run are not timed: they pay one-off imports and kernel set-up. job_over_bare is the
median of the per-round ratios. The quantized version's own `wall_seconds` (the pipeline alone) gives the
transfer and bookkeeping share: job_s - pipeline_s. Each run leaves its model, with 1 + 1 + repetitions versions
(about 2 GB with the defaults), in the registry: sealed versions are immutable.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.stack import (  # noqa: E402
    Api,
    api_token,
    emit,
    job_seconds,
    library_versions,
    log,
    machine_description,
    median,
    raw_minio_client,
    unique_name,
)


def run_job(api: Api, model: str, number: int) -> dict:
    started = time.perf_counter()
    job_id = api.post(f"/api/v1/models/{model}/versions/{number}/quantize", {"method": "nf4"}, expected=202)["job"]
    job = api.wait_for_job(job_id)
    observed = time.perf_counter() - started
    result = job["result"]
    quantized = api.get(f"/api/v1/models/{result['model']}/versions/{result['version']}/")
    queued = (datetime.fromisoformat(job["started_at"]) - datetime.fromisoformat(job["created_at"])).total_seconds()
    return {
        "job_s": job_seconds(job),
        "job_observed_s": observed,
        "pipeline_s": quantized["quantization"]["wall_seconds"],
        "queued_s": queued,
        "size_after_bytes": quantized["quantization"]["size_after_bytes"],
        "size_before_bytes": quantized["quantization"]["size_before_bytes"],
        "device": quantized["quantization"].get("device"),
    }


def raw_transfer(api: Api, model: str, number: int, quantized_dir: Path, scratch: Path) -> float:
    """What the job's transfers cost without the job: fetch the source version's files to disk (API redirect to
    the presigned URL) and put the quantized files with a plain minio client and the project's part size."""
    import requests
    from django.conf import settings

    client = raw_minio_client()
    target = Path(tempfile.mkdtemp(dir=scratch, prefix="fetched-"))
    files = api.get(f"/api/v1/models/{model}/versions/{number}/")["files"]
    written = []
    started = time.perf_counter()
    for file in files:
        redirect = api.session.get(f"{api.url}/api/v1/models/{model}/versions/{number}/files/{file['path']}",
                                   allow_redirects=False)
        with requests.get(redirect.headers["Location"], stream=True) as response, \
                open(target / file["path"], "wb") as handle:
            for chunk in response.iter_content(1 << 20):
                handle.write(chunk)
    for path in sorted(quantized_dir.iterdir()):
        key = f"bench/{model}/transfer/{path.name}"
        with open(path, "rb") as handle:
            result = client.put_object(settings.S3_BUCKET, key, handle, length=path.stat().st_size,
                                       part_size=settings.S3_PART_SIZE)
        written.append((key, result.version_id))
    seconds = time.perf_counter() - started
    for key, version_id in written:
        client.remove_object(settings.S3_BUCKET, key, version_id=version_id)
    shutil.rmtree(target, ignore_errors=True)
    return seconds


def run_bare(source: Path, scratch: Path, transfer=None) -> tuple[float, float]:
    import torch
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    device = "cuda" if torch.cuda.is_available() else "cpu"
    out = Path(tempfile.mkdtemp(dir=scratch, prefix="bare-"))
    started = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(
        str(source),
        quantization_config=BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=False,
            bnb_4bit_compute_dtype=torch.float32, llm_int8_skip_modules=["lm_head"],
        ),
        device_map={"": device},
    )
    model.save_pretrained(str(out), safe_serialization=True)
    seconds = time.perf_counter() - started
    del model
    # The tokenizer files travel with the job's output too.
    for path in source.iterdir():
        if path.name.startswith("tokenizer") or path.name == "special_tokens_map.json":
            shutil.copy2(path, out / path.name)
    transfer_seconds = transfer(out) if transfer else 0.0
    shutil.rmtree(out, ignore_errors=True)
    return seconds, transfer_seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    # About 185 M parameters (740 MB of float32): a few seconds of quantizing on a 2-core CPU, long enough that
    # scheduling noise on a shared machine does not decide the ratio.
    parser.add_argument("--repetitions", type=int, default=5)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--intermediate", type=int, default=2816)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--vocab", type=int, default=16384)
    args = parser.parse_args()

    api = Api(api_token())
    import torch
    import transformers
    from safetensors import safe_open

    from workers.pipelines.tiny_model import build_tiny_llama

    transformers.utils.logging.disable_progress_bar()

    scratch = Path(tempfile.mkdtemp(prefix="bench-quantize-"))
    try:
        source = scratch / "source"
        log(f"building a tiny Llama: hidden {args.hidden}, intermediate {args.intermediate}, {args.layers} layers, "
            f"vocab {args.vocab}")
        build_tiny_llama(source, hidden_size=args.hidden, intermediate_size=args.intermediate,
                         num_layers=args.layers, num_heads=args.heads, vocab_size=args.vocab)
        with safe_open(str(source / "model.safetensors"), framework="pt") as weights:
            params = sum(_product(weights.get_slice(name).get_shape()) for name in weights.keys())
        model = unique_name("bench-quantize")
        api.create_model(model, "quantize job benchmark (bench/quantize.py)")
        number = api.register_directory(model, source, "random-weight tiny Llama for the quantize benchmark")
        log(f"registered {model} v{number}: {params / 1e6:.1f} M parameters")

        log("warm-up: one job and one bare run, not timed")
        warm_job = run_job(api, model, number)
        warm_bare, _ = run_bare(source, scratch)
        log(f"warm-up: job {warm_job['job_s']:.1f} s, bare {warm_bare:.1f} s")

        def transfer(quantized_dir: Path) -> float:
            return raw_transfer(api, model, number, quantized_dir, scratch)

        rounds = []
        for repetition in range(args.repetitions):
            # Alternate which goes first, so neither always gets the quieter moment.
            if repetition % 2 == 0:
                job = run_job(api, model, number)
                bare, transfer_s = run_bare(source, scratch, transfer)
            else:
                bare, transfer_s = run_bare(source, scratch, transfer)
                job = run_job(api, model, number)
            rounds.append({**job, "bare_s": bare, "raw_transfer_s": transfer_s})
            log(f"round {repetition + 1}/{args.repetitions}: job {job['job_s']:.2f} s (pipeline "
                f"{job['pipeline_s']:.2f} s, queued {job['queued_s']:.2f} s), bare {bare:.2f} s, "
                f"raw transfer {transfer_s:.2f} s")

        job_s = median([r["job_s"] for r in rounds])
        bare_s = median([r["bare_s"] for r in rounds])
        pipeline_s = median([r["pipeline_s"] for r in rounds])
        emit({
            "job_over_bare": round(median([r["job_s"] / r["bare_s"] for r in rounds]), 3),
            "job_s": round(job_s, 3),
            "bare_s": round(bare_s, 3),
            "params": params,
            "pipeline_s": round(pipeline_s, 3),
            "job_over_bare_plus_transfer": round(
                median([r["job_s"] / (r["bare_s"] + r["raw_transfer_s"]) for r in rounds]), 3),
            "raw_transfer_s": round(median([r["raw_transfer_s"] for r in rounds]), 3),
            "pipeline_over_bare": round(median([r["pipeline_s"] / r["bare_s"] for r in rounds]), 3),
            "transfer_and_bookkeeping_s": round(median([r["job_s"] - r["pipeline_s"] for r in rounds]), 3),
            "queued_s": round(median([r["queued_s"] for r in rounds]), 3),
            "warmup": {"job_s": round(warm_job["job_s"], 3), "bare_s": round(warm_bare, 3)},
            "rounds": [{key: round(value, 3) if isinstance(value, float) else value for key, value in r.items()}
                       for r in rounds],
            "repetitions": args.repetitions,
            "method": "nf4",
            "model_shape": {"hidden": args.hidden, "intermediate": args.intermediate, "layers": args.layers,
                            "heads": args.heads, "vocab": args.vocab},
            "size_before_mb": round(rounds[0]["size_before_bytes"] / 2**20, 1),
            "size_after_mb": round(rounds[0]["size_after_bytes"] / 2**20, 1),
            "model": model,
            "device": rounds[0]["device"],
            "bench_device": "cuda" if torch.cuda.is_available() else "cpu",
            "torch_threads": torch.get_num_threads(),
            "machine": machine_description(),
            "versions": library_versions("torch", "transformers", "bitsandbytes"),
        })
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _product(shape) -> int:
    total = 1
    for size in shape:
        total *= size
    return total


if __name__ == "__main__":
    main()
