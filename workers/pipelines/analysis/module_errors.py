"""Per-module sums of the per-layer phase: output errors over the layer tokens, and weight errors.

The outputs are read in row blocks, cache-sized on a CPU (the several passes over a block then cost about one read
from memory) and large on a GPU (few kernel launches), in float32: float32 outputs are read where they are, others
are copied into reused buffers, so no module allocates float64 copies of its outputs (which cost more than the
forward passes did). The blocks' sums are added in float64, so each sum is as good as a float32 sum over one block
(relative error ~1e-7). Sums stay on the module's device and are read back once, after the pass: a read per module
would stop a GPU at every Linear.

Weight errors compare the effective dense weights, dequantizing bitsandbytes' 4- and 8-bit layers and adding
LoRA deltas.
"""

from __future__ import annotations

import math
from contextlib import contextmanager

import torch

from workers.pipelines.analysis.logits import LOG_PROB_ELEMENTS_PER_BLOCK, STATISTICS_ELEMENTS_PER_BLOCK


@contextmanager
def serial_on_cpu(device: torch.device):
    """Torch ops on a CPU run in the calling thread within: ops on cache-sized blocks cost less than waking the
    other threads, and far less when those are busy elsewhere (each op then waits for all of them)."""
    if device.type != "cpu":
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


class Float32Scratch:
    """Float32 buffers reused by every module and block of one per-layer phase, by slot and device."""

    def __init__(self):
        self._buffers: dict[tuple[int, torch.device], torch.Tensor] = {}

    @staticmethod
    def block_elements(device: torch.device) -> int:
        return STATISTICS_ELEMENTS_PER_BLOCK if device.type == "cpu" else LOG_PROB_ELEMENTS_PER_BLOCK

    def buffer(self, slot: int, count: int, device: torch.device) -> torch.Tensor:
        buffer = self._buffers.get((slot, device))
        if buffer is None or buffer.numel() < count:
            buffer = torch.empty(max(count, self.block_elements(device)), dtype=torch.float32, device=device)
            self._buffers[(slot, device)] = buffer
        return buffer[:count]

    def flat_float32(self, slot: int, values: torch.Tensor, device: torch.device) -> torch.Tensor:
        """`values` flattened, as float32 on `device`: itself when it already is, else a copy into a buffer."""
        if values.dtype == torch.float32 and values.device == device and values.is_contiguous():
            return values.reshape(-1)
        flat = self.buffer(slot, values.numel(), device)
        flat.view(values.shape).copy_(values)
        return flat


class ModuleOutputErrors:
    """Sums over the layer-phase tokens for one module: reference and local energies, local error (and its split
    by output channel), local dot product, propagated error; see `result` for what is reported from them."""

    SUMS = ("reference_energy", "local_energy", "local_error", "local_dot", "propagated_error")

    def __init__(self):
        self.sums: torch.Tensor | None = None  # SUMS, in that order, float64
        self.channel_error: torch.Tensor | None = None  # float64
        self.candidate_input_dtype: torch.dtype | None = None

    def add(self, reference_output, local_output, own_output, scratch: Float32Scratch) -> None:
        columns = reference_output.shape[-1]
        reference = reference_output.reshape(-1, columns)
        local = local_output.reshape(-1, columns)
        own = own_output.reshape(-1, columns)
        device, rows = reference.device, reference.shape[0]
        step = max(1, scratch.block_elements(device) // max(1, columns))
        block_sums, channel_error = [], None
        for start in range(0, rows, step):
            block = slice(start, min(start + step, rows))
            reference_block = scratch.flat_float32(0, reference[block], device)
            local_block = scratch.flat_float32(1, local[block], device)
            work = scratch.buffer(2, reference_block.numel(), device)
            energies = (_dot(reference_block, reference_block, work), _dot(local_block, local_block, work),
                        _dot(local_block, reference_block, work))
            torch.sub(local_block, reference_block, out=work)
            block_channel_error = work.square_().view(-1, columns).sum(0)
            channel_error = block_channel_error if channel_error is None else channel_error.add_(block_channel_error)
            own_block = scratch.flat_float32(1, own[block], device)  # the local block is no longer needed
            torch.sub(own_block, reference_block, out=work)
            block_sums.append(torch.stack((*energies, work.square_().sum())))
        reference_energy, local_energy, local_dot, propagated_error = (
            torch.stack(block_sums).to(torch.float64).sum(0).unbind()
        )
        channel_error = channel_error.to(torch.float64)
        sums = torch.stack((reference_energy, local_energy, channel_error.sum(), local_dot, propagated_error))
        self.sums = sums if self.sums is None else self.sums + sums
        self.channel_error = channel_error if self.channel_error is None else self.channel_error + channel_error

    def result(self, name: str, weight_relative_error: float | None) -> dict:
        values = self.sums.tolist() if self.sums is not None else [0.0] * len(self.SUMS)
        reference_energy, local_energy, local_error, local_dot, propagated_error = values
        relative_error = local_error / reference_energy if reference_energy > 0 else None
        norms = math.sqrt(local_energy * reference_energy)
        return {
            "name": name,
            "relative_error": relative_error,
            "relative_error_propagated": propagated_error / reference_energy if reference_energy > 0 else None,
            "cosine": max(-1.0, min(1.0, local_dot / norms)) if norms > 0 else None,
            # Infinite SQNR (no error at all) is reported as null: JSON has no infinity.
            "sqnr_db": 10 * math.log10(1 / relative_error) if relative_error else None,
            "max_error_channel": (
                int(self.channel_error.argmax()) if self.channel_error is not None and local_error > 0 else None
            ),
            "weight_relative_error": weight_relative_error,
            "ablation_kl": None,
        }


def weight_relative_errors(pairs: dict[str, tuple[torch.nn.Module, torch.nn.Module]]) -> dict[str, float | None]:
    """||W_c - W_r|| / ||W_r|| per (reference, candidate) module pair on the effective dense weights; None when
    one cannot be had or the shapes differ. All sums are read back together, at the end."""
    scratch = Float32Scratch()
    sums: dict[str, torch.Tensor | None] = {}
    device = _device_of(pairs)
    for name, (reference_unit, candidate_unit) in pairs.items():
        sums[name] = _pair_weight_sums(reference_unit, candidate_unit, scratch, device)
    read = {name: value.tolist() for name, value in sums.items() if value is not None}
    errors = {}
    for name in sums:
        difference, reference_norm = read.get(name, (0.0, 0.0))
        errors[name] = math.sqrt(difference / reference_norm) if reference_norm > 0 else None
    return errors


def _device_of(pairs) -> torch.device:
    for reference_unit, _ in pairs.values():
        for parameter in reference_unit.parameters():
            return parameter.device
    return torch.device("cpu")


def _pair_weight_sums(reference_unit, candidate_unit, scratch: Float32Scratch,
                      device: torch.device) -> torch.Tensor | None:
    # Dequantizing is whole-tensor work that every thread helps with; the block sums are not (serial_on_cpu).
    reference_weight = _effective_weight(reference_unit)
    candidate_weight = _effective_weight(candidate_unit)
    if reference_weight is None or candidate_weight is None or reference_weight.shape != candidate_weight.shape:
        return None
    with serial_on_cpu(device):
        return _weight_sums(reference_weight.reshape(reference_weight.shape[0], -1),
                            candidate_weight.reshape(candidate_weight.shape[0], -1), scratch)


def _weight_sums(reference_weight, candidate_weight, scratch: Float32Scratch) -> torch.Tensor:
    """float64 (sum of squared differences, sum of squared reference weights), float32 within each row block."""
    device, (rows, columns) = reference_weight.device, reference_weight.shape
    step = max(1, scratch.block_elements(device) // max(1, columns))
    block_sums = []
    for start in range(0, rows, step):
        block = slice(start, min(start + step, rows))
        reference_block = scratch.flat_float32(0, reference_weight[block], device)
        candidate_block = scratch.flat_float32(1, candidate_weight[block], device)
        work = scratch.buffer(2, reference_block.numel(), device)
        reference_energy = _dot(reference_block, reference_block, work)
        torch.sub(candidate_block, reference_block, out=work)
        block_sums.append(torch.stack((work.square_().sum(), reference_energy)))
    return torch.stack(block_sums).to(torch.float64).sum(0)


def _dot(first: torch.Tensor, second: torch.Tensor, work: torch.Tensor) -> torch.Tensor:
    """Dot product of two flat float32 blocks through `work`: torch's sum (pairwise on a CPU) is about ten times
    more accurate than a BLAS dot, whose running sums lose ~1e-6 over a block."""
    return torch.mul(first, second, out=work).sum()


def _effective_weight(module) -> torch.Tensor | None:
    """The dense (out, in) weight a Linear, bitsandbytes or LoRA layer applies; None when it cannot be had."""
    try:
        if hasattr(module, "base_layer") and hasattr(module, "lora_A"):
            weight = _effective_weight(module.base_layer)
            if weight is None:
                return None
            if not getattr(module, "merged", False) and not getattr(module, "disable_adapters", False):
                for adapter in module.active_adapters:
                    if adapter in module.lora_A:
                        weight = weight.float() + module.get_delta_weight(adapter).to(weight.device).float()
            return weight
        weight = module.weight
        quant_state = getattr(weight, "quant_state", None)
        if quant_state is not None:  # bitsandbytes Linear4bit (NF4 / FP4)
            if getattr(quant_state, "packing_format_for_cpu", False):
                return _dequantize_cpu_packed_4bit(weight.data, quant_state)
            import bitsandbytes.functional as bnb_functional

            return bnb_functional.dequantize_4bit(weight.data, quant_state)
        if weight.dtype == torch.int8:  # bitsandbytes Linear8bitLt: row-wise absmax scales in SCB
            scales = getattr(weight, "SCB", None)
            if scales is None:
                scales = getattr(getattr(module, "state", None), "SCB", None)
            if scales is None:
                return None
            return weight.data.float() * (scales.float().unsqueeze(-1) / 127.0)
        if not weight.dtype.is_floating_point:
            return None
        return weight.data
    except (AttributeError, RuntimeError, TypeError, ValueError, KeyError):
        return None


def _dequantize_cpu_packed_4bit(packed: torch.Tensor, quant_state) -> torch.Tensor:
    """Dense weight of a 4-bit layer bitsandbytes repacked for its AVX512-BF16 CPU kernel.

    Mirrors bitsandbytes.functional._convert_weight_packed_for_cpu (0.50): nibbles interleaved in blocks of 32
    output rows, absmax as (in / blocksize, out) bfloat16. Its own inverse is not used: it mutates the layer.
    """
    rows, half_columns = packed.shape
    block_rows = 32
    nibbles = packed.reshape(-1, 32)
    codes = torch.cat([nibbles & 0xF, (nibbles >> 4) & 0xF], dim=-1)
    codes = codes.reshape(rows // block_rows, half_columns, block_rows, 2).transpose(1, 2).reshape(rows, -1)
    absmax = quant_state.absmax.to(torch.float32).T  # (out, in / blocksize)
    values = quant_state.code.to(torch.float32)[codes.long()]
    return (values.reshape(rows, -1, quant_state.blocksize) * absmax.unsqueeze(-1)).reshape(rows, -1)
