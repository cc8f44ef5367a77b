"""GPTQ (Frantar et al., 2022): the per-layer algorithm and the uniform grid it rounds to.

H = XᵀX of a layer's calibration inputs is damped, inverted by Cholesky, and the columns are rounded in order,
each column's rounding error spread over the columns not yet rounded (weighted by the inverse Hessian), so the
layer's output on the calibration inputs moves as little as the grid allows. The pipeline around it is in
`run.py`.
"""

from __future__ import annotations

import torch

from workers.pipelines.errors import PipelineInputError

BLOCK_COLUMNS = 128  # columns updated together (the paper's lazy batch); a multiple of every group size


def grid_parameters(weight: torch.Tensor, bits: int, sym: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row (scale, zero) of a uniform `bits`-bit grid covering each row of weight (and 0)."""
    maxq = 2 ** bits - 1
    low = torch.minimum(weight.min(dim=1).values, torch.zeros(1, device=weight.device))
    high = torch.maximum(weight.max(dim=1).values, torch.zeros(1, device=weight.device))
    if sym:
        high = torch.maximum(low.abs(), high)
        low = torch.where(low < 0, -high, low)
    flat = (low == 0) & (high == 0)
    low, high = torch.where(flat, -1.0, low), torch.where(flat, 1.0, high)
    scale = (high - low) / maxq
    zero = torch.full_like(scale, (maxq + 1) / 2) if sym else torch.round(-low / scale)
    return scale.unsqueeze(1), zero.unsqueeze(1)


def to_grid(weight: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int) -> torch.Tensor:
    """weight rounded to the nearest point of the grid, dequantized."""
    q = torch.clamp(torch.round(weight / scale) + zero, 0, 2 ** bits - 1)
    return scale * (q - zero)


def round_to_nearest(weight: torch.Tensor, bits: int, group_size: int, sym: bool) -> torch.Tensor:
    """The same grid without calibration: each group of columns rounded to nearest (the baseline GPTQ beats)."""
    return round_to_nearest_grid(weight, bits, group_size, sym)[0]


def round_to_nearest_grid(weight: torch.Tensor, bits: int, group_size: int, sym: bool,
                          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(weight rounded to nearest per group of columns, dequantized [out, in], the grids' scales and zero points
    [out, groups]): the same triple gptq_quantize_weight returns, so the result packs the same way."""
    weight = weight.float()
    columns = weight.shape[1]
    size = columns if group_size == -1 else group_size
    out = torch.empty_like(weight)
    groups = -(-columns // size)
    scales = torch.zeros(weight.shape[0], groups, device=weight.device)
    zeros = torch.zeros_like(scales)
    for group, start in enumerate(range(0, columns, size)):
        part = weight[:, start:start + size]
        scale, zero = grid_parameters(part, bits, sym)
        out[:, start:start + size] = to_grid(part, scale, zero, bits)
        scales[:, group], zeros[:, group] = scale[:, 0], zero[:, 0]
    return out, scales, zeros


def gptq_quantize_weight(weight: torch.Tensor, hessian: torch.Tensor, *, bits: int, group_size: int,
                         damping: float, sym: bool, desc_act: bool,
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(the GPTQ-quantized weight dequantized [out, in], its grid's scales and zero points [out, groups]) given
    H = XᵀX of its inputs, [in, in]. Group g always covers columns g·group_size onwards in the weight's own order,
    as the packed formats expect: with act-order the grids are fixed up front ("static groups") and only the
    order in which columns are rounded changes."""
    W = weight.float().clone()
    H = hessian.float().clone()
    columns = W.shape[1]
    dead = torch.diag(H) == 0  # inputs that were always zero: their weights cannot matter
    H[dead, dead] = 1
    W[:, dead] = 0
    permutation = None
    if desc_act:  # act-order: the columns with the largest activations first, while the most freedom is left
        permutation = torch.argsort(torch.diag(H), descending=True)
        W, H = W[:, permutation], H[permutation][:, permutation]
    H += damping * torch.mean(torch.diag(H)) * torch.eye(columns, device=H.device)
    try:
        Hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)
    except torch.linalg.LinAlgError as error:
        raise PipelineInputError(f"The calibration Hessian is not positive definite even after damping "
                                 f"({error}); raise damping (e.g. 0.1) or use more calibration samples.") from None
    Q = torch.zeros_like(W)
    size = columns if group_size == -1 else group_size
    groups = -(-columns // size)
    scales = torch.zeros(W.shape[0], groups, device=W.device)
    zeros = torch.zeros_like(scales)
    if permutation is not None or group_size == -1:
        original = W if permutation is None else W[:, torch.argsort(permutation)]
        for group in range(groups):
            scale, zero = grid_parameters(original[:, group * size:(group + 1) * size], bits, sym)
            scales[:, group], zeros[:, group] = scale[:, 0], zero[:, 0]
    order = permutation if permutation is not None else torch.arange(columns, device=W.device)
    for first in range(0, columns, BLOCK_COLUMNS):
        last = min(first + BLOCK_COLUMNS, columns)
        W1 = W[:, first:last].clone()
        Q1 = torch.zeros_like(W1)
        E1 = torch.zeros_like(W1)
        H1 = Hinv[first:last, first:last]
        for i in range(last - first):
            if permutation is None and group_size != -1 and (first + i) % group_size == 0:
                # The group's grid from its current (error-corrected) values.
                scale, zero = grid_parameters(W1[:, i:i + group_size], bits, sym)
                group = (first + i) // group_size
                scales[:, group], zeros[:, group] = scale[:, 0], zero[:, 0]
            group = int(order[first + i]) // size
            w = W1[:, i]
            q = to_grid(w.unsqueeze(1), scales[:, group:group + 1], zeros[:, group:group + 1], bits).squeeze(1)
            Q1[:, i] = q
            error = (w - q) / H1[i, i]
            W1[:, i:] -= error.unsqueeze(1) @ H1[i, i:].unsqueeze(0)
            E1[:, i] = error
        Q[:, first:last] = Q1
        W[:, last:] -= E1 @ Hinv[first:last, last:]
    if permutation is not None:
        Q = Q[:, torch.argsort(permutation)]
    return Q, scales, zeros


def relative_output_error(weight: torch.Tensor, quantized: torch.Tensor, hessian: torch.Tensor) -> float:
    """||WX − ŴX||² / ||WX||² over the calibration inputs, computed from H = XᵀX alone."""
    W = weight.float()
    delta = W - quantized.float()
    error = torch.sum((delta @ hessian) * delta)
    energy = torch.sum((W @ hessian) * W)
    return float(error / energy) if energy > 0 else 0.0


