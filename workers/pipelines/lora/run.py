"""The LoRA pipelines: train an adapter on a base version, or merge one into a full-precision base."""

from __future__ import annotations

import time
from dataclasses import asdict, replace
from pathlib import Path

import torch

from workers.pipelines.errors import PipelineInputError
from workers.pipelines.loading import (
    MAX_SHARD_SIZE,
    device_description,
    floating_dtype,
    library_versions,
    load_causal_lm,
    load_dtype,
    pick_device,
    read_model_config,
    resident_bytes,
)
from workers.pipelines.lora.adapters import (
    attach_adapter,
    check_target_modules,
    default_target_modules,
    quantization_of,
    save_adapter,
    write_via_staging,
)
from workers.pipelines.lora.records import (
    check_records,
    encode_records,
    encoding_warnings,
    records_sha256,
    split_records,
    usable,
)
from workers.pipelines.lora.training import MAX_GRAD_NORM, ProgressCallback, resolve_steps, run_training
from workers.pipelines.memory import PeakMemory, check_fits, release_memory, training_working_bytes
from workers.pipelines.specs import LoraSpec, validate_lora_spec


def _no_report(percent: int, message: str) -> None:
    """Default progress callback: report nothing."""


def train_lora(
    base_dir: Path,
    records: list[dict],
    out_dir: Path,
    spec: LoraSpec,
    *,
    report: ProgressCallback = _no_report,
    base_reference: str | None = None,
    available_bytes: int | None = None,
) -> dict:
    """Train a LoRA adapter on base_dir with records; write adapter + tokenizer to out_dir; return the run's metadata.

    `base_reference` (e.g. "credit-model/3") becomes adapter_config.json's base_model_name_or_path; without it the
    field is left empty rather than naming a scratch path. out_dir must be absent or empty, and holds the complete
    result or nothing whatever fails (NaN loss, cancellation, a crash). The base loads in its own dtype, after a
    check that it and the training's working set fit the device (`available_bytes` replaces the measurement).
    """
    started = time.perf_counter()
    validate_lora_spec(spec)
    check_records(records)
    base_dir, out_dir = Path(base_dir), Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        # The caller owns a fresh scratch directory per job; never mix a new result with an old one.
        raise FileExistsError(f"{out_dir} is not empty")
    train_records, eval_records = split_records(records, spec.eval_fraction)

    report(0, "Loading the base model")
    if (base_dir / "adapter_config.json").is_file() and not (base_dir / "config.json").is_file():
        raise PipelineInputError(
            f"{base_dir} holds a LoRA adapter, not a model; train the update on the version the adapter was "
            "adapted from (its adapted_from parent)."
        )
    config = read_model_config(base_dir)
    quantization = quantization_of(config)
    device = pick_device()
    dtype = load_dtype(base_dir, config)
    working = training_working_bytes(config, batch_size=spec.batch_size, max_length=spec.max_length, dtype=dtype,
                                     gradient_checkpointing=spec.gradient_checkpointing)
    memory = check_fits(needed_bytes=resident_bytes(base_dir) + working, what="Training a LoRA update on this base",
                        device=device, available_bytes=available_bytes)
    try:
        with PeakMemory(device) as peak:
            metadata = _train(base_dir, records, out_dir, spec, train_records, eval_records, quantization, device,
                              report, base_reference, started)
    finally:
        release_memory(device)  # the base and its adapter went with _train's frame
    return {**metadata, "memory": memory, **peak.figures()}


def _train(base_dir: Path, records, out_dir: Path, spec: LoraSpec, train_records, eval_records, quantization,
           device: str, report: ProgressCallback, base_reference: str | None, started: float) -> dict:
    model, tokenizer = load_causal_lm(base_dir, device=device)

    warnings: list[str] = []
    max_length = spec.max_length
    context = getattr(model.config, "max_position_embeddings", None)
    if context and max_length > context:
        warnings.append(f"max_length {max_length} exceeds the model's context of {context} tokens; using {context}")
        max_length = context
    target_modules = tuple(spec.target_modules) if spec.target_modules else default_target_modules(model)
    check_target_modules(model, target_modules)

    report(3, "Tokenizing the dataset")
    train_encoded = encode_records(train_records, tokenizer, max_length=max_length)
    eval_encoded = encode_records(eval_records, tokenizer, max_length=max_length)
    warnings += encoding_warnings(train_encoded + eval_encoded, max_length=max_length)
    train_examples, eval_examples = usable(train_encoded), usable(eval_encoded)
    if not train_examples:
        raise PipelineInputError(
            f"None of the {len(train_records)} training records has a token to learn within max_length "
            f"{max_length}; raise max_length or shorten the prompts."
        )
    if eval_records and not eval_examples:
        raise PipelineInputError(
            f"None of the {len(eval_records)} held-out evaluation records has a completion within max_length "
            f"{max_length}; raise max_length or shorten the prompts."
        )
    steps = resolve_steps(spec, len(train_examples))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)

    cuda_devices = [torch.device(device).index or 0] if device.startswith("cuda") else []
    # fork_rng: seeding for reproducibility must not disturb the random state of the worker process around us.
    with torch.random.fork_rng(devices=cuda_devices):
        torch.manual_seed(spec.seed)
        peft_model = attach_adapter(
            model, spec, target_modules, quantized=quantization is not None, base_reference=base_reference
        )
        trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
        run = run_training(
            peft_model,
            spec,
            steps=steps,
            train_examples=train_examples,
            eval_examples=eval_examples,
            pad_id=pad_id,
            device=device,
            report=report,
        )

    report(96, "Saving the adapter")
    files = save_adapter(peft_model, tokenizer, out_dir)
    wall_seconds = time.perf_counter() - started
    report(100, "Done")
    return {
        "settings": {
            **asdict(replace(spec, target_modules=list(target_modules))),
            "steps": steps,
            "max_length": max_length,
            "optimizer": "AdamW",
            "weight_decay": 0.0,
            "lr_schedule": "constant",
            "max_grad_norm": MAX_GRAD_NORM,
            "qlora": quantization is not None,
        },
        "base_quantization": quantization,
        "trainable_parameters": trainable,
        "curve": run["curve"],
        "eval_loss_before": run["eval_loss_before"],
        "eval_loss_after": run["eval_loss_after"],
        "data_sha256": records_sha256(records),
        "train_records": len(train_examples),
        "eval_records": len(eval_examples),
        "train_tokens_per_step": run["tokens_per_step"],
        "wall_seconds": round(wall_seconds, 3),
        "training_seconds": round(run["training_seconds"], 3),
        "eval_seconds": round(run["eval_seconds"], 3),
        "steps_per_second": round(steps / run["training_seconds"], 3) if run["training_seconds"] > 0 else None,
        "library_versions": library_versions("peft"),
        "device": device_description(device),
        # The frozen base's dtype after training: bf16 stays bf16 (no float32 copy of the base, see attach_adapter).
        "base_dtype": floating_dtype(peft_model, frozen_only=True),
        "files": files,
        "warnings": warnings,
    }


def merge_lora(base_dir: Path, adapter_dir: Path, out_dir: Path) -> dict:
    """Fold an adapter into a full-precision base and write full safetensors weights + tokenizer to out_dir."""
    base_dir, adapter_dir, out_dir = Path(base_dir), Path(adapter_dir), Path(out_dir)
    quantization = quantization_of(read_model_config(base_dir))
    if quantization is not None:
        raise PipelineInputError(
            f"The base is quantized ({quantization['method']}); merging an adapter into quantized weights would "
            "round the update away. Keep serving the base with the adapter, or merge into the full-precision "
            "version the base was quantized from."
        )
    if out_dir.exists() and any(out_dir.iterdir()):
        raise FileExistsError(f"{out_dir} is not empty")
    # Merging is one small matrix product per adapted layer: fast enough on the CPU, and the GPU stays free.
    model, tokenizer = load_causal_lm(base_dir, adapter_dir=adapter_dir, device="cpu")
    try:
        merged = model.merge_and_unload(safe_merge=True)
    except ValueError as error:  # peft's safe_merge raises ValueError on NaN weights
        raise PipelineInputError(f"The adapter in {adapter_dir} cannot be merged: {error}") from error

    def write(staging: Path) -> None:
        merged.save_pretrained(str(staging), safe_serialization=True, max_shard_size=MAX_SHARD_SIZE)
        tokenizer.save_pretrained(str(staging))

    files = write_via_staging(out_dir, write)
    return {
        "files": files,
        "dtype": str(next(merged.parameters()).dtype).removeprefix("torch."),
        "library_versions": library_versions("peft"),
    }
