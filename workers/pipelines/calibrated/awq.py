"""AWQ (Lin et al., 2023): activation-aware per-input-channel scaling before round-to-nearest.

Input channels that carry large activations matter most; AWQ multiplies each weight column by s_j = mean|x_j|^α
before rounding and divides the activation by s_j, so the important columns are rounded on a finer grid. α is
searched on a grid in [0, 1) for the smallest output error on the calibration inputs, measured from H = XᵀX (no
activations kept).

For Llama-family decoder layers the division is folded into the operation that produces the input, as AutoAWQ
does: one s per group of Linears reading the same input (q/k/v after input_layernorm, o after v_proj, gate/up after
post_attention_layernorm, down after up_proj); the members' columns are multiplied by s and the preceding RMSNorm
weight or Linear rows divided by it, so the model computes the same function. Each member is then rounded to
nearest on a plain uniform per-group grid of its scaled weight, which packs like GPTQ's (`packing.py`).

Other architectures (and layers with no preceding op to fold into) fall back to folding the division into each
weight, Ŵ = Q(W·diag(s))·diag(s)⁻¹ with α per layer: no uniform per-group grid represents that, so it is written
dequantized.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from workers.pipelines.calibrated.gptq import round_to_nearest

ALPHA_STEPS = 20  # α in {0, 0.05, ..., 0.95}, AutoAWQ's search grid
# Decoder layers whose module names and plain RMSNorm (output = normalized x · weight) we know; Gemma's norm
# multiplies by (1 + weight), where dividing the weight by s would not divide the output.
FOLDABLE_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")


def output_error(weight: torch.Tensor, candidate: torch.Tensor, hessian: torch.Tensor) -> torch.Tensor:
    delta = weight - candidate
    return torch.sum((delta @ hessian) * delta)


def activation_scales(mean_abs_input: torch.Tensor, alpha: float) -> torch.Tensor:
    """s = mean|x|^α per input channel, centred around 1 as in AutoAWQ (α = 0 gives s = 1)."""
    scales = mean_abs_input.float().pow(alpha).clamp(min=1e-4)  # AutoAWQ's floor: dead channels stay finite
    return scales / torch.sqrt(scales.max() * scales.min())


def search_group_scales(weights: list[torch.Tensor], hessian: torch.Tensor, mean_abs_input: torch.Tensor, *,
                        bits: int, group_size: int, sym: bool) -> tuple[torch.Tensor, float]:
    """(s, α) for Linears that read the same input (one H = XᵀX, one mean |x|): the α whose s makes the summed
    output error of rounding every W·diag(s) to nearest, measured back in the original input space, smallest."""
    H = hessian.float()
    originals = [weight.float() for weight in weights]
    best_scales, best_alpha, best_error = None, 0.0, None
    for step in range(ALPHA_STEPS):
        alpha = step / ALPHA_STEPS
        scales = activation_scales(mean_abs_input, alpha)
        error = sum(output_error(W, round_to_nearest(W * scales, bits, group_size, sym) / scales, H)
                    for W in originals)
        if best_error is None or error < best_error:
            best_scales, best_alpha, best_error = scales, alpha, error
    return best_scales, best_alpha


def awq_quantize_weight(weight: torch.Tensor, hessian: torch.Tensor, mean_abs_input: torch.Tensor, *, bits: int,
                        group_size: int, sym: bool) -> tuple[torch.Tensor, float]:
    """The fallback where no preceding op takes the scales: (Q(W·diag(s))·diag(s)⁻¹, the α chosen) for one
    Linear given H = XᵀX and mean |x| per input channel."""
    scales, alpha = search_group_scales([weight], hessian, mean_abs_input, bits=bits, group_size=group_size,
                                        sym=sym)
    return round_to_nearest(weight.float() * scales, bits, group_size, sym) / scales, alpha


@dataclass(frozen=True)
class ScaleGroup:
    """Linears that read one input, and the op producing that input (a norm or a Linear), which takes the
    division by their shared scales."""

    previous: str
    members: tuple[str, ...]


def decoder_scale_groups(modules: dict, block: str) -> tuple[list[ScaleGroup], list[str]]:
    """(the scale groups of a Llama-family decoder layer, in the order AWQ searches and folds them; the Linears
    that get no scale and are rounded as they are)."""
    attention, mlp = f"{block}.self_attn", f"{block}.mlp"
    groups = [ScaleGroup(f"{block}.input_layernorm",
                         (f"{attention}.q_proj", f"{attention}.k_proj", f"{attention}.v_proj"))]
    unscaled = []
    v_proj, o_proj = modules.get(f"{attention}.v_proj"), modules.get(f"{attention}.o_proj")
    # With grouped-query attention each v_proj row feeds several heads, i.e. several o_proj input channels that
    # would each want their own scale; AutoAWQ leaves o_proj unscaled there, and so do we.
    if isinstance(v_proj, torch.nn.Linear) and isinstance(o_proj, torch.nn.Linear) \
            and v_proj.out_features == o_proj.in_features:
        groups.append(ScaleGroup(f"{attention}.v_proj", (f"{attention}.o_proj",)))
    else:
        unscaled.append(f"{attention}.o_proj")
    groups += [ScaleGroup(f"{block}.post_attention_layernorm", (f"{mlp}.gate_proj", f"{mlp}.up_proj")),
               ScaleGroup(f"{mlp}.up_proj", (f"{mlp}.down_proj",))]
    return groups, unscaled


def _takes_scales(previous, width: int) -> bool:
    """Whether dividing previous's weight (and bias) by s divides its `width` outputs by s."""
    if isinstance(previous, torch.nn.Linear):
        return previous.out_features == width
    weight = getattr(previous, "weight", None)
    return (isinstance(weight, torch.Tensor) and weight.dim() == 1 and weight.numel() == width
            and getattr(previous, "bias", None) is None)


def awq_fold_problem(model_type: str | None, modules: dict, blocks: list[tuple[str, list[str]]]) -> str | None:
    """Why AWQ's scales cannot be folded into the preceding ops of these planned Linears (block, names), or None
    when every one of them belongs to a scale group (or is an o_proj left unscaled) with a preceding op to fold
    into."""
    if model_type not in FOLDABLE_MODEL_TYPES:
        return (f"AWQ scales can be folded into the preceding norms only for {', '.join(FOLDABLE_MODEL_TYPES[:-1])} "
                f"and {FOLDABLE_MODEL_TYPES[-1]} decoder layers; this model is {model_type or 'of no known type'}")
    for block, names in blocks:
        if not block:
            return f"{names[0]} is outside the decoder layers, with no preceding norm to fold AWQ scales into"
        groups, unscaled = decoder_scale_groups(modules, block)
        grouped = {member for group in groups for member in group.members} | set(unscaled)
        stray = [name for name in names if name not in grouped]
        if stray:
            return (f"{stray[0]} is not one of a decoder layer's q/k/v/o/gate/up/down projections, so AWQ has no "
                    "preceding op to fold its scales into")
        for group in groups:
            if not set(group.members) & set(names):
                continue
            members = [modules.get(member) for member in group.members]
            if not all(isinstance(member, torch.nn.Linear) for member in members):
                return f"{block} lacks one of {', '.join(group.members)}, which share the scales AWQ folds"
            width = members[0].in_features
            if any(member.in_features != width for member in members) \
                    or not _takes_scales(modules.get(group.previous), width):
                return (f"{group.previous} is not a norm or Linear whose output AWQ's scales for "
                        f"{', '.join(group.members)} can be folded into")
    return None


def fold_scales(previous, members: list[torch.nn.Linear], scales: torch.Tensor) -> None:
    """Multiply the members' weight columns by s and divide the output of `previous` (an RMSNorm's weight, or a
    Linear's rows and bias) by s, in place: the model computes the same function (up to its dtype's rounding)."""
    s = scales.float()
    with torch.no_grad():
        for member in members:
            member.weight.data = (member.weight.data.float() * s.to(member.weight.device)).to(member.weight.dtype)
        s = s.to(previous.weight.device)
        if isinstance(previous, torch.nn.Linear):
            previous.weight.data = (previous.weight.data.float() / s.unsqueeze(1)).to(previous.weight.dtype)
            if previous.bias is not None:
                previous.bias.data = (previous.bias.data.float() / s).to(previous.bias.dtype)
        else:
            previous.weight.data = (previous.weight.data.float() / s).to(previous.weight.dtype)


@dataclass
class FoldedBlock:
    """What folding AWQ's scales did to a decoder layer's planned Linears."""

    alphas: dict[str, float] = field(default_factory=dict)  # the α of each one's group (0: unscaled)
    folded_into: dict[str, str | None] = field(default_factory=dict)  # the op that took its group's ÷s
    column_scales: dict[str, torch.Tensor] = field(default_factory=dict)  # its columns were multiplied by these
    row_scales: dict[str, torch.Tensor] = field(default_factory=dict)  # its rows were divided by these (as a
    # preceding op of a later group)

    def in_original_space(self, name: str, weight: torch.Tensor) -> torch.Tensor:
        """A (rounded) weight of the folded layer mapped back to its original input and output: what it means
        to the unfolded model, where its output error is measured."""
        weight = weight.float()
        if name in self.row_scales:
            weight = weight * self.row_scales[name].to(weight.device).unsqueeze(1)
        if name in self.column_scales:
            weight = weight / self.column_scales[name].to(weight.device)
        return weight


def fold_block_scales(modules: dict, block: str, planned: list[str], hessians: dict[str, torch.Tensor],
                      mean_abs: dict[str, torch.Tensor], *, bits: int, group_size: int, sym: bool) -> FoldedBlock:
    """Search and fold each scale group of one decoder layer in turn (a group with no planned member is left
    alone); members kept in full precision are scaled too, so the model's function is unchanged. Rounding the
    planned Linears is the caller's, afterwards, on their scaled weights."""
    groups, unscaled = decoder_scale_groups(modules, block)
    folded = FoldedBlock()
    for group in groups:
        quantized = [member for member in group.members if member in planned]
        if not quantized:
            continue
        # The members read one input: any one's H and mean |x| is the group's.
        scales, alpha = search_group_scales([modules[member].weight.data for member in quantized],
                                            hessians[quantized[0]], mean_abs[quantized[0]], bits=bits,
                                            group_size=group_size, sym=sym)
        fold_scales(modules[group.previous], [modules[member] for member in group.members], scales)
        for member in quantized:
            folded.alphas[member], folded.folded_into[member] = alpha, group.previous
            folded.column_scales[member] = scales
        if group.previous in planned:
            folded.row_scales[group.previous] = scales
    for name in unscaled:
        if name in planned:
            folded.alphas[name], folded.folded_into[name] = 0.0, None
    return folded
