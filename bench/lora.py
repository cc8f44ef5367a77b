"""LoRA training steps/s of a lora-updates job through the API against a bare peft loop on the same model and data.

    .venv/bin/python bench/lora.py [--repetitions 5] [--steps 100] [--hidden 512] [--layers 8] ...

Builds a tiny Llama (workers.pipelines.tiny_model), registers and seals it through the API, uploads SAMPLE_TEXTS
as a training dataset (POST /api/v1/datasets/), then alternates, `--repetitions` times each:

- job: POST /api/v1/models/{m}/versions/1/lora-updates {dataset, steps, r, alpha, dropout, learning_rate, seed},
  poll GET /api/v1/jobs/{id} until it succeeded, and read the new version's `lora` metadata. job_steps_per_s is
  its `steps_per_second`: steps / training seconds, evaluation passes excluded. The wall-clock rate of the whole
  job (queueing, download, loading, evaluations, upload, registration; created_at -> finished_at by the server's
  clock) is reported as job_wall_steps_per_s. Polls are every 0.5 s, so they take next to no CPU from the job.
- bare: in this process, the same base loaded with from_pretrained, get_peft_model with the job's LoraConfig
  (r, alpha, dropout, the attention projections), AdamW over the adapter parameters, and the same steps over
  the same batches (the pipeline's own split, encoding and seeded batch order), each step:
  model(input_ids, attention_mask, labels).loss.backward(), clip_grad_norm_(1.0), step, zero_grad. Batches are
  collated before the clock starts, so the bare loop pays nothing for data.

The first job and bare run are warm-ups, not timed. steps_ratio is the median of the per-round ratios.
"""
from __future__ import annotations

import argparse
import io
import json
import shutil
import sys
import tempfile
import time
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
    unique_name,
)

TARGET_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj"]


def training_records() -> list[dict]:
    from workers.pipelines.tiny_model import SAMPLE_TEXTS

    return [{"text": text} for text in SAMPLE_TEXTS]


def upload_dataset(api: Api, name: str, records: list[dict]) -> int:
    body = "".join(json.dumps(record) + "\n" for record in records).encode()
    response = api.session.post(f"{api.url}/api/v1/datasets/", data={"name": name, "purpose": "training"},
                                files={"file": ("train.jsonl", io.BytesIO(body), "application/jsonl")})
    if response.status_code != 201:
        raise ApiError(f"dataset upload -> {response.status_code}: {response.text[:300]}")
    return response.json()["id"]


def run_job(api: Api, model: str, number: int, settings: dict) -> dict:
    job_id = api.post(f"/api/v1/models/{model}/versions/{number}/lora-updates", settings, expected=202)["job"]
    job = api.wait_for_job(job_id, timeout=900)
    seconds = job_seconds(job)
    result = job["result"]
    lora = api.get(f"/api/v1/models/{result['model']}/versions/{result['version']}/")["lora"]
    return {
        "job_steps_per_s": lora["steps_per_second"],
        "job_wall_s": seconds,
        "job_wall_steps_per_s": settings["steps"] / seconds,
        "training_s": lora["training_seconds"],
        "eval_s": lora["eval_seconds"],
        "pipeline_wall_s": lora["wall_seconds"],
        "trainable_parameters": lora["trainable_parameters"],
        "train_records": lora["train_records"],
        "tokens_per_step": lora["train_tokens_per_step"],
        "device": lora.get("device"),
    }


def bare_batches(base_dir: Path, spec) -> list[dict]:
    """The job's batches, step by step: the pipeline's split, encoding and seeded order, with labels as
    transformers expects them (unshifted, -100 on padding)."""
    import torch

    from workers.pipelines.loading import load_tokenizer
    from workers.pipelines.lora import IGNORE_INDEX, encode_records, split_records, usable
    from workers.pipelines.lora.training import _batch_order

    tokenizer = load_tokenizer(base_dir)
    train_records, _ = split_records(training_records(), spec.eval_fraction)
    examples = usable(encode_records(train_records, tokenizer, max_length=spec.max_length))
    order = _batch_order(len(examples), torch.Generator().manual_seed(spec.seed))
    pad_id = tokenizer.pad_token_id
    batches = []
    for _ in range(spec.steps):
        items = [examples[next(order)] for _ in range(spec.batch_size)]
        width = max(len(item.input_ids) for item in items)
        input_ids = torch.full((len(items), width), pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(items), width), dtype=torch.long)
        labels = torch.full((len(items), width), IGNORE_INDEX, dtype=torch.long)
        for row, item in enumerate(items):
            input_ids[row, : len(item.input_ids)] = torch.tensor(item.input_ids)
            attention_mask[row, : len(item.input_ids)] = 1
            labels[row, : len(item.labels)] = torch.tensor(item.labels)
        batches.append({"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels})
    return batches


def run_bare(base_dir: Path, spec, batches: list[dict]) -> float:
    """A plain peft training loop; returns steps per second."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(base_dir))
    torch.manual_seed(spec.seed)
    model = get_peft_model(model, LoraConfig(r=spec.r, lora_alpha=spec.alpha, lora_dropout=spec.dropout,
                                             target_modules=TARGET_MODULES, bias="none", task_type="CAUSAL_LM"))
    model.train()
    trainable = [parameter for parameter in model.parameters() if parameter.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=spec.learning_rate, weight_decay=0.0)
    started = time.perf_counter()
    for batch in batches:
        loss = model(**batch, use_cache=False).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    float(loss.detach())  # wait for the last step (a no-op on the CPU, a sync on a GPU)
    return len(batches) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repetitions", type=int, default=5)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--intermediate", type=int, default=1408)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--vocab", type=int, default=8192)
    args = parser.parse_args()

    api = Api(api_token())
    import torch
    import transformers

    from workers.pipelines.lora import LoraSpec
    from workers.pipelines.tiny_model import build_tiny_llama

    transformers.utils.logging.disable_progress_bar()
    spec = LoraSpec(steps=args.steps)
    settings = {"steps": spec.steps, "r": spec.r, "alpha": spec.alpha, "dropout": spec.dropout,
                "learning_rate": spec.learning_rate, "seed": spec.seed, "target_modules": TARGET_MODULES}
    scratch = Path(tempfile.mkdtemp(prefix="bench-lora-"))
    try:
        base_dir = scratch / "base"
        log(f"building a tiny Llama: hidden {args.hidden}, {args.layers} layers, vocab {args.vocab}")
        build_tiny_llama(base_dir, hidden_size=args.hidden, intermediate_size=args.intermediate,
                         num_layers=args.layers, num_heads=args.heads, vocab_size=args.vocab)
        model = unique_name("bench-lora")
        api.create_model(model, "LoRA job benchmark (bench/lora.py)")
        number = api.register_directory(model, base_dir, "random-weight tiny Llama for the LoRA benchmark")
        settings["dataset"] = upload_dataset(api, f"{model}-train", training_records())
        log(f"registered {model} v{number} and dataset {settings['dataset']}")
        batches = bare_batches(base_dir, spec)

        log("warm-up: one job and one bare run, not timed")
        warm_job = run_job(api, model, number, settings)
        warm_bare = run_bare(base_dir, spec, batches)
        log(f"warm-up: job {warm_job['job_steps_per_s']:.2f} steps/s, bare {warm_bare:.2f} steps/s")

        rounds = []
        for repetition in range(args.repetitions):
            if repetition % 2 == 0:
                job = run_job(api, model, number, settings)
                bare = run_bare(base_dir, spec, batches)
            else:
                bare = run_bare(base_dir, spec, batches)
                job = run_job(api, model, number, settings)
            rounds.append({**job, "bare_steps_per_s": bare})
            log(f"round {repetition + 1}/{args.repetitions}: job {job['job_steps_per_s']:.2f} steps/s "
                f"(wall {job['job_wall_steps_per_s']:.2f}, evaluation {job['eval_s']:.1f} s), bare {bare:.2f} steps/s")

        emit({
            "steps_ratio": round(median([r["job_steps_per_s"] / r["bare_steps_per_s"] for r in rounds]), 3),
            "job_steps_per_s": round(median([r["job_steps_per_s"] for r in rounds]), 3),
            "bare_steps_per_s": round(median([r["bare_steps_per_s"] for r in rounds]), 3),
            "job_wall_steps_per_s": round(median([r["job_wall_steps_per_s"] for r in rounds]), 3),
            "job_wall_s": round(median([r["job_wall_s"] for r in rounds]), 3),
            "job_eval_s": round(median([r["eval_s"] for r in rounds]), 3),
            "job_pipeline_wall_s": round(median([r["pipeline_wall_s"] for r in rounds]), 3),
            "measured": "api (POST lora-updates, steps_per_second from the registered version's lora metadata)",
            "steps": spec.steps,
            "batch_size": spec.batch_size,
            "lora": {"r": spec.r, "alpha": spec.alpha, "dropout": spec.dropout, "target_modules": TARGET_MODULES},
            "tokens_per_step": rounds[0]["tokens_per_step"],
            "trainable_parameters": rounds[0]["trainable_parameters"],
            "train_records": rounds[0]["train_records"],
            "base": "float32 (no quantization)",
            "model_shape": {"hidden": args.hidden, "intermediate": args.intermediate, "layers": args.layers,
                            "heads": args.heads, "vocab": args.vocab},
            "warmup": {"job_steps_per_s": warm_job["job_steps_per_s"], "bare_steps_per_s": round(warm_bare, 3)},
            "rounds": [{key: round(value, 3) if isinstance(value, float) else value for key, value in r.items()}
                       for r in rounds],
            "repetitions": args.repetitions,
            "model": model,
            "device": rounds[0]["device"],
            "torch_threads": torch.get_num_threads(),
            "machine": machine_description(),
            "versions": library_versions("torch", "transformers", "peft"),
        })
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
