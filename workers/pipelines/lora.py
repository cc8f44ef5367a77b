"""Incremental LoRA updates: train a small adapter on top of a (possibly 4-/8-bit quantized) base version.

"Quantize once, keep training": a version quantized with bitsandbytes stays frozen and each update only trains
low-rank adapter matrices (QLoRA when the base is quantized). The output directory holds the adapter
(`adapter_model.safetensors`, `adapter_config.json`) and the base's tokenizer; it is registered as a new
version whose parent is the base.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from workers.pipelines.errors import PipelineInputError
from workers.pipelines.loading import (
    linear_module_names,
    load_causal_lm,
    pick_device,
    read_model_config,
)
from workers.pipelines.quantize import device_description, library_versions

IGNORE_INDEX = -100  # the label value torch's cross_entropy skips: prompt tokens and padding

# Attention projections per architecture (config.json's model_type). All four rather than peft's q/v default:
# the LoRA paper's ablation (Hu et al. 2021, table 5) found more adapted weight types at a low rank better than
# fewer at a higher rank. Architectures not listed fall back to the Linear layers inside attention blocks.
ATTENTION_PROJECTIONS: dict[str, tuple[str, ...]] = {
    **dict.fromkeys(
        ("llama", "mistral", "mixtral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "granite", "olmo"),
        ("q_proj", "k_proj", "v_proj", "o_proj"),
    ),
    "phi3": ("qkv_proj", "o_proj"),
    "gpt2": ("c_attn", "attn.c_proj"),
    "gpt_neox": ("query_key_value", "attention.dense"),
    "opt": ("q_proj", "k_proj", "v_proj", "out_proj"),
}

# Evaluation passes over the held-out records during training (the last one is eval_loss_after). Few enough that
# evaluation stays a small share of the run time, enough to draw the evaluation curve.
EVALUATIONS_DURING_TRAINING = 5
# At most this many records are held out, whatever eval_fraction says: a few thousand tokens measure the loss
# well enough, and each evaluation pass over more would cost more than the training steps between passes.
MAX_EVAL_RECORDS = 256
# At most this many training-loss points in the curve, so a 100,000-step run still gives a small JSON result.
MAX_CURVE_POINTS = 100
# Report progress (and so give cancellation a chance) at least this often.
REPORT_INTERVAL_SECONDS = 1.0
# Gradient clipping as in the HF Trainer's default; it keeps one unlucky batch from wrecking a small adapter.
MAX_GRAD_NORM = 1.0

ProgressCallback = Callable[[int, str], None]


def _no_report(percent: int, message: str) -> None:
    """Default progress callback: report nothing."""


@dataclass(frozen=True)
class LoraSpec:
    """Settings of one LoRA update. `epochs`, when given, replaces `steps` (one step = one optimizer update)."""

    r: int = 8
    alpha: float = 16
    dropout: float = 0.05
    target_modules: tuple[str, ...] | None = None  # None: the attention projections of the architecture
    steps: int = 50
    epochs: int | None = None
    learning_rate: float = 2e-4
    batch_size: int = 4
    gradient_accumulation: int = 1
    max_length: int = 128
    seed: int = 0
    eval_fraction: float = 0.2
    gradient_checkpointing: bool = False  # trades ~30% speed for activation memory on long sequences


def validate_lora_spec(spec: LoraSpec) -> None:
    """Raise PipelineInputError naming every setting out of range; cheap, so usable when the request arrives."""
    problems: list[str] = []

    def check_integer(name: str, low: int, high: int) -> None:
        value = getattr(spec, name)
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            problems.append(f"{name} must be an integer from {low} to {high}, got {value!r}")

    def check_number(name: str, low: float, high: float, *, low_open: bool, high_open: bool) -> None:
        value = getattr(spec, name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            problems.append(f"{name} must be a number, got {value!r}")
            return
        above_low = value > low if low_open else value >= low
        below_high = value < high if high_open else value <= high
        if not (above_low and below_high):
            interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
            problems.append(f"{name} must be in {interval}, got {value!r}")

    check_integer("r", 1, 256)
    check_number("alpha", 0, 4096, low_open=True, high_open=False)
    check_number("dropout", 0, 1, low_open=False, high_open=True)
    check_integer("steps", 1, 100_000)
    if spec.epochs is not None:
        check_integer("epochs", 1, 1_000)
    check_number("learning_rate", 0, 1, low_open=True, high_open=False)
    check_integer("batch_size", 1, 1_024)
    check_integer("gradient_accumulation", 1, 1_024)
    check_integer("max_length", 2, 131_072)
    check_integer("seed", 0, 2**32 - 1)
    check_number("eval_fraction", 0, 0.5, low_open=False, high_open=False)
    if not isinstance(spec.gradient_checkpointing, bool):
        problems.append(f"gradient_checkpointing must be true or false, got {spec.gradient_checkpointing!r}")
    targets = spec.target_modules
    if targets is not None:
        if isinstance(targets, str) or not isinstance(targets, (list, tuple)) or not targets:
            problems.append(
                f"target_modules must be a non-empty list of layer names such as ['q_proj', 'v_proj'], "
                f"or left out for the architecture's attention projections; got {targets!r}"
            )
        elif not all(isinstance(name, str) and name.strip() for name in targets):
            problems.append(f"target_modules must hold non-empty layer names, got {list(targets)!r}")
    if problems:
        raise PipelineInputError("Invalid LoRA settings: " + "; ".join(problems) + ".")


# --- dataset ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EncodedRecord:
    """One tokenized record: `labels` is `input_ids` with IGNORE_INDEX where no loss is taken (the prompt)."""

    input_ids: list[int]
    labels: list[int]
    truncated: bool
    supervised_tokens: int  # tokens the loss covers; a label is predicted from the token before it, never the first


def canonical_record(record: dict) -> str:
    """The record as canonical JSON (sorted keys, no spaces): what data_sha256 and the split are computed from."""
    return json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def records_sha256(records: list[dict]) -> str:
    """SHA-256 of the records' canonical JSON lines, in order: names exactly the data a run trained on."""
    digest = hashlib.sha256()
    for record in records:
        digest.update(canonical_record(record).encode("utf-8"))
        digest.update(b"\n")
    return digest.hexdigest()


def check_records(records: list[dict]) -> None:
    """Raise PipelineInputError unless every record is {"text"} or {"prompt", "completion"} with usable strings."""
    if not records:
        raise PipelineInputError(
            'The dataset has no records; upload JSON Lines with one {"text": ...} or '
            '{"prompt": ..., "completion": ...} object per line.'
        )
    problems: list[str] = []
    for number, record in enumerate(records, start=1):
        problem = _record_problem(record)
        if problem:
            problems.append(f"record {number} {problem}")
    if problems:
        shown = "; ".join(problems[:5])
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        raise PipelineInputError(
            f"{len(problems)} of {len(records)} dataset records cannot be used for training: {shown}{more}. "
            'Each line must be {"text": "..."} or {"prompt": "...", "completion": "..."} with non-empty strings.'
        )


def _record_problem(record) -> str | None:
    """Why one record cannot be used, or None."""
    if not isinstance(record, dict):
        return f"is a {type(record).__name__}, not a JSON object"
    has_text = "text" in record
    has_pair = "prompt" in record or "completion" in record
    if has_text and has_pair:
        return "has both 'text' and 'prompt'/'completion'; use one form per record"
    if has_text:
        if not isinstance(record["text"], str) or not record["text"].strip():
            return "has an empty or non-string 'text'"
        return None
    if not has_pair:
        return f"has neither 'text' nor 'prompt'/'completion' (keys: {sorted(record)})"
    if not isinstance(record.get("prompt"), str):
        return "is missing 'prompt' (a string; it may be empty)"
    if not isinstance(record.get("completion"), str) or not record["completion"].strip():
        return "is missing 'completion' or it is empty"
    return None


def split_records(records: list[dict], eval_fraction: float) -> tuple[list[dict], list[dict]]:
    """Deterministic (train, eval) split by content hash: independent of record order and seed, stable as data grows.

    eval_fraction of the records (at least 1, at most MAX_EVAL_RECORDS) are held out.
    """
    if eval_fraction <= 0:
        return list(records), []
    eval_count = min(max(1, round(len(records) * eval_fraction)), MAX_EVAL_RECORDS)
    if len(records) - eval_count < 1:
        raise PipelineInputError(
            f"The dataset has {len(records)} record(s); holding out eval_fraction {eval_fraction:g} for "
            f"evaluation leaves none to train on. Upload at least {_minimum_records(eval_fraction)} records "
            "(dozens are sensible) or set eval_fraction to 0."
        )
    order = sorted(
        range(len(records)),
        key=lambda index: (hashlib.sha256(canonical_record(records[index]).encode("utf-8")).digest(), index),
    )
    held_out = set(order[:eval_count])
    train = [record for index, record in enumerate(records) if index not in held_out]
    evaluation = [record for index, record in enumerate(records) if index in held_out]
    return train, evaluation


def _minimum_records(eval_fraction: float) -> int:
    """Fewest records that leave at least one for training and one for evaluation."""
    count = 2
    while count - max(1, round(count * eval_fraction)) < 1:
        count += 1
    return count


def encode_record(record: dict, tokenizer, *, max_length: int) -> EncodedRecord:
    """Tokenize one record; for prompt/completion the loss covers the completion (and the closing EOS) only."""
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    if "text" in record:
        input_ids = tokenizer(record["text"], add_special_tokens=True)["input_ids"] + eos
        labels = list(input_ids)
    else:
        # Prompt and completion are tokenized separately so the prompt tokens are exactly those the model sees
        # at inference time, when it is given the prompt alone.
        prompt_ids = tokenizer(record["prompt"], add_special_tokens=True)["input_ids"]
        completion_ids = tokenizer(record["completion"], add_special_tokens=False)["input_ids"] + eos
        input_ids = prompt_ids + completion_ids
        labels = [IGNORE_INDEX] * len(prompt_ids) + completion_ids
    truncated = len(input_ids) > max_length
    labels = labels[:max_length]
    supervised = sum(1 for label in labels[1:] if label != IGNORE_INDEX)
    return EncodedRecord(input_ids[:max_length], labels, truncated, supervised)


def encode_records(records: list[dict], tokenizer, *, max_length: int) -> list[EncodedRecord]:
    """Tokenize records (see encode_record); records left with nothing to learn are kept, usable() drops them."""
    return [encode_record(record, tokenizer, max_length=max_length) for record in records]


def usable(encoded: list[EncodedRecord]) -> list[EncodedRecord]:
    """The records with at least one token to learn (a prompt can fill max_length and leave none)."""
    return [item for item in encoded if item.supervised_tokens > 0]


def encoding_warnings(encoded: list[EncodedRecord], *, max_length: int) -> list[str]:
    """Warnings about truncated and skipped records, for the version's metadata."""
    warnings = []
    truncated = sum(1 for item in encoded if item.truncated)
    if truncated:
        warnings.append(f"{truncated} sequences longer than max_length {max_length} were truncated")
    skipped = len(encoded) - len(usable(encoded))
    if skipped:
        warnings.append(
            f"{skipped} records were skipped because nothing of their completion fits within max_length "
            f"{max_length}; raise max_length or shorten their prompts"
        )
    return warnings


def _collate(batch: list[EncodedRecord], *, pad_id: int, device: str) -> dict[str, torch.Tensor]:
    """Right-padded tensors; `targets` are the labels shifted by one, so the loss needs no shifted logits copy."""
    width = max(len(item.input_ids) for item in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
    targets = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
    for row, item in enumerate(batch):
        length = len(item.input_ids)
        input_ids[row, :length] = torch.tensor(item.input_ids)
        attention_mask[row, :length] = 1
        targets[row, : length - 1] = torch.tensor(item.labels[1:])
    return {
        "input_ids": input_ids.to(device, non_blocking=True),
        "attention_mask": attention_mask.to(device, non_blocking=True),
        "targets": targets.to(device, non_blocking=True),
    }


# --- model -----------------------------------------------------------------------------------------------------


def default_target_modules(model) -> tuple[str, ...]:
    """The attention projections to adapt when the request names none."""
    model_type = getattr(model.config, "model_type", "")
    if model_type in ATTENTION_PROJECTIONS:
        return ATTENTION_PROJECTIONS[model_type]
    # Unknown architecture: every Linear inside a module whose name says attention, as "parent.leaf" so that a
    # leaf name the MLP shares (gpt2's c_proj) does not pull the MLP in too.
    names = set()
    for qualified in linear_module_names(model):
        parts = qualified.split(".")
        if len(parts) >= 2 and ("attn" in parts[-2].lower() or "attention" in parts[-2].lower()):
            names.add(".".join(parts[-2:]))
    if not names:
        raise PipelineInputError(
            f"No attention layers were recognised in this {model_type or 'unknown'} model; name the layers to "
            f"adapt in target_modules. Its Linear layers are: {', '.join(_linear_leaf_names(model))}."
        )
    return tuple(sorted(names))


def _linear_leaf_names(model) -> list[str]:
    """Distinct last components of the Linear layer names, e.g. q_proj, up_proj, lm_head."""
    return sorted({name.rsplit(".", 1)[-1] for name in linear_module_names(model)})


def check_target_modules(model, target_modules: tuple[str, ...]) -> None:
    """Raise PipelineInputError naming every target that matches no Linear layer (peft's suffix matching)."""
    linear_names = linear_module_names(model)
    unmatched = [
        target
        for target in target_modules
        if not any(name == target or name.endswith("." + target) for name in linear_names)
    ]
    if unmatched:
        raise PipelineInputError(
            f"target_modules {unmatched} match no Linear layer of this model; choose among its Linear layers: "
            f"{', '.join(_linear_leaf_names(model))}."
        )


def _quantization_of(config: dict) -> dict | None:
    """The base's bitsandbytes settings from config.json, or None for a full-precision base."""
    quantization = config.get("quantization_config")
    if not quantization:
        return None
    method = quantization.get("quant_method", "unknown")
    if quantization.get("load_in_4bit"):
        method = f"{method}-{quantization.get('bnb_4bit_quant_type', '4bit')}"
    elif quantization.get("load_in_8bit"):
        method = f"{method}-int8"
    return {"method": method, "config": quantization}


def _library_versions() -> dict[str, str]:
    """quantize's library versions plus peft, whose code defines the adapter."""
    import peft

    return {**library_versions(), "peft": peft.__version__}


def _summed_loss(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Sum of the token cross-entropies over the batch's supervised tokens (float32)."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits
    return torch.nn.functional.cross_entropy(
        logits.float().view(-1, logits.shape[-1]),
        batch["targets"].view(-1),
        ignore_index=IGNORE_INDEX,
        reduction="sum",
    )


def _training_step(model, optimizer, micro_batches: list[dict[str, torch.Tensor]], token_count: int) -> torch.Tensor:
    """One optimizer update over the micro-batches; returns the mean token loss (detached, not synchronised)."""
    total = None
    for batch in micro_batches:
        # Dividing each micro-batch by the step's total token count weights every token equally under accumulation.
        loss = _summed_loss(model, batch) / token_count
        loss.backward()
        total = loss.detach() if total is None else total + loss.detach()
    parameters = [parameter for group in optimizer.param_groups for parameter in group["params"]]
    torch.nn.utils.clip_grad_norm_(parameters, MAX_GRAD_NORM)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return total


@torch.no_grad()
def _evaluation_loss(model, examples: list[EncodedRecord], *, batch_size: int, pad_id: int, device: str) -> float:
    """Mean token loss over the held-out records, dropout off."""
    model.eval()
    total = torch.zeros((), device=device)
    tokens = 0
    for start in range(0, len(examples), batch_size):
        chunk = examples[start : start + batch_size]
        total += _summed_loss(model, _collate(chunk, pad_id=pad_id, device=device))
        tokens += sum(item.supervised_tokens for item in chunk)
    model.train()
    return total.item() / tokens


def _batch_order(count: int, generator: torch.Generator):
    """Endless record indices: a fresh seeded permutation per epoch, so the order depends on the seed only."""
    while True:
        yield from torch.randperm(count, generator=generator).tolist()


def _resolve_steps(spec: LoraSpec, train_count: int) -> int:
    """Optimizer steps of the run: `steps`, or enough for `epochs` passes over the training records."""
    if spec.epochs is None:
        return spec.steps
    records_per_step = spec.batch_size * spec.gradient_accumulation
    steps = math.ceil(spec.epochs * train_count / records_per_step)
    if steps > 100_000:
        raise PipelineInputError(
            f"epochs {spec.epochs} over {train_count} training records is {steps} steps, more than 100000; "
            "lower epochs or raise batch_size."
        )
    return steps


def _non_finite_loss_error(value: float, *, step: int, spec: LoraSpec) -> PipelineInputError:
    """The user-facing error for a loss that became NaN or infinite during training."""
    return PipelineInputError(
        f"Training stopped: the loss became {value} at step {step} with learning_rate {spec.learning_rate:g}; "
        f"nothing was saved. Lower learning_rate (e.g. {spec.learning_rate / 10:g}) and check the dataset "
        "for unusual content."
    )


# --- pipeline --------------------------------------------------------------------------------------------------


def train_lora(
    base_dir: Path,
    records: list[dict],
    out_dir: Path,
    spec: LoraSpec,
    *,
    report: ProgressCallback = _no_report,
    base_reference: str | None = None,
) -> dict:
    """Train a LoRA adapter on base_dir with records; write adapter + tokenizer to out_dir; return the run's metadata.

    `base_reference` (e.g. "credit-model/3") becomes adapter_config.json's base_model_name_or_path; without it the
    field is left empty rather than naming a scratch path. out_dir must be absent or empty, and holds the complete
    result or nothing whatever fails (NaN loss, cancellation, a crash).
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
    quantization = _quantization_of(config)
    device = pick_device()
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
    steps = _resolve_steps(spec, len(train_examples))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)

    cuda_devices = [torch.device(device).index or 0] if device.startswith("cuda") else []
    # fork_rng: seeding for reproducibility must not disturb the random state of the worker process around us.
    with torch.random.fork_rng(devices=cuda_devices):
        torch.manual_seed(spec.seed)
        peft_model = _attach_adapter(
            model, spec, target_modules, quantized=quantization is not None, base_reference=base_reference
        )
        trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
        run = _run_training(
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
    files = _save_adapter(peft_model, tokenizer, out_dir)
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
        "library_versions": _library_versions(),
        "device": device_description(device),
        "files": files,
        "warnings": warnings,
    }


def _attach_adapter(
    model, spec: LoraSpec, target_modules: tuple[str, ...], *, quantized: bool, base_reference: str | None
):
    """Freeze the base and wrap it with fresh LoRA matrices (QLoRA preparation first on a quantized base)."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if quantized:
        _keep_4bit_weights_differentiable(model)
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=spec.gradient_checkpointing)
    elif spec.gradient_checkpointing:
        model.gradient_checkpointing_enable()
        model.enable_input_require_grads()
    config = LoraConfig(
        r=spec.r,
        lora_alpha=spec.alpha,
        lora_dropout=spec.dropout,
        target_modules=list(target_modules),
        bias="none",
        task_type="CAUSAL_LM",
    )
    peft_model = get_peft_model(model, config)
    # Set after get_peft_model, which would otherwise replace it with the local scratch path of the base.
    peft_model.peft_config["default"].base_model_name_or_path = base_reference or ""
    peft_model.train()
    return peft_model


def _keep_4bit_weights_differentiable(model) -> None:
    """Stop bitsandbytes from repacking 4-bit weights for CPU inference during our evaluation passes.

    On CPUs with AVX512-BF16, bitsandbytes 0.50's Linear4bit repacks its weights at the first forward pass in
    eval mode (bfloat16 scales, a kernel without autograd). Training after such a pass backpropagates through
    that kernel without a gradient formula, so the adapters of earlier layers get wrong gradients. The
    module's own switch keeps every pass on the ordinary differentiable path.
    """
    import bitsandbytes as bnb

    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False


def _run_training(
    model,
    spec: LoraSpec,
    *,
    steps: int,
    train_examples: list[EncodedRecord],
    eval_examples: list[EncodedRecord],
    pad_id: int,
    device: str,
    report: ProgressCallback,
) -> dict:
    """The training loop: evaluation before, a few times during and at the end; loss read back only at log points."""
    eval_seconds = 0.0

    def evaluate() -> float | None:
        nonlocal eval_seconds
        if not eval_examples:
            return None
        eval_started = time.perf_counter()
        loss = _evaluation_loss(model, eval_examples, batch_size=spec.batch_size, pad_id=pad_id, device=device)
        eval_seconds += time.perf_counter() - eval_started
        return loss

    report(5, f"Evaluating the base on {len(eval_examples)} held-out records")
    eval_loss_before = evaluate()
    if eval_loss_before is not None and not math.isfinite(eval_loss_before):
        raise PipelineInputError(
            f"The base model's loss on the held-out records is {eval_loss_before} before any training, so its "
            "weights or their dtype overflow; check the base version (analyse it) before training an adapter on it."
        )

    trainable = [p for p in model.parameters() if p.requires_grad]
    # The fused CUDA kernel updates all adapter matrices in one launch; the CPU has no fused AdamW.
    fused = {"fused": True} if device.startswith("cuda") else {}
    optimizer = torch.optim.AdamW(trainable, lr=spec.learning_rate, weight_decay=0.0, **fused)
    generator = torch.Generator().manual_seed(spec.seed)
    order = _batch_order(len(train_examples), generator)
    log_every = max(1, math.ceil(steps / MAX_CURVE_POINTS))
    eval_steps = {
        max(1, round(steps * k / EVALUATIONS_DURING_TRAINING)) for k in range(1, EVALUATIONS_DURING_TRAINING + 1)
    }

    curve: list[dict] = []
    pending: list[torch.Tensor] = []  # losses since the last log point, still on the device
    tokens_per_step: list[int] = []
    loop_started = last_report = time.perf_counter()
    seconds_before_loop = eval_seconds
    eval_loss = eval_loss_before
    for step in range(1, steps + 1):
        micro = [
            [train_examples[next(order)] for _ in range(spec.batch_size)] for _ in range(spec.gradient_accumulation)
        ]
        token_count = sum(item.supervised_tokens for batch in micro for item in batch)
        tokens_per_step.append(token_count)
        batches = [_collate(batch, pad_id=pad_id, device=device) for batch in micro]
        pending.append(_training_step(model, optimizer, batches, token_count))

        is_eval_step = step in eval_steps
        if step % log_every == 0 or is_eval_step:
            losses = torch.stack(pending).tolist()  # the one device sync per log interval
            for offset, value in enumerate(losses):
                if not math.isfinite(value):
                    raise _non_finite_loss_error(value, step=step - len(losses) + 1 + offset, spec=spec)
            point = {"step": step, "loss": round(sum(losses) / len(losses), 6)}
            pending = []
            if is_eval_step and eval_examples:
                eval_loss = evaluate()
                if not math.isfinite(eval_loss):
                    raise _non_finite_loss_error(eval_loss, step=step, spec=spec)
                point["eval_loss"] = round(eval_loss, 6)
            curve.append(point)
        now = time.perf_counter()
        if now - last_report >= REPORT_INTERVAL_SECONDS or step == steps or is_eval_step:
            last_report = now
            suffix = f", eval loss {eval_loss:.4f}" if eval_loss is not None else ""
            report(10 + int(85 * step / steps), f"Training step {step}/{steps}{suffix}")

    training_seconds = time.perf_counter() - loop_started - (eval_seconds - seconds_before_loop)
    _check_adapter_finite(model, spec)
    model.eval()
    return {
        "curve": curve,
        "eval_loss_before": eval_loss_before,
        "eval_loss_after": eval_loss if eval_examples else None,
        "training_seconds": training_seconds,
        "eval_seconds": eval_seconds,
        "tokens_per_step": round(sum(tokens_per_step) / len(tokens_per_step), 1),
    }


def _check_adapter_finite(model, spec: LoraSpec) -> None:
    """A finite loss with non-finite adapter weights would still be a broken result; refuse to save it."""
    for name, parameter in model.named_parameters():
        if parameter.requires_grad and not torch.isfinite(parameter).all():
            raise PipelineInputError(
                f"Training produced non-finite values in {name} with learning_rate {spec.learning_rate:g}; nothing "
                f"was saved. Lower learning_rate (e.g. {spec.learning_rate / 10:g})."
            )


def _save_adapter(model, tokenizer, out_dir: Path) -> list[str]:
    """Write adapter (safetensors only) and tokenizer; out_dir ends up holding all of them or nothing."""

    def write(staging: Path) -> None:
        # save_embedding_layers=False: embeddings are never adapted here, and peft's "auto" would look the base's
        # name up on the Hugging Face Hub (a network call from a worker, for a name that is ours, not the Hub's).
        model.save_pretrained(str(staging), safe_serialization=True, save_embedding_layers=False)
        # peft also writes a boilerplate model card; the registry's metadata is the version's real description.
        (staging / "README.md").unlink(missing_ok=True)
        tokenizer.save_pretrained(str(staging))

    return _write_via_staging(out_dir, write)


def _write_via_staging(out_dir: Path, write: Callable[[Path], None]) -> list[str]:
    """Run write() into a hidden sibling of out_dir and rename it into place, so a failure leaves nothing behind."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".partial", dir=out_dir.parent))
    try:
        write(staging)
        if out_dir.exists():
            out_dir.rmdir()  # empty, checked by the caller; rename cannot replace it on every platform
        staging.rename(out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return sorted(path.name for path in out_dir.iterdir())


def merge_lora(base_dir: Path, adapter_dir: Path, out_dir: Path) -> dict:
    """Fold an adapter into a full-precision base and write full safetensors weights + tokenizer to out_dir."""
    base_dir, adapter_dir, out_dir = Path(base_dir), Path(adapter_dir), Path(out_dir)
    quantization = _quantization_of(read_model_config(base_dir))
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
        merged.save_pretrained(str(staging), safe_serialization=True)
        tokenizer.save_pretrained(str(staging))

    files = _write_via_staging(out_dir, write)
    return {
        "files": files,
        "dtype": str(next(merged.parameters()).dtype).removeprefix("torch."),
        "library_versions": _library_versions(),
    }
