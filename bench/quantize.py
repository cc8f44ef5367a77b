"""A whole quantize job through the API against the bare quantize + save of the same model: NF4 against a
bitsandbytes load + save, GPTQ against our own pipeline's GPTQ called in this process.

    .venv/bin/python bench/quantize.py [--methods nf4,gptq] [--repetitions 5] [--hidden 1024] [--layers 12] ...

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

GPTQ (`--methods nf4,gptq`, both by default; gptq_* keys): the same design on a smaller tiny Llama (GPTQ on a CPU
rounds every weight column in turn, so the NF4 model would take minutes per run on a 2-core machine) and a
calibration dataset of synthetic, PII-free finance sentences registered through the API (purpose calibration).

- job: POST /api/v1/models/{m}/versions/1/quantize {"method": "gptq", "bits": 4, "group_size": 128,
  "calibration_dataset": id, "calibration_samples": n, "max_length": l}; gptq_job_s as for NF4.
- bare: workers.pipelines.calibrated.run.quantize_calibrated_version called directly in this process on the
  same model directory, with the same texts and the same settings (the job's CalibratedQuantizeSpec), writing
  its compressed-tensors pack-quantized checkpoint to a scratch directory: no API, no download, no upload, no
  registration. Why not a library: none installs beside our pins (GPTQModel 7.7 needs torch>=2.14.1,
  llm-compressor 0.14 pins transformers<=5.17), so the pipeline's own GPTQ is the quantize+save call the job
  wraps, and gptq_job_over_bare is the job's overhead over it.
- raw transfer as for NF4 (source files fetched, the packed output put); the calibration file the job also
  reads (a few KB) is left out. gptq_job_over_bare_plus_transfer = job_s / (bare_s + raw_transfer_s).
"""
from __future__ import annotations

import argparse
import io
import json
import random
import shutil
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.stack import (  # noqa: E402
    Api,
    ApiError,
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


def build_and_register(api: Api, scratch: Path, label: str, shape: dict) -> tuple[Path, str, int, int]:
    """A random-weight tiny Llama of `shape` in scratch/label, registered and sealed: (dir, model, version, params)."""
    from safetensors import safe_open

    from workers.pipelines.tiny_model import build_tiny_llama

    source = scratch / label
    log(f"{label}: building a tiny Llama: hidden {shape['hidden']}, intermediate {shape['intermediate']}, "
        f"{shape['layers']} layers, vocab {shape['vocab']}")
    build_tiny_llama(source, hidden_size=shape["hidden"], intermediate_size=shape["intermediate"],
                     num_layers=shape["layers"], num_heads=shape["heads"], vocab_size=shape["vocab"])
    with safe_open(str(source / "model.safetensors"), framework="pt") as weights:
        params = sum(_product(weights.get_slice(name).get_shape()) for name in weights.keys())
    model = unique_name(f"bench-{label}")
    api.create_model(model, f"{label} job benchmark (bench/quantize.py)")
    number = api.register_directory(model, source, f"random-weight tiny Llama for the {label} benchmark")
    log(f"registered {model} v{number}: {params / 1e6:.1f} M parameters")
    return source, model, number, params


def alternate(repetitions: int, job, bare) -> list[dict]:
    """`repetitions` rounds of job and bare run, alternating which goes first so neither always gets the quieter
    moment; bare returns (bare_s, raw_transfer_s)."""
    rounds = []
    for repetition in range(repetitions):
        if repetition % 2 == 0:
            job_figures = job()
            bare_s, transfer_s = bare()
        else:
            bare_s, transfer_s = bare()
            job_figures = job()
        rounds.append({**job_figures, "bare_s": bare_s, "raw_transfer_s": transfer_s})
        log(f"round {repetition + 1}/{repetitions}: job {job_figures['job_s']:.2f} s (pipeline "
            f"{job_figures['pipeline_s']:.2f} s, queued {job_figures['queued_s']:.2f} s), bare {bare_s:.2f} s, "
            f"raw transfer {transfer_s:.2f} s")
    return rounds


def rounded(rounds: list[dict]) -> list[dict]:
    return [{key: round(value, 3) if isinstance(value, float) else value for key, value in r.items()
             if not isinstance(value, dict)} for r in rounds]


def nf4_part(api: Api, args, scratch: Path) -> dict:
    shape = {"hidden": args.hidden, "intermediate": args.intermediate, "layers": args.layers, "heads": args.heads,
             "vocab": args.vocab}
    source, model, number, params = build_and_register(api, scratch, "quantize", shape)
    log("nf4 warm-up: one job and one bare run, not timed")
    warm_job = run_job(api, model, number)
    warm_bare, _ = run_bare(source, scratch)
    log(f"nf4 warm-up: job {warm_job['job_s']:.1f} s, bare {warm_bare:.1f} s")

    def transfer(quantized_dir: Path) -> float:
        return raw_transfer(api, model, number, quantized_dir, scratch)

    rounds = alternate(args.repetitions, lambda: run_job(api, model, number),
                       lambda: run_bare(source, scratch, transfer))
    return {
        "job_over_bare": round(median([r["job_s"] / r["bare_s"] for r in rounds]), 3),
        "job_s": round(median([r["job_s"] for r in rounds]), 3),
        "bare_s": round(median([r["bare_s"] for r in rounds]), 3),
        "params": params,
        "pipeline_s": round(median([r["pipeline_s"] for r in rounds]), 3),
        "job_over_bare_plus_transfer": round(
            median([r["job_s"] / (r["bare_s"] + r["raw_transfer_s"]) for r in rounds]), 3),
        "raw_transfer_s": round(median([r["raw_transfer_s"] for r in rounds]), 3),
        "pipeline_over_bare": round(median([r["pipeline_s"] / r["bare_s"] for r in rounds]), 3),
        "transfer_and_bookkeeping_s": round(median([r["job_s"] - r["pipeline_s"] for r in rounds]), 3),
        "queued_s": round(median([r["queued_s"] for r in rounds]), 3),
        "warmup": {"job_s": round(warm_job["job_s"], 3), "bare_s": round(warm_bare, 3)},
        "rounds": rounded(rounds),
        "repetitions": args.repetitions,
        "method": "nf4",
        "model_shape": shape,
        "size_before_mb": round(rounds[0]["size_before_bytes"] / 2**20, 1),
        "size_after_mb": round(rounds[0]["size_after_bytes"] / 2**20, 1),
        "model": model,
        "device": rounds[0]["device"],
    }


# --- GPTQ -----------------------------------------------------------------------------------------------------


def calibration_texts(count: int, seed: int = 0) -> list[str]:
    """Synthetic finance sentences with no personal data (no names, numbers only as small percentages)."""
    rng = random.Random(seed)
    subjects = ["The retail mortgage book", "The small business loan portfolio", "The credit card segment",
                "The corporate lending desk", "The treasury liquidity buffer", "The consumer auto loan pool",
                "The trade finance unit", "The commercial real estate exposure"]
    events = ["saw default rates rise", "reported lower arrears", "met its capital target",
              "breached an internal risk limit", "improved its loss given default estimate",
              "moved to a stricter underwriting policy", "passed the quarterly stress test",
              "needed a higher provision for expected credit losses"]
    reasons = ["as interest rates climbed", "after the regulator updated its guidance",
               "because unemployment eased in most regions", "while funding costs stayed high",
               "once the model validation team recalibrated the scorecard", "as collateral values recovered"]
    tails = ["The committee asked for a monthly review of the trend.",
             "Model risk management will revalidate the probability of default model.",
             "The audit trail records every change to the approved thresholds.",
             "Analysts expect the ratio to settle within the appetite range.",
             "The board will see the figures in the next risk report."]
    texts = []
    for _ in range(count):
        sentences = [f"{rng.choice(subjects)} {rng.choice(events)} by {rng.randint(1, 9)}.{rng.randint(0, 9)} "
                     f"percent {rng.choice(reasons)}. {rng.choice(tails)}" for _ in range(6)]
        texts.append(" ".join(sentences))
    return texts


def register_calibration_dataset(api: Api, name: str, texts: list[str]) -> int:
    body = "".join(json.dumps({"text": text}) + "\n" for text in texts).encode()
    response = api.session.post(f"{api.url}/api/v1/datasets/", data={"name": name, "purpose": "calibration"},
                                files={"file": ("calibration.jsonl", io.BytesIO(body), "application/jsonl")})
    if response.status_code != 201:
        raise ApiError(f"dataset upload -> {response.status_code}: {response.text[:300]}")
    dataset = response.json()
    deadline = time.monotonic() + 120
    while dataset["pii"]["status"] == "scanning" and time.monotonic() < deadline:
        time.sleep(1)
        dataset = api.get(f"/api/v1/datasets/{dataset['id']}/")
    if dataset["pii"]["status"] != "clean":
        raise ApiError(f"calibration dataset {dataset['id']} is not clean: {dataset['pii']}")
    return dataset["id"]


def gptq_settings(args) -> dict:
    return {"method": "gptq", "bits": args.gptq_bits, "group_size": args.gptq_group_size,
            "calibration_samples": args.calibration_samples, "max_length": args.calibration_length}


def run_gptq_job(api: Api, model: str, number: int, settings: dict) -> dict:
    started = time.perf_counter()
    job_id = api.post(f"/api/v1/models/{model}/versions/{number}/quantize", settings, expected=202)["job"]
    job = api.wait_for_job(job_id, timeout=900)
    observed = time.perf_counter() - started
    result = job["result"]
    quantization = api.get(f"/api/v1/models/{result['model']}/versions/{result['version']}/")["quantization"]
    queued = (datetime.fromisoformat(job["started_at"]) - datetime.fromisoformat(job["created_at"])).total_seconds()
    return {"job_s": job_seconds(job), "job_observed_s": observed, "pipeline_s": quantization["wall_seconds"],
            "queued_s": queued, "calibration": quantization["calibration"], "format": quantization["format"],
            "size_before_bytes": quantization["size_before_bytes"],
            "size_after_bytes": quantization["size_after_bytes"], "device": quantization.get("device")}


def run_gptq_bare(source: Path, scratch: Path, settings: dict, texts: list[str], transfer=None) -> tuple[float, float]:
    """The pipeline's own GPTQ, called in this process with the job's settings and texts (see the docstring)."""
    from workers.pipelines.calibrated.run import quantize_calibrated_version
    from workers.pipelines.calibrated.spec import CalibratedQuantizeSpec

    spec = CalibratedQuantizeSpec(**{key: value for key, value in settings.items() if key != "calibration_dataset"})
    out = Path(tempfile.mkdtemp(dir=scratch, prefix="gptq-bare-")) / "output"
    started = time.perf_counter()
    quantize_calibrated_version(source, out, spec, texts)
    seconds = time.perf_counter() - started
    transfer_seconds = transfer(out) if transfer else 0.0
    shutil.rmtree(out.parent, ignore_errors=True)
    return seconds, transfer_seconds


def gptq_part(api: Api, args, scratch: Path) -> dict:
    shape = {"hidden": args.gptq_hidden, "intermediate": args.gptq_intermediate, "layers": args.gptq_layers,
             "heads": args.gptq_heads, "vocab": args.gptq_vocab}
    source, model, number, params = build_and_register(api, scratch, "gptq", shape)
    texts = calibration_texts(max(args.calibration_samples, 8))
    dataset = register_calibration_dataset(api, f"{model}-calibration", texts)
    settings = {**gptq_settings(args), "calibration_dataset": dataset}
    log(f"gptq: calibration dataset {dataset} ({len(texts)} records); warm-up, not timed")
    warm_job = run_gptq_job(api, model, number, settings)
    warm_bare, _ = run_gptq_bare(source, scratch, settings, texts)
    log(f"gptq warm-up: job {warm_job['job_s']:.1f} s, bare {warm_bare:.1f} s")

    def transfer(quantized_dir: Path) -> float:
        return raw_transfer(api, model, number, quantized_dir, scratch)

    rounds = alternate(args.gptq_repetitions, lambda: run_gptq_job(api, model, number, settings),
                       lambda: run_gptq_bare(source, scratch, settings, texts, transfer))
    return {
        "gptq_job_over_bare": round(median([r["job_s"] / r["bare_s"] for r in rounds]), 3),
        "gptq_job_over_bare_plus_transfer": round(
            median([r["job_s"] / (r["bare_s"] + r["raw_transfer_s"]) for r in rounds]), 3),
        "gptq_job_s": round(median([r["job_s"] for r in rounds]), 3),
        "gptq_bare_s": round(median([r["bare_s"] for r in rounds]), 3),
        "gptq_calibration_samples": rounds[0]["calibration"]["samples"],
        "gptq_tokens": rounds[0]["calibration"]["tokens"],
        "gptq_pipeline_s": round(median([r["pipeline_s"] for r in rounds]), 3),
        "gptq_raw_transfer_s": round(median([r["raw_transfer_s"] for r in rounds]), 3),
        "gptq_queued_s": round(median([r["queued_s"] for r in rounds]), 3),
        "gptq_warmup": {"job_s": round(warm_job["job_s"], 3), "bare_s": round(warm_bare, 3)},
        "gptq_rounds": rounded(rounds),
        "gptq_repetitions": args.gptq_repetitions,
        "gptq_settings": gptq_settings(args),
        "gptq_format": rounds[0]["format"],
        "gptq_params": params,
        "gptq_model_shape": shape,
        "gptq_size_before_mb": round(rounds[0]["size_before_bytes"] / 2**20, 1),
        "gptq_size_after_mb": round(rounds[0]["size_after_bytes"] / 2**20, 1),
        "gptq_model": model,
        "gptq_device": rounds[0]["device"],
    }


def add_gptq_arguments(parser) -> None:
    # About 6 M parameters: GPTQ rounds column by column, ~10 s a run on a busy 2-core CPU at this size (the NF4
    # model would take minutes); widths are multiples of the group size, so the output is packed
    # (compressed-tensors), the default format.
    parser.add_argument("--gptq-repetitions", type=int, default=3)
    parser.add_argument("--gptq-hidden", type=int, default=256)
    parser.add_argument("--gptq-intermediate", type=int, default=768)
    parser.add_argument("--gptq-layers", type=int, default=2)
    parser.add_argument("--gptq-heads", type=int, default=4)
    parser.add_argument("--gptq-vocab", type=int, default=8192)
    parser.add_argument("--gptq-bits", type=int, default=4)
    parser.add_argument("--gptq-group-size", type=int, default=128)
    parser.add_argument("--calibration-samples", type=int, default=16)
    parser.add_argument("--calibration-length", type=int, default=128, help="max_length, tokens per sample")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", default="nf4,gptq", help="comma-separated: nf4, gptq (default both)")
    # About 185 M parameters (740 MB of float32): a few seconds of quantizing on a 2-core CPU, long enough that
    # scheduling noise on a shared machine does not decide the ratio.
    parser.add_argument("--repetitions", type=int, default=5)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--intermediate", type=int, default=2816)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--vocab", type=int, default=16384)
    add_gptq_arguments(parser)
    args = parser.parse_args()
    methods = [method.strip() for method in args.methods.split(",") if method.strip()]
    unknown = set(methods) - {"nf4", "gptq"}
    if unknown or not methods:
        sys.exit(f"--methods takes nf4 and/or gptq, not {args.methods!r}")

    api = Api(api_token())
    import torch
    import transformers

    transformers.utils.logging.disable_progress_bar()

    scratch = Path(tempfile.mkdtemp(prefix="bench-quantize-"))
    try:
        result = {}
        if "nf4" in methods:
            result.update(nf4_part(api, args, scratch))
        if "gptq" in methods:
            result.update(gptq_part(api, args, scratch))
        emit({
            **result,
            "methods": methods,
            "bench_device": "cuda" if torch.cuda.is_available() else "cpu",
            "torch_threads": torch.get_num_threads(),
            "machine": machine_description(),
            "versions": library_versions("torch", "transformers", "bitsandbytes", "compressed-tensors"),
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
