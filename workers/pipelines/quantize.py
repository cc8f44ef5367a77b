"""Quantize a model version with bitsandbytes (NF4, FP4 or INT8) into a new version directory."""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import torch

from workers.pipelines.errors import PipelineInputError
from workers.pipelines.loading import (
    MAX_SHARD_SIZE,
    TOKENIZER_FILES,
    build_skeleton,
    check_tensor_shapes,
    check_weight_files_readable,
    device_description,
    from_pretrained_checked,
    library_versions,
    linear_module_names,
    load_dtype,
    pick_device,
    read_model_config,
    weight_files,
)
from workers.pipelines.memory import (
    LIBRARY_OVERHEAD_BYTES,
    PeakMemory,
    check_fits,
    largest_tensor_bytes,
    quantized_bytes,
    release_memory,
    stored_tensors,
)
from workers.pipelines.specs import (  # noqa: F401  (the quantize API: specs live where the web can import them)
    COMPUTE_DTYPES,
    METHODS,
    QuantizeSpec,
    is_skipped,
    validate_quantize_spec,
)


def bitsandbytes_config(spec: QuantizeSpec):
    """The transformers BitsAndBytesConfig that carries out spec."""
    from transformers import BitsAndBytesConfig

    if spec.method == "int8":
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=list(spec.skip_modules))
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=spec.method,
        bnb_4bit_use_double_quant=spec.double_quant,
        bnb_4bit_compute_dtype=getattr(torch, spec.compute_dtype),
        llm_int8_skip_modules=list(spec.skip_modules),
    )


def plan_quantization(skeleton, spec: QuantizeSpec) -> tuple[list[str], list[str]]:
    """Linear layers of the (meta-device) model that will be quantized and those skip_modules keeps."""
    linear_names = linear_module_names(skeleton)
    for pattern in spec.skip_modules:
        if not any(is_skipped(name, [pattern]) for name in linear_names):
            examples = ", ".join(linear_names[:4])
            raise PipelineInputError(
                f"skip_modules entry {pattern!r} matches no Linear layer of this model; use a name such as "
                f"{examples} or a suffix such as 'lm_head' or 'down_proj'."
            )
    skipped = [name for name in linear_names if is_skipped(name, spec.skip_modules)]
    to_quantize = [name for name in linear_names if name not in skipped]
    if not linear_names:
        raise PipelineInputError("This model has no Linear layers for bitsandbytes to quantize.")
    if not to_quantize:
        raise PipelineInputError(
            f"Nothing left to quantize: skip_modules {spec.skip_modules!r} excludes all {len(linear_names)} "
            "Linear layers of this model; remove entries from skip_modules."
        )
    return to_quantize, skipped


def directory_weight_bytes(model_dir: Path) -> int:
    """Total size of the safetensors weight files in a version directory."""
    return sum(path.stat().st_size for path in weight_files(model_dir) if path.suffix == ".safetensors")


def quantize_needed_bytes(source_dir: Path, planned: list[str], spec: QuantizeSpec, dtype: str | None) -> int:
    """Memory the quantize job takes on its device: the quantized model, two tensors in flight, the libraries."""
    tensors = stored_tensors(source_dir)
    return (quantized_bytes(tensors, planned, spec.method, dtype) + 2 * largest_tensor_bytes(tensors, dtype)
            + LIBRARY_OVERHEAD_BYTES)


def quantize_version(
    source_dir: Path,
    out_dir: Path,
    spec: QuantizeSpec,
    report: Callable[[int, str], None] = lambda percent, message: None,
    *,
    available_bytes: int | None = None,
    max_shard_size: str | int = MAX_SHARD_SIZE,
) -> dict:
    """Quantize the version in source_dir as spec says, write it to out_dir, and return what was done.

    `available_bytes` replaces the measured free memory of the device in the pre-flight check; the weights are
    written in shards of at most `max_shard_size`.
    """
    device = pick_device()
    try:
        with PeakMemory(device) as peak:
            result = _quantize_version(Path(source_dir), Path(out_dir), spec, report, device, available_bytes,
                                       max_shard_size)
    finally:
        release_memory(device)
    result.update(peak.figures())
    return result


def _quantize_version(source_dir: Path, out_dir: Path, spec: QuantizeSpec, report, device: str,
                      available_bytes: int | None, max_shard_size: str | int) -> dict:
    started = time.monotonic()
    if out_dir.exists() and any(out_dir.iterdir()):
        # The caller owns a fresh scratch directory per job; never mix a new result with an old one.
        raise FileExistsError(f"{out_dir} is not empty")

    report(0, "Checking the quantization settings and the source model")
    validate_quantize_spec(spec)
    config = read_model_config(source_dir)
    if "quantization_config" in config:
        method = config["quantization_config"].get("quant_method", "an unknown method")
        raise PipelineInputError(
            f"{source_dir} is already quantized ({method}); quantize its full-precision parent version instead."
        )
    check_weight_files_readable(source_dir)
    skeleton = build_skeleton(source_dir)
    check_tensor_shapes(source_dir, skeleton)
    planned, _ = plan_quantization(skeleton, spec)
    size_before = directory_weight_bytes(source_dir)
    dtype = load_dtype(source_dir, config)
    memory = check_fits(needed_bytes=quantize_needed_bytes(source_dir, planned, spec, dtype),
                        what=f"Quantizing this model to {spec.method}", device=device, available_bytes=available_bytes)
    quantization_config = bitsandbytes_config(spec)

    report(10, f"Loading and quantizing {len(planned)} Linear layers to {spec.method} on {device}")
    # bitsandbytes quantizes each Linear weight as it is placed on the device, so loading is quantizing. The
    # layers it keeps (embeddings, norms, lm_head) stay in the checkpoint's own dtype: no float32 copy.
    model = from_pretrained_checked(
        source_dir, quantization_config=quantization_config, device_map={"": device},
        **({"dtype": getattr(torch, dtype)} if dtype else {}),
    )
    quantized = quantized_module_names(model)
    skipped = [name for name in linear_module_names(model) if name not in quantized]
    model.eval()

    # Written into a hidden sibling and renamed at the end, so out_dir holds either a complete version or
    # nothing, whatever fails (or is cancelled) on the way.
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".partial", dir=out_dir.parent))
    try:
        report(70, "Saving the quantized weights")
        # No forward pass may run before this save: on CPUs with AVX512-BF16, bitsandbytes 0.50 repacks 4-bit
        # weights at the first inference call and its inverse leaves absmax transposed in bfloat16, so a model
        # saved after inference reloads with scrambled scales.
        model.save_pretrained(str(staging), safe_serialization=True, max_shard_size=max_shard_size)
        del model
        if device.startswith("cuda"):
            torch.cuda.empty_cache()  # the worker process lives on; give the next job the memory
        report(90, "Copying the tokenizer")
        copied = [name for name in TOKENIZER_FILES if (source_dir / name).is_file()]
        for name in copied:
            shutil.copy2(source_dir / name, staging / name)
        size_after = directory_weight_bytes(staging)
        result = {
            "method": spec.method,
            "settings": {
                **asdict(spec),
                "bitsandbytes_config": json.loads(quantization_config.to_json_string(use_diff=False)),
            },
            "library_versions": library_versions(),
            "device": device_description(device),
            "dtype": dtype,
            "memory": memory,
            "wall_seconds": round(time.monotonic() - started, 3),
            "size_before_bytes": size_before,
            "size_after_bytes": size_after,
            "size_ratio": round(size_after / size_before, 4) if size_before else None,
            "quantized_modules": quantized,
            "skipped_modules": skipped,
            "tokenizer_files": copied,
        }
        report(100, f"Quantized {len(quantized)} layers to {spec.method}: {size_before} -> {size_after} bytes")
        if out_dir.exists():
            out_dir.rmdir()  # empty, checked above; rename cannot replace a directory on every platform
        staging.rename(out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return result


def quantized_module_names(model) -> list[str]:
    """Names of the layers bitsandbytes replaced with its 4-bit or 8-bit Linear."""
    import bitsandbytes as bnb

    return [
        name
        for name, module in model.named_modules()
        if isinstance(module, (bnb.nn.Linear4bit, bnb.nn.Linear8bitLt))
    ]
