"""A calibrated quantization of a version directory into a new one: GPTQ or AWQ, block by block.

Why by hand, not a library: GPTQModel 7.7 (transformers v5's GPTQ backend, which also does AWQ) requires
torch>=2.14.1 and builds C++/CUDA extensions from source; llm-compressor 0.14 pins transformers<=5.17; AutoAWQ is
archived and pins old transformers. None installs beside our torch 2.13 and transformers 5.23 pins.

Layers are quantized block by block (the decoder layers in order): each block's statistics (H = XᵀX and mean |x|
per input channel of every planned Linear) are measured with the blocks before it already quantized, so later
layers correct for earlier ones' error, as in the GPTQ paper. Each forward pass stops once the block has run.

AWQ on Llama-family decoder layers (`awq.py`) searches and folds each block's scale groups into the preceding
norms and Linears first, then rounds every planned Linear to nearest on the grid of its scaled weight; elsewhere
it falls back to scales folded into each weight.

GPTQ, and AWQ folded into the preceding ops, with a symmetric grid are written as a compressed-tensors
pack-quantized checkpoint (`packing.py`): int codes packed in int32, per-group scales, and a `quantization_config`
that vLLM, SGLang and transformers (with compressed-tensors installed) read. Other results (asymmetric grids, AWQ
on other architectures; `packing.unpackable_reason` says why) are written dequantized: the grid values in the
checkpoint's own dtype, no `quantization_config`.
"""

from __future__ import annotations

import re
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import torch

from workers.pipelines.calibrated.awq import awq_fold_problem, awq_quantize_weight, fold_block_scales
from workers.pipelines.calibrated.gptq import gptq_quantize_weight, relative_output_error, round_to_nearest_grid
from workers.pipelines.calibrated.packing import FORMAT, pack_model, unpackable_reason, write_packed
from workers.pipelines.calibrated.spec import (
    DEFAULT_CALIBRATION_SAMPLES,
    CalibratedQuantizeSpec,
    plan_modules,
    validate_calibrated_spec,
)
from workers.pipelines.errors import PipelineInputError
from workers.pipelines.loading import (
    MAX_SHARD_SIZE,
    TOKENIZER_FILES,
    device_description,
    from_pretrained_checked,
    library_versions,
    linear_module_names,
    load_dtype,
    load_tokenizer,
    pick_device,
    read_model_config,
    resident_bytes,
    weight_files,
)
from workers.pipelines.memory import LIBRARY_OVERHEAD_BYTES, PeakMemory, check_fits, release_memory


class _StopForward(Exception):
    """Raised by a hook once the block being measured has run: the rest of the forward pass is not needed."""


def calibration_token_ids(tokenizer, texts: list[str], *, samples: int, max_length: int) -> list[torch.Tensor]:
    """Up to `samples` tokenized calibration texts, each cut to max_length tokens (empty ones dropped)."""
    sequences = []
    for text in texts:
        ids = tokenizer(text, return_tensors="pt", truncation=True, max_length=max_length)["input_ids"]
        if ids.shape[1] >= 2:
            sequences.append(ids)
        if len(sequences) == samples:
            break
    if not sequences:
        raise PipelineInputError("The calibration dataset has no text that tokenizes to two tokens or more.")
    return sequences


def _block_of(name: str) -> str:
    """The numbered block a Linear belongs to ('model.layers.3.mlp.up_proj' -> 'model.layers.3'), else ''."""
    match = re.match(r"^(.*?\.\d+)\.", name)
    return match.group(1) if match else ""


def _ordered_blocks(model, names: list[str]) -> list[tuple[str, list[str]]]:
    """The planned layers grouped by block, blocks in the order the forward pass runs them (module order)."""
    groups: dict[str, list[str]] = {}
    for name in names:
        groups.setdefault(_block_of(name), []).append(name)
    order = {module_name: index for index, (module_name, _) in enumerate(model.named_modules())}
    return sorted(groups.items(), key=lambda item: (item[0] == "", order.get(item[0], 0)))


def _measure_statistics(model, block: str, names: list[str], sequences: list[torch.Tensor], device: str,
                        ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], int]:
    """(H = XᵀX, mean |x| per input channel) per named Linear over all sequences, and the tokens seen; each
    forward pass stops once `block` has run."""
    modules = dict(model.named_modules())
    hessians = {name: torch.zeros(modules[name].in_features, modules[name].in_features, device=device,
                                  dtype=torch.float32) for name in names}
    abs_sums = {name: torch.zeros(modules[name].in_features, device=device, dtype=torch.float32) for name in names}
    rows = dict.fromkeys(names, 0)
    handles = []

    def accumulate(name):
        def hook(module, inputs, output):
            x = inputs[0].detach().reshape(-1, inputs[0].shape[-1]).float()
            hessians[name].addmm_(x.T, x)
            abs_sums[name] += x.abs().sum(dim=0)
            rows[name] += x.shape[0]
        return hook

    for name in names:
        handles.append(modules[name].register_forward_hook(accumulate(name)))
    if block:
        def stop(module, inputs, output):
            raise _StopForward
        handles.append(modules[block].register_forward_hook(stop))
    tokens = 0
    try:
        with torch.no_grad():
            for ids in sequences:
                tokens += ids.shape[1]
                try:
                    model(input_ids=ids.to(device), use_cache=False)
                except _StopForward:
                    pass
    finally:
        for handle in handles:
            handle.remove()
    mean_abs = {name: abs_sums[name] / max(rows[name], 1) for name in names}
    return hessians, mean_abs, tokens


def directory_weight_bytes(model_dir: Path) -> int:
    return sum(path.stat().st_size for path in weight_files(model_dir) if path.suffix == ".safetensors")


def packed_bytes(model, planned: list[str], bits: int, group_size: int) -> int:
    """What the weights would take packed in the GPTQ format (int32-packed codes, fp16 scales and packed zeros
    per group) with every other tensor as stored: the size a serving engine's GPTQ checkpoint would have."""
    planned_set = set(planned)
    total = 0
    modules = dict(model.named_modules())
    counted = set()
    for name in planned:
        weight = modules[name].weight
        rows, columns = weight.shape
        groups = 1 if group_size == -1 else -(-columns // group_size)
        total += rows * columns * bits // 8 + groups * rows * 2 + groups * rows * bits // 8 + columns * 4
        counted.add(id(weight))
    for name, parameter in model.named_parameters():
        module_name = name.rsplit(".", 1)[0]
        if id(parameter) in counted or (module_name in planned_set and name.endswith(".weight")):
            continue
        total += parameter.numel() * parameter.element_size()
    return total


def working_bytes(config: dict, max_length: int, method: str = "gptq") -> int:
    """Memory beside the model: one block's Hessians (float32, in×in per Linear: q, k, v, o, gate and up read the
    hidden size, down the intermediate size), float32 copies of the largest weight being rounded (for AWQ also a
    copy of the block's weights before folding, counted at float32), and one sample's activations through the
    block."""
    config = config.get("text_config", config)
    hidden = int(config.get("hidden_size") or config.get("n_embd") or 0)
    intermediate = int(config.get("intermediate_size") or config.get("n_inner") or 4 * hidden)
    hessians = (6 * hidden * hidden + intermediate * intermediate) * 4
    weight_copies = 4 * hidden * intermediate * 4
    if method == "awq":
        weight_copies += (4 * hidden * hidden + 3 * hidden * intermediate) * 4
    activations = 16 * max_length * max(hidden, intermediate) * 4
    return hessians + weight_copies + activations


def quantize_calibrated_version(
    source_dir: Path,
    out_dir: Path,
    spec: CalibratedQuantizeSpec,
    texts: list[str],
    report: Callable[[int, str], None] = lambda percent, message: None,
    *,
    available_bytes: int | None = None,
    max_shard_size: str | int = MAX_SHARD_SIZE,
) -> dict:
    """Quantize the version in source_dir with spec.method (GPTQ or AWQ) calibrated on texts; write it to
    out_dir; return the metadata (settings, calibration, modules quantized and kept, per-module loss, sizes).

    `available_bytes` replaces the measured free memory of the device in the pre-flight check.
    """
    device = pick_device()
    try:
        with PeakMemory(device) as peak:
            result = _quantize_calibrated_version(Path(source_dir), Path(out_dir), spec, texts, report, device,
                                                  available_bytes, max_shard_size)
    finally:
        release_memory(device)
    result.update(peak.figures())
    return result


def _quantize_calibrated_version(source_dir: Path, out_dir: Path, spec: CalibratedQuantizeSpec, texts: list[str],
                                 report, device: str, available_bytes: int | None, max_shard_size) -> dict:
    started = time.monotonic()
    if out_dir.exists() and any(out_dir.iterdir()):
        raise FileExistsError(f"{out_dir} is not empty")
    report(0, "Checking the settings and the source model")
    validate_calibrated_spec(spec)
    config = read_model_config(source_dir)
    if "quantization_config" in config:
        raise PipelineInputError(f"{source_dir} is already quantized; quantize its full-precision parent instead.")
    dtype = load_dtype(source_dir, config)
    memory = check_fits(needed_bytes=resident_bytes(source_dir) + working_bytes(config, spec.max_length, spec.method)
                        + LIBRARY_OVERHEAD_BYTES, what=f"{spec.method.upper()} on this model", device=device,
                        available_bytes=available_bytes)
    model = from_pretrained_checked(source_dir, device_map={"": device},
                                    **({"dtype": getattr(torch, dtype)} if dtype else {}))
    model.eval()
    planned, kept = plan_modules(linear_module_names(model), spec)
    tokenizer = load_tokenizer(source_dir)
    samples = spec.calibration_samples or DEFAULT_CALIBRATION_SAMPLES
    sequences = calibration_token_ids(tokenizer, texts, samples=samples, max_length=spec.max_length)
    if spec.calibration_samples is not None and len(sequences) < spec.calibration_samples:
        raise PipelineInputError(f"calibration_samples is {spec.calibration_samples} but the calibration dataset "
                                 f"gives only {len(sequences)} usable texts; ask for fewer samples.")
    modules = dict(model.named_modules())
    blocks = _ordered_blocks(model, planned)
    awq_unfoldable = (awq_fold_problem(config.get("model_type"), modules, blocks) if spec.method == "awq"
                      else None)
    awq_folds = spec.method == "awq" and awq_unfoldable is None
    not_packed = unpackable_reason(spec, {name: modules[name].in_features for name in planned},
                                   awq_unfoldable=awq_unfoldable)
    grids: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
    losses: dict[str, float] = {}
    alphas: dict[str, float] = {}
    folded_into: dict[str, str | None] = {}
    tokens_used = 0
    for index, (block, names) in enumerate(blocks):
        report(5 + 80 * index // len(blocks), f"{spec.method.upper()} {spec.bits}-bit: block "
                                               f"{block or '(top level)'} ({len(names)} layers)")
        hessians, mean_abs, tokens_used = _measure_statistics(model, block, names, sequences, device)
        if awq_folds:
            # The loss is measured against the weights as they were before this block's scales were folded.
            originals = {name: modules[name].weight.data.clone() for name in names}
            folded = fold_block_scales(modules, block, names, hessians, mean_abs, bits=spec.bits,
                                       group_size=spec.group_size, sym=spec.sym)
            alphas.update(folded.alphas)
            folded_into.update(folded.folded_into)
        for name in names:
            linear = modules[name]
            if awq_folds:
                quantized, scales, zeros = round_to_nearest_grid(linear.weight.data, spec.bits, spec.group_size,
                                                                 spec.sym)
                losses[name] = relative_output_error(originals[name], folded.in_original_space(name, quantized),
                                                     hessians[name])
            elif spec.method == "awq":
                quantized, alphas[name] = awq_quantize_weight(linear.weight.data, hessians[name], mean_abs[name],
                                                              bits=spec.bits, group_size=spec.group_size,
                                                              sym=spec.sym)
                losses[name] = relative_output_error(linear.weight.data, quantized, hessians[name])
            else:
                quantized, scales, zeros = gptq_quantize_weight(
                    linear.weight.data, hessians[name], bits=spec.bits, group_size=spec.group_size,
                    damping=spec.damping, sym=spec.sym, desc_act=spec.desc_act)
                losses[name] = relative_output_error(linear.weight.data, quantized, hessians[name])
            if not_packed is None:
                grids[name] = (quantized.cpu(), scales.cpu(), zeros.cpu())
            linear.weight.data.copy_(quantized.to(linear.weight.dtype))
        if awq_folds:
            del originals, folded
        del hessians, mean_abs
    size_before = directory_weight_bytes(source_dir)
    packed = packed_bytes(model, planned, spec.bits, spec.group_size)

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".partial", dir=out_dir.parent))
    try:
        report(88, "Saving the quantized weights")
        if not_packed is None:
            ignore = [name for name in linear_module_names(model) if name not in grids]
            compressor = pack_model(model, grids, spec, ignore)
            write_packed(model, compressor, staging, max_shard_size=max_shard_size)
            format_fields = {
                "format": FORMAT,
                "format_note": "compressed-tensors pack-quantized: int codes packed in int32 with per-group scales; "
                               "config.json's quantization_config is what vLLM, SGLang and transformers read.",
            }
        else:
            model.save_pretrained(str(staging), safe_serialization=True, max_shard_size=max_shard_size)
            format_fields = {
                "format": "dequantized",
                "format_note": f"Weights hold the {spec.method.upper()} grid values dequantized to the checkpoint's "
                               "dtype; config.json has no quantization_config, so the version loads with plain "
                               f"from_pretrained. Not packed because {not_packed}.",
            }
        copied = [name for name in TOKENIZER_FILES if (source_dir / name).is_file()]
        for name in copied:
            shutil.copy2(source_dir / name, staging / name)
        size_after = directory_weight_bytes(staging)
        if not_packed is None:
            packed = size_after  # the estimate's target, now measured on disk
        result = {
            "method": spec.method,
            **format_fields,
            "bits": spec.bits,
            "group_size": spec.group_size,
            "damping": spec.damping,
            "sym": spec.sym,
            "desc_act": spec.desc_act,
            "settings": {**asdict(spec), "skip_modules": list(spec.skip_modules), "keep": list(spec.keep)},
            "calibration": {"samples": len(sequences), "tokens": tokens_used, "max_length": spec.max_length},
            "library_versions": {**library_versions(*(("compressed_tensors",) if not_packed is None else ())),
                                 spec.method: f"workers.pipelines.calibrated.{spec.method}"},
            "device": device_description(device),
            "dtype": dtype,
            "memory": memory,
            "wall_seconds": round(time.monotonic() - started, 3),
            "size_before_bytes": size_before,
            "size_after_bytes": size_after,
            "packed_size_bytes": packed,
            "size_ratio": round(size_after / size_before, 4) if size_before else None,
            "packed_size_ratio": round(packed / size_before, 4) if size_before else None,
            "quantized_modules": planned,
            "skipped_modules": sorted(kept),
            "kept_modules": [{"name": name, "reason": reason} for name, reason in sorted(kept.items())],
            "module_loss": {name: round(loss, 8) for name, loss in losses.items()},
            **({"awq_alpha": alphas} if alphas else {}),
            **({"awq_folded_into": folded_into} if awq_folds else {}),
            **({"awq_scales": ("folded into the preceding norm or Linear, one scale vector per group of layers "
                               "reading the same input" if awq_folds else
                               f"folded into each layer's own weight: {awq_unfoldable}")}
               if spec.method == "awq" else {}),
            "loss_definition": "||WX - ŴX||² / ||WX||² over the calibration inputs of each layer"
                               + (" (W, X and Ŵ as before AWQ's scales were folded)" if awq_folds else ""),
            "tokenizer_files": copied,
        }
        report(100, f"{spec.method.upper()} quantized {len(planned)} layers to {spec.bits} bits")
        if out_dir.exists():
            out_dir.rmdir()
        staging.rename(out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    finally:
        del model
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
    return result

