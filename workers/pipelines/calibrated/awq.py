"""AWQ (Lin et al., 2023): activation-aware per-input-channel scaling before round-to-nearest.

Input channels that carry large activations matter most; AWQ multiplies each weight column by s_j = mean|x_j|^α
before rounding and divides the activation by s_j after, so the important columns are rounded on a finer grid.
α is searched on a grid in [0, 1] per layer for the smallest output error on the calibration inputs, measured
from H = XᵀX (no activations kept). Because the registry stores weights dequantized, the division folds into the
weight itself (Ŵ = Q(W·diag(s))·diag(s)⁻¹) and no scale has to be folded into the preceding norm.
"""

from __future__ import annotations

import torch

from workers.pipelines.calibrated.gptq import round_to_nearest

ALPHA_STEPS = 20  # α in {0, 0.05, ..., 0.95}, AutoAWQ's search grid


def output_error(weight: torch.Tensor, candidate: torch.Tensor, hessian: torch.Tensor) -> torch.Tensor:
    delta = weight - candidate
    return torch.sum((delta @ hessian) * delta)


def awq_quantize_weight(weight: torch.Tensor, hessian: torch.Tensor, mean_abs_input: torch.Tensor, *, bits: int,
                        group_size: int, sym: bool) -> tuple[torch.Tensor, float]:
    """(the AWQ-quantized weight dequantized, the α chosen) given H = XᵀX and mean |x| per input channel."""
    W = weight.float()
    H = hessian.float()
    activation = mean_abs_input.float().clamp(min=1e-8)
    best, best_alpha, best_error = round_to_nearest(W, bits, group_size, sym), 0.0, None
    for step in range(ALPHA_STEPS):
        alpha = step / ALPHA_STEPS
        scales = activation.pow(alpha)
        scales = scales / torch.sqrt(scales.max() * scales.min())  # centred around 1, as in AutoAWQ
        candidate = round_to_nearest(W * scales, bits, group_size, sym) / scales
        error = output_error(W, candidate, H)
        if best_error is None or error < best_error:
            best, best_alpha, best_error = candidate, alpha, error
    return best, best_alpha
