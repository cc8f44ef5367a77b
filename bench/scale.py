"""A real-size model through the running stack: push, seal, NF4, analysis, QLoRA, with the worker's memory.

    .venv/bin/python bench/scale.py [--shape 3b|small] [--analysis-tokens 4096] [--lora-steps 20]

Builds a Llama with random bf16 weights (no download), shard by shard so that this process never holds more
than one shard: `--shape 3b` is the Llama-3.2-3B shape (hidden 3072, 28 layers, intermediate 8192, 24 heads,
8 KV heads, vocab 128256; 3.6 B parameters with untied embeddings, ~7.2 GB in four shards), `--shape small` a
~150 M-parameter model of the same family to prove the script on a busy machine. The tokenizer is the project's
tiny BPE (workers.pipelines.tiny_model.build_tokenizer, 4,096 entries): the model's 128k-row embedding and
output head are what cost, not which ids the text maps to.

Stages, each timed and watched (the RSS of every Celery worker process, children of .var/run/worker.pid,
sampled every 100 ms; the stage's peak is the largest single process, the one that ran the job):

1. push: `llmreg push DIR --model M` (the project's client: every file with its SHA-256, then seal) as a
   subprocess, timed by this process's clock; the seal is part of it.
2. quantize: POST .../versions/1/quantize {"method": "nf4"}, timed by the job's server timestamps.
3. analysis: NF4 (v2) against the original (v1) on `--analysis-tokens` tokens of an evaluation dataset.
4. lora: `--lora-steps` QLoRA steps (r 8, q/k/v/o, batch 4 x 128 tokens) on the NF4 base.

When the worker reports its own peak (`peak_rss_bytes` in the job's result or the version's metadata), it is
recorded beside the sampled one. `worker_rss_after_mb` is the workers' RSS 5 s after the last job: what the
worker keeps (with worker_max_memory_per_child the pool replaces a child that grew past it).

Target (../shared/BENCHMARKS.md): for the 3B shape, peak_worker_rss_mb < 16,000 and total_s < 1,800 on 2 cores.
The run leaves its model (three versions) in the registry: sealed versions are immutable.
"""
from __future__ import annotations

import argparse
import io
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.stack import (  # noqa: E402
    ROOT,
    Api,
    ApiError,
    api_token,
    base_url,
    emit,
    job_seconds,
    library_versions,
    log,
    machine_description,
    unique_name,
)

MIB = 1024 * 1024
SAMPLE_SECONDS = 0.1
SHAPES = {
    # Llama-3.2-3B (its config.json), untied embeddings as most fine-tuned checkpoints ship.
    "3b": {"hidden_size": 3072, "num_hidden_layers": 28, "intermediate_size": 8192, "num_attention_heads": 24,
           "num_key_value_heads": 8, "vocab_size": 128256, "shards": 4},
    # The same family at ~150 M parameters: a few minutes on a shared 2-core machine.
    "small": {"hidden_size": 1024, "num_hidden_layers": 8, "intermediate_size": 2816, "num_attention_heads": 16,
              "num_key_value_heads": 4, "vocab_size": 32000, "shards": 4},
}
TOKENIZER_SIZE = 4096
INIT_STD = 0.02  # Llama's initializer_range: random weights with realistic magnitudes (finite activations)


# --- the model, shard by shard -------------------------------------------------------------------------------------


def llama_config(shape: dict):
    from transformers import LlamaConfig

    from workers.pipelines.tiny_model import BOS_TOKEN, EOS_TOKEN, PAD_TOKEN, SPECIAL_TOKENS

    ids = {token: SPECIAL_TOKENS.index(token) for token in (BOS_TOKEN, EOS_TOKEN, PAD_TOKEN)}
    return LlamaConfig(
        hidden_size=shape["hidden_size"], num_hidden_layers=shape["num_hidden_layers"],
        intermediate_size=shape["intermediate_size"], num_attention_heads=shape["num_attention_heads"],
        num_key_value_heads=shape["num_key_value_heads"], vocab_size=shape["vocab_size"],
        max_position_embeddings=4096, rope_theta=500000.0, tie_word_embeddings=False, dtype="bfloat16",
        bos_token_id=ids[BOS_TOKEN], eos_token_id=ids[EOS_TOKEN], pad_token_id=ids[PAD_TOKEN],
    )


def build_sharded_model(directory: Path, shape: dict, seed: int = 0) -> dict:
    """config.json, model-0000i-of-0000n.safetensors + index, tokenizer; returns parameter count and bytes."""
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM

    from workers.pipelines.tiny_model import build_tokenizer

    directory.mkdir(parents=True, exist_ok=True)
    config = llama_config(shape)
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(config)
    names_shapes = [(name, tuple(tensor.shape)) for name, tensor in skeleton.state_dict().items()]
    total_elements = sum(math.prod(shape_) for _, shape_ in names_shapes)
    per_shard = math.ceil(total_elements / shape["shards"])
    groups, current, current_elements = [], [], 0
    for name, tensor_shape in names_shapes:
        current.append((name, tensor_shape))
        current_elements += math.prod(tensor_shape)
        if current_elements >= per_shard and len(groups) < shape["shards"] - 1:
            groups.append(current)
            current, current_elements = [], 0
    if current:
        groups.append(current)
    count = len(groups)
    generator = torch.Generator().manual_seed(seed)
    weight_map, total_bytes = {}, 0
    for number, group in enumerate(groups, start=1):
        file_name = f"model-{number:05d}-of-{count:05d}.safetensors"
        tensors = {}
        for name, tensor_shape in group:
            if name.endswith("norm.weight"):
                tensors[name] = torch.ones(tensor_shape, dtype=torch.bfloat16)
            else:
                values = torch.empty(tensor_shape, dtype=torch.bfloat16)
                values.normal_(0.0, INIT_STD, generator=generator)
                tensors[name] = values
            total_bytes += tensors[name].numel() * 2
            weight_map[name] = file_name
        save_file(tensors, str(directory / file_name), metadata={"format": "pt"})
        del tensors
        log(f"  wrote {file_name} ({(directory / file_name).stat().st_size / MIB:,.0f} MiB)")
    (directory / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {"total_size": total_bytes}, "weight_map": weight_map}, indent=2))
    config.save_pretrained(str(directory))
    build_tokenizer(TOKENIZER_SIZE).save_pretrained(str(directory))
    return {"params": total_elements, "weight_bytes": total_bytes, "shards": count}


# --- the worker's memory ---------------------------------------------------------------------------------------------


class WorkerMemory:
    """Samples the RSS of the Celery worker and its pool children every 100 ms during a stage."""

    def __init__(self, pid_file: Path):
        import psutil

        self.master = psutil.Process(int(pid_file.read_text().strip()))
        self.peak_single = 0
        self.peak_sum = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def processes(self):
        import psutil

        try:
            return [self.master, *self.master.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def current(self) -> tuple[int, int]:
        import psutil

        sizes = []
        for process in self.processes():
            try:
                sizes.append(process.memory_info().rss)
            except psutil.NoSuchProcess:  # a child replaced by the pool (max memory per child) between calls
                continue
        return (max(sizes) if sizes else 0), sum(sizes)

    def _run(self) -> None:
        while not self._stop.is_set():
            single, total = self.current()
            self.peak_single = max(self.peak_single, single)
            self.peak_sum = max(self.peak_sum, total)
            self._stop.wait(SAMPLE_SECONDS)

    def __enter__(self):
        self.peak_single, self.peak_sum = self.current()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc_info):
        self._stop.set()
        self._thread.join()


# --- the stages -------------------------------------------------------------------------------------------------------


def push(directory: Path, model: str, token: str) -> tuple[int, float]:
    env = {**os.environ, "LLMREG_URL": base_url(), "LLMREG_TOKEN": token}
    started = time.perf_counter()
    completed = subprocess.run(
        [sys.executable, "-m", "llmreg", "push", str(directory), "--model", model,
         "--description", "bench/scale.py: random bf16 weights"],
        env=env, capture_output=True, text=True, cwd=ROOT,
    )
    seconds = time.perf_counter() - started
    if completed.returncode != 0:
        raise ApiError(f"llmreg push exited {completed.returncode}: {completed.stderr[-2000:]}")
    return int(completed.stdout.split()[-1]), seconds


def upload_dataset(api: Api, name: str, purpose: str, records: list[dict]) -> int:
    body = "".join(json.dumps(record) + "\n" for record in records).encode()
    response = api.session.post(f"{api.url}/api/v1/datasets/", data={"name": name, "purpose": purpose},
                                files={"file": (f"{purpose}.jsonl", io.BytesIO(body), "application/jsonl")})
    if response.status_code != 201:
        raise ApiError(f"dataset upload -> {response.status_code}: {response.text[:300]}")
    dataset = response.json()
    deadline = time.monotonic() + 300
    while (dataset.get("pii") or {}).get("status") == "scanning" and time.monotonic() < deadline:
        time.sleep(1)
        dataset = api.get(f"/api/v1/datasets/{dataset['id']}")
    return dataset["id"]


def evaluation_records(tokens: int) -> list[dict]:
    """Enough of the project's sample sentences for `tokens` tokens (each is ~15 tokens) and some to spare."""
    from workers.pipelines.tiny_model import SAMPLE_TEXTS

    copies = tokens // (15 * len(SAMPLE_TEXTS)) + 2
    return [{"text": text} for text in SAMPLE_TEXTS * copies]


def training_records() -> list[dict]:
    from workers.pipelines.tiny_model import SAMPLE_TEXTS

    return [{"text": text} for text in SAMPLE_TEXTS]


def reported_peak(*documents) -> int | None:
    """The worker's own peak_rss_bytes, wherever the job recorded it (its result, the version's metadata, the
    analysis' result); None while the worker does not report it."""
    for document in documents:
        stack = [document]
        while stack:
            item = stack.pop()
            if isinstance(item, dict):
                if isinstance(item.get("peak_rss_bytes"), int):
                    return item["peak_rss_bytes"]
                stack.extend(value for value in item.values() if isinstance(value, dict))
    return None


def run_job_stage(api: Api, path: str, body: dict, timeout: float) -> tuple[dict, list[dict]]:
    """Start a job, wait for it; return it and what it produced (the version, or the analysis)."""
    job_id = api.post(path, body, expected=202)["job"]
    job = api.wait_for_job(job_id, poll_seconds=2, timeout=timeout)
    result = job.get("result") or {}
    produced = []
    if "version" in result and "model" in result:
        produced.append(api.get(f"/api/v1/models/{result['model']}/versions/{result['version']}/"))
    if "analysis" in result:
        produced.append(api.get(f"/api/v1/analyses/{result['analysis']}"))
    return job, produced


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="3b")
    parser.add_argument("--analysis-tokens", type=int, default=4096)
    parser.add_argument("--lora-steps", type=int, default=20)
    parser.add_argument("--job-timeout", type=float, default=3600, help="seconds each job may take")
    parser.add_argument("--keep", action="store_true", help="keep the local model directory")
    args = parser.parse_args()

    shape = SHAPES[args.shape]
    token = api_token()
    api = Api(token)
    worker_pid = ROOT / ".var" / "run" / "worker.pid"
    deadline = time.monotonic() + 30  # a worker started with --detach writes its pid file a moment after `make up`
    while not worker_pid.is_file() and time.monotonic() < deadline:
        time.sleep(0.5)
    if not worker_pid.is_file():
        sys.exit("No worker pid file at .var/run/worker.pid: start the stack first (make up).")
    memory = WorkerMemory(worker_pid)
    scratch = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    stages: dict[str, dict] = {}
    started = time.perf_counter()
    try:
        directory = scratch / "model"
        log(f"building a {args.shape} Llama with random bf16 weights in {shape['shards']} shards")
        built_at = time.perf_counter()
        built = build_sharded_model(directory, shape)
        build_s = time.perf_counter() - built_at
        log(f"built {built['params']:,} parameters ({built['weight_bytes'] / 1e9:.2f} GB) in {build_s:.0f} s")
        started = time.perf_counter()  # the stages, not the local build

        model = unique_name(f"bench-scale-{args.shape}")
        log(f"push: llmreg push {directory} --model {model}")
        with memory:
            number, seconds = push(directory, model, token)
        stages["push"] = {"s": round(seconds, 1), "peak_rss_mb": round(memory.peak_single / MIB),
                          "mb_per_s": round(built["weight_bytes"] / MIB / seconds, 1), "version": number}
        log(f"push: v{number} sealed in {seconds:.0f} s")

        evaluation = upload_dataset(api, f"{model}-eval", "evaluation", evaluation_records(args.analysis_tokens))
        training = upload_dataset(api, f"{model}-train", "training", training_records())

        lora_body = {"dataset": training, "steps": args.lora_steps, "r": 8, "batch_size": 4, "max_length": 128,
                     "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]}
        plan = [
            ("quantize", "quantize", {"method": "nf4"}),
            ("analysis", "analyses", {"dataset": evaluation, "max_tokens": args.analysis_tokens}),
            ("lora", "lora-updates", lora_body),
        ]
        quantized = None
        for name, endpoint, body in plan:
            target = number if name == "quantize" else quantized  # analysis and LoRA work on the NF4 version
            path = f"/api/v1/models/{model}/versions/{target}/{endpoint}"
            log(f"{name}: POST {path} {body}")
            with memory:
                job, produced = run_job_stage(api, path, body, args.job_timeout)
            if name == "quantize":
                quantized = job["result"]["version"]
            stage = {"s": round(job_seconds(job), 1), "peak_rss_mb": round(memory.peak_single / MIB),
                     "job": job["id"]}
            for document in produced:
                lora = document.get("lora") if isinstance(document, dict) else None
                if lora:
                    stage["tokens_per_step"] = lora.get("train_tokens_per_step")
                    stage["steps_per_s"] = lora.get("steps_per_second")
            reported = reported_peak(job.get("result") or {}, *produced)
            if reported:
                stage["reported_peak_rss_mb"] = round(reported / MIB)
            stages[name] = stage
            log(f"{name}: {stage}")
        total_s = time.perf_counter() - started
        time.sleep(5)
        after_single, after_sum = memory.current()
        emit({
            "total_s": round(total_s, 1),
            "peak_worker_rss_mb": max(max(stage["peak_rss_mb"], stage.get("reported_peak_rss_mb", 0))
                                      for name, stage in stages.items() if name != "push"),
            "stages": stages,
            "params": built["params"],
            "shape": {"name": args.shape, **shape},
            "weight_bytes": built["weight_bytes"],
            "dtype": "bfloat16",
            "analysis_tokens": args.analysis_tokens,
            "lora_steps": args.lora_steps,
            "build_s": round(build_s, 1),
            "worker_rss_after_mb": round(after_single / MIB),
            "worker_processes_rss_after_mb": round(after_sum / MIB),
            "memory_note": ("peak_rss_mb: largest single worker process (the one running the job), sampled every "
                            "100 ms; reported_peak_rss_mb: the job's own peak_rss_bytes; peak_worker_rss_mb: the "
                            "largest of both over the job stages (push runs in the web)"),
            "model": model,
            "base_url": base_url(),
            "machine": machine_description(),
            "versions": library_versions("torch", "transformers", "bitsandbytes", "peft"),
        })
    finally:
        if args.keep:
            log(f"kept {scratch}")
        else:
            shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
