"""Memory the pipelines need and use: what a checkpoint takes once loaded (read from its safetensors headers, no
tensor is touched), what the worker has free, a check before loading, and the peak memory of a run.

A job whose model cannot fit must fail before it starts loading, with both sizes in its message, rather than be
killed by the kernel's OOM killer half-way (which leaves the user a job "lost with its worker" and no reason).
The estimates are the resident weights in the dtype they will be loaded in plus a bounded working set per
pipeline (activations, logits blocks, the libraries' own buffers); they are meant to be a little generous, so a
refusal means "this will not fit", not "this might be tight".
"""

from __future__ import annotations

import json
import math
import os
import struct
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from workers.pipelines.errors import PipelineInputError

MIB = 1024 * 1024
GIB = 1024 * MIB
# Bytes per element of the safetensors dtypes (the header's names).
SAFETENSORS_DTYPE_BYTES = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1,
    "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U64": 8, "U32": 4, "U16": 2, "U8": 1, "BOOL": 1,
}
FLOATING_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16"}
TORCH_DTYPE_BYTES = {"float64": 8, "float32": 4, "float16": 2, "bfloat16": 2}
# What torch, transformers, bitsandbytes and the tokenizer take besides the weights, measured on this project's
# CPU workers at 250-400 MB; rounded up.
LIBRARY_OVERHEAD_BYTES = 512 * MIB
# What a job's result carries from its pipeline's outcome (workers/executors.py copies them).
MEMORY_RESULT_KEYS = ("peak_rss_bytes", "peak_gpu_bytes")
# A sampling thread catches what happens between two /proc reads; 20 ms sees any allocation that lives a layer.
SAMPLE_SECONDS = 0.02
# 4-bit methods store half a byte per weight plus one float32 absmax per block of 64 weights.
FOUR_BIT_BYTES_PER_ELEMENT = 0.5 + 4 / 64


class ModelDoesNotFit(PipelineInputError):
    """The model (with the job's working memory) needs more memory than the worker has available."""


@dataclass(frozen=True)
class StoredTensor:
    """One tensor as a safetensors header describes it."""

    name: str
    dtype: str  # the header's name: "BF16", "F32", "U8", ...
    elements: int
    stored_bytes: int


def read_safetensors_header(path: Path) -> dict:
    """The JSON header of a safetensors file (8-byte little-endian length, then JSON); tensors stay on disk."""
    with open(path, "rb") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        if length > 100 * MIB:
            raise PipelineInputError(f"{Path(path).name} has a {length:,}-byte header; it is not a safetensors file.")
        return json.loads(handle.read(length))


def stored_tensors(model_dir: Path) -> list[StoredTensor]:
    """Every tensor of every *.safetensors file in model_dir, from the headers only."""
    tensors = []
    for path in sorted(Path(model_dir).glob("*.safetensors")):
        try:
            header = read_safetensors_header(path)
        except (OSError, ValueError, struct.error) as error:
            raise PipelineInputError(
                f"{path.name} in {model_dir} has no readable safetensors header ({error}); re-upload it."
            ) from error
        for name, entry in header.items():
            if name == "__metadata__":
                continue
            start, end = entry["data_offsets"]
            tensors.append(StoredTensor(name, entry["dtype"], math.prod(entry["shape"]), end - start))
    return tensors


def checkpoint_dtype(tensors: Iterable[StoredTensor]) -> str | None:
    """The checkpoint's own floating dtype: the one holding most of its floating-point bytes ("bfloat16", ...)."""
    by_dtype: dict[str, int] = {}
    for tensor in tensors:
        if tensor.dtype in FLOATING_DTYPES:
            by_dtype[tensor.dtype] = by_dtype.get(tensor.dtype, 0) + tensor.stored_bytes
    if not by_dtype:
        return None
    return FLOATING_DTYPES[max(by_dtype, key=by_dtype.get)]


def loaded_bytes(tensors: Iterable[StoredTensor], dtype: str | None = None) -> int:
    """Resident bytes of the tensors once loaded, floating ones converted to `dtype` (None: as stored)."""
    total = 0
    for tensor in tensors:
        if dtype is not None and tensor.dtype in FLOATING_DTYPES:
            total += tensor.elements * TORCH_DTYPE_BYTES[dtype]
        else:
            total += tensor.stored_bytes
    return total


def quantized_bytes(tensors: Iterable[StoredTensor], quantized_modules: Iterable[str], method: str,
                    dtype: str | None = None) -> int:
    """Resident bytes after bitsandbytes quantizes the weights of `quantized_modules` with `method`."""
    quantized_weights = {f"{name}.weight" for name in quantized_modules}
    total = 0
    for tensor in tensors:
        if tensor.name in quantized_weights:
            per_element = 1 + 4 / 4096 if method == "int8" else FOUR_BIT_BYTES_PER_ELEMENT  # int8: a scale per row
            total += math.ceil(tensor.elements * per_element)
        else:
            total += loaded_bytes([tensor], dtype)
    return total


def largest_tensor_bytes(tensors: Iterable[StoredTensor], dtype: str | None = None) -> int:
    return max((loaded_bytes([tensor], dtype) for tensor in tensors), default=0)


def describe_bytes(count: int) -> str:
    """'6.4 GB (6,425,673,728 bytes)': readable and exact, as error messages show sizes."""
    return f"{count / 1e9:.1f} GB ({count:,} bytes)" if count >= 1e8 else f"{count / 1e6:.1f} MB ({count:,} bytes)"


# --- what is free --------------------------------------------------------------------------------------------


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _cgroup_available() -> int | None:
    """Room left under this process's cgroup memory limit (v2 or v1), page cache counted as free; None: no limit.

    psutil.virtual_memory() reports the host's memory, not a container's limit: a worker in a 16 GB container
    on a 256 GB host would otherwise accept models the kernel then kills it for.
    """
    root = Path("/sys/fs/cgroup")
    for limit_file, usage_file, stat_file, inactive_key in (
        (root / "memory.max", root / "memory.current", root / "memory.stat", "inactive_file"),
        (root / "memory" / "memory.limit_in_bytes", root / "memory" / "memory.usage_in_bytes",
         root / "memory" / "memory.stat", "total_inactive_file"),
    ):
        limit, usage = _read_int(limit_file), _read_int(usage_file)
        if limit is None or usage is None or limit >= 1 << 60:  # "max" or v1's "unlimited" (a huge number)
            continue
        inactive = 0
        try:
            for line in stat_file.read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == inactive_key:
                    inactive = int(value)
        except (OSError, ValueError):
            pass
        return max(0, limit - max(0, usage - inactive))
    return None


def available_memory_bytes(device: str) -> int:
    """Memory a job can still take on `device`: free GPU memory on CUDA, else free RAM (the cgroup's limit too)."""
    if device.startswith("cuda"):
        import torch

        where = torch.device(device)
        free, _total = torch.cuda.mem_get_info(where)
        # Blocks this process's caching allocator holds but does not use are free to it, though not to the driver.
        cached = torch.cuda.memory_reserved(where) - torch.cuda.memory_allocated(where)
        return int(free + max(0, cached))
    import psutil

    available = int(psutil.virtual_memory().available)
    cgroup = _cgroup_available()
    return min(available, cgroup) if cgroup is not None else available


def check_fits(*, needed_bytes: int, what: str, device: str, available_bytes: int | None = None) -> dict:
    """Raise ModelDoesNotFit when `needed_bytes` exceed what `device` has free; return both figures otherwise.

    `available_bytes` replaces the measurement (a worker's configured budget, or a test's limit).
    """
    available = available_memory_bytes(device) if available_bytes is None else int(available_bytes)
    place = "GPU" if device.startswith("cuda") else "RAM"
    if needed_bytes > available:
        raise ModelDoesNotFit(
            f"{what} needs about {describe_bytes(needed_bytes)} of {place} but this worker has "
            f"{describe_bytes(available)} available on {device}; nothing was loaded. Run it on a worker with more "
            "memory (a GPU worker for the gpu queue, or a larger host), or free memory on this one."
        )
    return {"needed_estimate_bytes": int(needed_bytes), "available_bytes": available}


# --- working sets ----------------------------------------------------------------------------------------------


def _shape(config: dict) -> tuple[int, int, int, int]:
    """(hidden, intermediate, layers, vocab) of a decoder config, with the usual names of other families."""
    config = config.get("text_config", config)
    hidden = int(config.get("hidden_size") or config.get("n_embd") or config.get("d_model") or 0)
    intermediate = int(config.get("intermediate_size") or config.get("n_inner") or 4 * hidden)
    layers = int(config.get("num_hidden_layers") or config.get("n_layer") or 0)
    vocab = int(config.get("vocab_size") or 0)
    return hidden, intermediate, layers, vocab


def analysis_working_bytes(config: dict, *, context_length: int, batch_size: int, layer_tokens: int) -> int:
    """Activations of the analysis beside its two models (float32 worst case, see analysis.logits and layers).

    Per batch: the logits of both models and the widest MLP activations; per-layer phase: the reference's
    Linear inputs and outputs of one sequence and the logits of all layer sequences; the float64 blocks.
    """
    from workers.pipelines.analysis.logits import LOG_PROB_ELEMENTS_PER_BLOCK

    hidden, intermediate, layers, vocab = _shape(config)
    scoring = 2 * batch_size * context_length * (vocab + 4 * intermediate) * 4
    layer_phase = layer_tokens * (layers * (6 * hidden + 3 * intermediate) + 2 * vocab) * 4
    blocks = 4 * LOG_PROB_ELEMENTS_PER_BLOCK * 8
    return scoring + layer_phase + blocks + LIBRARY_OVERHEAD_BYTES


def training_working_bytes(config: dict, *, batch_size: int, max_length: int, dtype: str | None,
                           gradient_checkpointing: bool) -> int:
    """Activations kept for the backward pass and the float32 logits (and their gradient) of one micro-batch."""
    hidden, intermediate, layers, vocab = _shape(config)
    tokens = batch_size * max_length
    element = TORCH_DTYPE_BYTES.get(dtype or "float32", 4)
    # About 10 hidden-wide and 3 intermediate-wide tensors per decoder layer are saved for backward (or one
    # hidden-wide input per layer under gradient checkpointing).
    per_token = layers * (hidden if gradient_checkpointing else 10 * hidden + 3 * intermediate) * element
    logits = 3 * tokens * vocab * 4
    return tokens * per_token + logits + LIBRARY_OVERHEAD_BYTES


# --- what a run used ---------------------------------------------------------------------------------------------

_reset_lock = threading.Lock()
_resets = {"rss": 0, "gpu": 0}  # generation counters: whether someone reset a high-water mark since we did
_active = {"count": 0}


def _rss_now() -> int:
    import psutil

    return int(psutil.Process().memory_info().rss)


def _high_water_rss() -> int | None:
    """The kernel's high-water mark of this process's resident set (VmHWM), Linux only."""
    try:
        for line in Path(f"/proc/{os.getpid()}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _reset_high_water_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux: "5" to /proc/PID/clear_refs); False where that is not possible."""
    try:
        with open(f"/proc/{os.getpid()}/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def memory_figures(outcome: dict) -> dict:
    """The peak-memory figures of a pipeline's outcome (MEMORY_RESULT_KEYS present in it), for a job's result."""
    return {key: outcome[key] for key in MEMORY_RESULT_KEYS if key in outcome}


def release_memory(device: str = "cpu") -> None:
    """Hand the memory of a finished run back: collect the dropped models, return the CUDA cache, trim the heap.

    A worker process lives on after a job; without this glibc keeps the freed heap of a 10 GB model mapped (and
    CUDA its cached blocks), so the idle worker still shows the job's size. What a trim cannot return (heap
    fragmentation) is the pool's business: worker_max_memory_per_child replaces a child that stayed large.
    """
    import gc

    gc.collect()
    if device.startswith("cuda"):
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to trim this way
        pass


class PeakMemory:
    """Peak resident memory of this process (and peak allocated GPU memory on CUDA) while the block runs.

    A worker process lives on between jobs, so getrusage's ru_maxrss (a lifetime maximum) says nothing about
    one job. The outermost PeakMemory resets the kernel's high-water mark and reads it at the end (exact); a
    thread sampling the RSS every 20 ms covers nested blocks and systems without /proc.
    """

    def __init__(self, device: str = "cpu"):
        self.device = device
        self.rss_before = 0
        self.peak_rss = 0
        self.peak_gpu: int | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True, name="peak-memory")
        self._rss_generation: int | None = None
        self._gpu_generation: int | None = None

    def _cuda(self) -> bool:
        if not self.device.startswith("cuda"):
            return False
        import torch

        return torch.cuda.is_available()

    def _sample(self) -> None:
        while not self._stop.wait(SAMPLE_SECONDS):
            self.peak_rss = max(self.peak_rss, _rss_now())
            if self.peak_gpu is not None:
                import torch

                self.peak_gpu = max(self.peak_gpu, int(torch.cuda.memory_allocated(torch.device(self.device))))

    def __enter__(self):
        self.rss_before = self.peak_rss = _rss_now()
        with _reset_lock:
            if _active["count"] == 0 and _reset_high_water_rss():
                _resets["rss"] += 1
                self._rss_generation = _resets["rss"]
            if self._cuda():
                import torch

                if _active["count"] == 0:
                    torch.cuda.reset_peak_memory_stats(torch.device(self.device))
                    _resets["gpu"] += 1
                    self._gpu_generation = _resets["gpu"]
                self.peak_gpu = int(torch.cuda.memory_allocated(torch.device(self.device)))
            _active["count"] += 1
        self._thread.start()
        return self

    def __exit__(self, *exc_info):
        self._stop.set()
        self._thread.join()
        self.peak_rss = max(self.peak_rss, _rss_now())
        with _reset_lock:
            _active["count"] -= 1
            if self._rss_generation is not None and self._rss_generation == _resets["rss"]:
                high_water = _high_water_rss()
                if high_water is not None:
                    self.peak_rss = max(self.peak_rss, high_water)
            if self.peak_gpu is not None and self._gpu_generation == _resets["gpu"]:
                import torch

                self.peak_gpu = max(self.peak_gpu, int(torch.cuda.max_memory_allocated(torch.device(self.device))))
        return False

    def figures(self) -> dict:
        """peak_rss_bytes, rss_before_bytes and peak_gpu_bytes (None off CUDA): the keys a job's result carries."""
        return {"peak_rss_bytes": int(self.peak_rss), "rss_before_bytes": int(self.rss_before),
                "peak_gpu_bytes": int(self.peak_gpu) if self.peak_gpu is not None else None}
