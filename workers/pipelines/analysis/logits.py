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


def log_prob_blocks(reference_logits: torch.Tensor, candidate_logits: torch.Tensor,
                    elements: int = LOG_PROB_ELEMENTS_PER_BLOCK):
    """Yield (row slice, log P, log Q) in float64, about `elements` values at a time."""
    rows, vocab = reference_logits.shape
    step = max(1, elements // vocab)
    for start in range(0, rows, step):
        rows_slice = slice(start, min(start + step, rows))
        log_p = torch.log_softmax(reference_logits[rows_slice].to(torch.float64), dim=-1)
        if candidate_logits is reference_logits:
            log_q = log_p
        else:
            log_q = torch.log_softmax(candidate_logits[rows_slice].to(torch.float64), dim=-1)
        yield rows_slice, log_p, log_q


def kl_divergence(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """Row-wise KL(P || Q) in float64; exact 0 for identical rows, rounding negatives clamped to 0."""
    p = log_p.exp()
    terms = torch.where(p > 0, p * (log_p - log_q), torch.zeros((), dtype=log_p.dtype, device=log_p.device))
    return terms.sum(dim=-1).clamp_min(0.0)
