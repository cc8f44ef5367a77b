"""Write a GPTQ or AWQ result as a compressed-tensors "pack-quantized" checkpoint: the format vLLM and SGLang load
natively.

compressed-tensors' own scheme dataclasses, parameter layout and compressor do the work (int4/int8 codes packed
into int32 `weight_packed`, per-group `weight_scale`, `weight_shape`); we only hand it the grids GPTQ or AWQ
rounded to, so the codes it computes are exactly theirs. AWQ's scales are already folded into the preceding norms
and Linears (`awq.py`), which are saved as ordinary full-precision tensors, so nothing AWQ-specific is stored.
config.json then carries `quantization_config` with `quant_method: "compressed-tensors"`, and
`AutoModelForCausalLM.from_pretrained(dir)` loads it (decompressing on the first forward pass) wherever
compressed-tensors is installed.

Not packed (written dequantized instead, see `unpackable_reason`):
- asymmetric grids: compressed-tensors 0.20 packs their zero points into int32 on save but, building the empty
  model for transformers 5.23's loader, leaves the zero-point parameter unpacked, so from_pretrained refuses the
  checkpoint with a size mismatch;
- layers whose input width the group size does not divide (the format and vLLM's kernels need whole groups);
- AWQ on an architecture whose preceding ops we cannot fold the scales into (`awq.awq_fold_problem`): its scales
  are then folded into each weight (Q(W·s)·s⁻¹), which no uniform per-group grid represents.
"""

from __future__ import annotations

from pathlib import Path

import torch

from workers.pipelines.calibrated.spec import CalibratedQuantizeSpec

FORMAT = "pack-quantized"


def unpackable_reason(spec: CalibratedQuantizeSpec, in_features: dict[str, int], *,
                      awq_unfoldable: str | None = None) -> str | None:
    """Why spec's result on the planned layers (name -> input width) cannot be written packed (then it is
    written dequantized), or None. awq_unfoldable: why AWQ's scales could not be folded into the preceding ops."""
    if spec.group_size != -1:
        uneven = sorted(name for name, width in in_features.items() if width % spec.group_size)
        if uneven:
            return (f"{len(uneven)} layer(s) ({uneven[0]}, ...) have an input width that group_size "
                    f"{spec.group_size} does not divide, which compressed-tensors and the serving kernels require")
    if spec.method == "awq" and awq_unfoldable:
        return (f"{awq_unfoldable}; its per-input-channel scales are folded into each weight instead, which a "
                "per-group grid cannot represent")
    if not spec.sym:
        return ("compressed-tensors 0.20 cannot reload packed asymmetric zero points under transformers 5.23 "
                "(size mismatch on load)")
    return None


def quantization_config(spec: CalibratedQuantizeSpec, ignore: list[str]):
    """The compressed-tensors QuantizationConfig of spec: one group, int weights on every Linear but `ignore`."""
    from compressed_tensors.quantization import QuantizationArgs, QuantizationConfig, QuantizationScheme

    grouped = spec.group_size != -1
    weights = QuantizationArgs(
        num_bits=spec.bits,
        type="int",
        symmetric=spec.sym,
        strategy="group" if grouped else "channel",
        group_size=spec.group_size if grouped else None,
        # act-order changed only the order GPTQ rounded the columns in; groups stay in the weight's own order.
        actorder="weight" if spec.desc_act else None,
    )
    return QuantizationConfig(
        config_groups={"group_0": QuantizationScheme(targets=["Linear"], weights=weights)},
        ignore=sorted(ignore),
    )


def pack_model(model, grids: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
               spec: CalibratedQuantizeSpec, ignore: list[str]):
    """Replace each quantized Linear's weight by its packed form, in place; return the ModelCompressor whose
    `update_config(dir)` writes the quantization_config after model.save_pretrained(dir).

    grids: per module name, (the dequantized weight in float32, scales [out, groups], zero points [out, groups]
    on GPTQ's unsigned scale 0..2^bits-1).
    """
    from compressed_tensors.compressors import ModelCompressor
    from compressed_tensors.quantization import apply_quantization_config

    apply_quantization_config(model, quantization_config(spec, ignore))
    modules = dict(model.named_modules())
    offset = 2 ** (spec.bits - 1)  # compressed-tensors' codes are signed: -2^(b-1) .. 2^(b-1)-1
    for name, (dequantized, scales, zeros) in grids.items():
        module = modules[name]
        module.weight_scale.data.copy_(scales.to(module.weight_scale.dtype))
        if not spec.sym:
            module.weight_zero_point.data.copy_((zeros - offset).to(module.weight_zero_point.dtype))
        # float32, not the checkpoint's bf16: the compressor recomputes the codes as round(w / scale), which is
        # exact only on the unrounded grid values (8-bit codes reach ±128).
        module.weight.data = dequantized.float()
    compressor = ModelCompressor.from_pretrained_model(model, quantization_format=FORMAT)
    compressor.compress_model(model)
    return compressor


def write_packed(model, compressor, out_dir: Path, *, max_shard_size) -> None:
    model.save_pretrained(str(out_dir), safe_serialization=True, max_shard_size=max_shard_size)
    compressor.update_config(str(out_dir))
