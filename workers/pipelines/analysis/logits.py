"""The models' logits, as every phase of the analysis asks for them, and float64 log-probabilities from them."""

from __future__ import annotations

import torch

from workers.pipelines.errors import PipelineInputError

# Rows of float64 log-probabilities handled at once: about 64 MiB per tensor whatever the vocabulary.
LOG_PROB_ELEMENTS_PER_BLOCK = 1 << 23
# Rows of the token statistics handled at once: about 1 MiB per float64 temporary, so they stay in cache.
STATISTICS_ELEMENTS_PER_BLOCK = 1 << 17


def model_logits(model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                 last: int | None = None) -> torch.Tensor:
    """The model's logits; with `last`, those of the last `last` positions only (asked of the model as
    `logits_to_keep` when its forward takes it, which spares its output head the other positions)."""
    kwargs = {"input_ids": input_ids, "use_cache": False}
    if attention_mask is not None:
        kwargs["attention_mask"] = attention_mask
    if last is not None and _takes_logits_to_keep(model):
        kwargs["logits_to_keep"] = last
    logits = model(**kwargs).logits
    if last is not None and logits.shape[-2] != last:
        logits = logits[..., -last:, :]
    return logits


def _takes_logits_to_keep(model) -> bool:
    """Whether the model's forward names `logits_to_keep` (transformers' causal LMs; PEFT passes it through)."""
    import inspect

    candidates = [model]
    base = getattr(model, "get_base_model", None)
    if callable(base):
        candidates.append(base())
    for candidate in candidates:
        try:
            if "logits_to_keep" in inspect.signature(candidate.forward).parameters:
                return True
        except (TypeError, ValueError):
            continue
    return False


def finite_logits(model, input_ids: torch.Tensor, role: str, last: int | None = None) -> torch.Tensor:
    """Logits, or a PipelineInputError when the model is numerically broken (they could not be stored as JSON)."""
    logits = model_logits(model, input_ids, last=last)
    # The extremes are finite exactly when every logit is (aminmax propagates NaN): one pass, no mask tensor.
    if not bool(torch.isfinite(torch.stack(torch.aminmax(logits))).all()):
        raise PipelineInputError(
            f"The {role} model produced NaN or infinite logits on the evaluation text, so it is numerically "
            "broken (often a float16 overflow); quantize it again with compute_dtype bfloat16 or float32, or "
            "check its weights."
        )
    return logits


class ReferenceDistribution:
    """One sequence's reference next-token distributions, kept for the ablations, which each compare them with the
    logits of a pass that differs in one module: the per-row KL(P || Q), exact in float64 as from log-softmaxes.

    Held as P in float32 (the size of the logits it replaces), plus per row, in float64, the sum of those float32
    values and Σ P log P (log P from a float64 log-softmax). With x the ablated logits and lse their log-sum-exp,
        KL = Σ P log P − Σ P x + lse · Σ P
    is Σ P (log P − log Q) for the stored P exactly: weighting lse by the stored sum makes the float32 rounding of
    P a relative error (~6e-8) on each term rather than on the whole. An ablation then costs one float64
    log-sum-exp and one dot product per row instead of two log-softmaxes and the terms.
    """

    def __init__(self, logits: torch.Tensor, elements_per_block: int):
        rows = logits.reshape(-1, logits.shape[-1])
        self.elements_per_block = elements_per_block
        self.probabilities = torch.empty(rows.shape, dtype=torch.float32, device=rows.device)
        self.mass = torch.empty(rows.shape[0], dtype=torch.float64, device=rows.device)
        self.neg_entropy = torch.empty_like(self.mass)
        for block in self._blocks(rows.shape):
            log_p = torch.log_softmax(rows[block].to(torch.float64), dim=-1)
            stored = self.probabilities[block]
            stored.copy_(log_p.exp())
            p = stored.to(torch.float64)
            self.mass[block] = p.sum(dim=-1)
            # 0 · log 0 counts 0 (tokens the reference rules out: -inf logits)
            self.neg_entropy[block] = torch.where(p > 0, p * log_p, torch.zeros((), dtype=p.dtype,
                                                                             device=p.device)).sum(dim=-1)

    def _blocks(self, shape):
        rows, vocab = shape
        step = max(1, self.elements_per_block // vocab)
        return [slice(start, min(start + step, rows)) for start in range(0, rows, step)]

    def kl_rows(self, logits: torch.Tensor) -> torch.Tensor:
        """Per-row KL(P || Q) in float64 (on the logits' device), Q the softmax of `logits`; rounding negatives
        clamped to 0. A row whose Q rules out a token P allows is infinite; NaN logits give NaN."""
        rows = logits.reshape(-1, logits.shape[-1])
        kl = torch.empty_like(self.mass)
        for block in self._blocks(rows.shape):
            x = rows[block].to(torch.float64)
            p = self.probabilities[block].to(torch.float64)
            expected = torch.linalg.vecdot(p, x)
            if not bool(torch.isfinite(expected).all()):  # -inf logits: where P is 0 the term is 0, else -inf
                expected = torch.where(p > 0, p * x, torch.zeros((), dtype=x.dtype, device=x.device)).sum(dim=-1)
            kl[block] = self.neg_entropy[block] - expected + torch.logsumexp(x, dim=-1) * self.mass[block]
        return kl.clamp_min_(0.0)
