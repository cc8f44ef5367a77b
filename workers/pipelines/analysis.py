"""Error analysis of a candidate model version against a reference (llama.cpp's KL-divergence statistics).

Both models read the same tokens of an evaluation dataset; for every scored token t with next token y we take
P = softmax(reference logits) and Q = softmax(candidate logits), computed in float64, and accumulate

    KL_t = sum_v P_v (log P_v - log Q_v)      delta_p_t = Q(y) - P(y)      NLL_t = -log P(y), -log Q(y)
    same top-1 token, |top-k(P) ∩ top-k(Q)| / k

on the fly: nothing grows with the token count (Welford moments, exact min/max, a fixed-size quantile sketch
and fixed-edge chart histograms), so 10^6 tokens cost the memory of one batch of logits.

Chunking follows llama.cpp's `perplexity --kl-divergence`: the dataset's texts are tokenized (each whole,
without special tokens, lazily as chunks are needed) and joined with EOS; the token stream is cut into chunks
of `context_length` tokens (the first one BOS when the tokenizer has one); only the second half of each chunk
is scored (logits at positions n_ctx//2 .. n_ctx-2 predicting the next token), so every scored token has at
least n_ctx/2 tokens of context. A chunk of 512 therefore scores 255 tokens. `max_tokens` caps the tokens fed
to each model (chunks x context_length; `tokens` in the result counts the scored ones); a trailing partial
chunk is dropped, and a dataset shorter than one context is analysed as a single shorter chunk.

Multiple-choice records score each choice by the summed log-probability of its tokens after the prompt
(a space is put between them unless one side has it, as lm-evaluation-harness does); ties go to the first
choice. A flip is any changed answer (Dutta et al. 2024, "Accuracy is not all you need").

Percentiles come from a signed logarithmic-bucket sketch (DDSketch, Masson et al. 2019): each order statistic
is known to within 0.5 % relative error (values below 1e-12 in magnitude count as 0), and a percentile is
numpy's linear interpolation between two such estimates. Hence |estimate - exact| <=
0.005 * ((1 - f)|x_lo| + f|x_hi|) + 1e-12, where x_lo, x_hi are the two order statistics numpy interpolates
between with weight f: 0.5 % relative error whenever those two have the same sign (always, for KL). The
minimum and maximum are exact.

The per-layer phase (hooks on every Linear, bitsandbytes and LoRA layers included) runs on the first
`layer_tokens` tokens of the first chunk(s) only, every position counted, because it holds the reference's
Linear inputs and outputs for one sequence at a time and runs one extra forward per ablated module. The
ablations reuse the reference logits of the capture pass and its decoder-layer outputs (held for all layer
sequences, like those logits): the layers before the ablated module replay their recorded outputs, so only the
rest of the model runs again, with results identical to a whole pass.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from workers.pipelines.errors import PipelineInputError

MIN_MAX_TOKENS = 16
MAX_MAX_TOKENS = 1_000_000
MAX_TOP_K = 100
DEFAULT_CONTEXT_LENGTH = 512
MAX_CONTEXT_LENGTH = 131_072
MAX_LAYER_TOKENS = 65_536
MAX_ABLATION_TOP_N = 64
MAX_BATCH_SIZE = 256
# llama.cpp needs two scored tokens per chunk for its statistics; a chunk of n tokens scores n - 1 - n // 2.
MIN_SCORED_PER_CHUNK = 2
MIN_CHUNK_LENGTH = 6

PERCENTILE_RELATIVE_ACCURACY = 0.005
PERCENTILE_ZERO_BELOW = 1e-12
PERCENTILE_LARGEST = 1e4
# (key in the result, fraction) in the order the API lists them; min and max are exact.
PERCENTILES = (
    ("p0_1", 0.001),
    ("p1", 0.01),
    ("p5", 0.05),
    ("p10", 0.10),
    ("median", 0.50),
    ("p90", 0.90),
    ("p95", 0.95),
    ("p99", 0.99),
    ("p99_9", 0.999),
)

# Fixed chart edges, so counts are exact: KL in quarter decades from 1e-8 to 100 after a [0, 1e-8) bin,
# delta-p in 0.02-wide bins over [-1, 1]. Values beyond the last edge are counted in the last bin.
KL_CHART_EDGES = np.concatenate(([0.0], np.logspace(-8, 2, 41)))
DELTA_P_CHART_EDGES = np.linspace(-1.0, 1.0, 101)

# Rows of float64 log-probabilities handled at once: about 64 MiB per tensor whatever the vocabulary.
LOG_PROB_ELEMENTS_PER_BLOCK = 1 << 23
# Rows of the token statistics handled at once: about 1 MiB per float64 temporary, so they stay in cache.
STATISTICS_ELEMENTS_PER_BLOCK = 1 << 17

PROBE_TEXT = "The bank's Q3 net interest margin rose 0.25% to 3.1 %; café naïve 2024-01-31."

ProgressCallback = Callable[[int, str], None]


def _ignore_progress(percent: int, message: str) -> None:
    return None


@dataclass(frozen=True)
class AnalysisSpec:
    """What to analyse: token budget, top-k, context, and the bounds of the per-layer phase."""

    max_tokens: int = 4096
    top_k: int = 5
    context_length: int | None = None  # None: min(model's max positions, 512)
    layer_tokens: int = 256  # tokens of the first chunk(s) the per-layer phase runs on; 0 skips it
    ablation_top_n: int = 4  # most sensitive modules (by local relative error) that get ablation_kl
    batch_size: int = 1  # chunks per forward pass


def validate_analysis_spec(spec: AnalysisSpec) -> None:
    """Raise PipelineInputError for settings out of range; cheap enough to call when the request arrives."""
    checks = (
        ("max_tokens", spec.max_tokens, MIN_MAX_TOKENS, MAX_MAX_TOKENS),
        ("top_k", spec.top_k, 1, MAX_TOP_K),
        ("layer_tokens", spec.layer_tokens, 0, MAX_LAYER_TOKENS),
        ("ablation_top_n", spec.ablation_top_n, 0, MAX_ABLATION_TOP_N),
        ("batch_size", spec.batch_size, 1, MAX_BATCH_SIZE),
    )
    if spec.context_length is not None:
        checks += (("context_length", spec.context_length, MIN_CHUNK_LENGTH, MAX_CONTEXT_LENGTH),)
    for name, value, low, high in checks:
        if isinstance(value, bool) or not isinstance(value, int):
            raise PipelineInputError(f"{name} must be a whole number between {low:,} and {high:,}; got {value!r}.")
        if not low <= value <= high:
            raise PipelineInputError(f"{name} must be between {low:,} and {high:,}; got {value:,}.")


def analyse_versions(
    reference_dir: Path,
    candidate_dir: Path,
    texts: list[str],
    spec: AnalysisSpec,
    *,
    mcq: list[dict] | None = None,
    reference_adapter_dir: Path | None = None,
    candidate_adapter_dir: Path | None = None,
    report: ProgressCallback = _ignore_progress,
) -> dict:
    """Load two version directories (with optional LoRA adapters) and analyse the candidate against the reference."""
    from workers.pipelines.loading import load_causal_lm, pick_device

    validate_analysis_spec(spec)
    if mcq:
        _check_mcq_records(mcq)
    device = pick_device()
    report(0, "Loading the reference model")
    reference_model, reference_tokenizer = load_causal_lm(
        Path(reference_dir), adapter_dir=reference_adapter_dir, device=device
    )
    same_version = _same_path(reference_dir, candidate_dir) and _same_path(
        reference_adapter_dir, candidate_adapter_dir
    )
    if same_version:
        # One copy serves as both: the analysis of a version against itself is then exactly zero by construction.
        candidate_model, candidate_tokenizer = reference_model, reference_tokenizer
    else:
        report(5, "Loading the candidate model")
        candidate_model, candidate_tokenizer = load_causal_lm(
            Path(candidate_dir), adapter_dir=candidate_adapter_dir, device=device
        )
        _check_same_tokenizer(reference_tokenizer, candidate_tokenizer)
    return analyse_models(
        reference_model,
        candidate_model,
        reference_tokenizer,
        texts,
        spec,
        mcq=mcq,
        report=_scaled_progress(report, 10, 100),
    )


def analyse_models(
    reference_model,
    candidate_model,
    tokenizer,
    texts: list[str],
    spec: AnalysisSpec,
    *,
    mcq: list[dict] | None = None,
    report: ProgressCallback = _ignore_progress,
) -> dict:
    """Analyse two loaded causal LMs sharing `tokenizer`; return the statistics dict described in the module doc."""
    validate_analysis_spec(spec)
    if mcq:
        _check_mcq_records(mcq)
    started = time.perf_counter()
    reference_model.eval()
    candidate_model.eval()
    vocab_size = _check_same_vocabulary(reference_model, candidate_model)
    if spec.top_k > vocab_size:
        raise PipelineInputError(f"top_k={spec.top_k} is larger than the vocabulary ({vocab_size} tokens); lower it.")
    device = _model_device(reference_model)

    context_length = _context_length(spec, reference_model)

    def evaluation_chunks():
        return _EvaluationChunks(tokenizer, texts, context_length=context_length, max_tokens=spec.max_tokens,
                                 vocab_size=vocab_size)

    chunks = evaluation_chunks()  # tokenizes the first chunk now, so a too-short dataset fails before any work

    with torch.no_grad():
        # Weights are compared before any forward pass: on CPUs with AVX512-BF16, bitsandbytes repacks 4-bit
        # weights (and rounds their scales to bfloat16) at the first inference call.
        weight_errors = _weight_errors(reference_model, candidate_model) if spec.layer_tokens > 0 else {}
        token_statistics = _score_chunks(
            reference_model, candidate_model, chunks, spec, device, _scaled_progress(report, 0, 60)
        )
        flips = None
        if mcq:
            flips = _count_flips(reference_model, candidate_model, tokenizer, mcq, context_length, device,
                                 _scaled_progress(report, 60, 70))
        layers = []
        if spec.layer_tokens > 0:
            layer_sequences = _layer_sequences(evaluation_chunks(), spec.layer_tokens)
            layers = _layer_errors(reference_model, candidate_model, layer_sequences, weight_errors,
                                   spec.ablation_top_n, device, _scaled_progress(report, 70, 100))
    statistics = token_statistics.result()
    result = {
        "tokens": statistics.pop("tokens"),
        "seconds": time.perf_counter() - started,
        **statistics,
        "flips": flips,
        "layers": layers,
        "histograms": token_statistics.histograms(),
        "device": str(device),
    }
    report(100, f"Analysed {result['tokens']:,} tokens")
    return result


# --- Evaluation tokens ------------------------------------------------------------------------------------------


class _EvaluationChunks:
    """The chunks to score, cut as llama.cpp does (see the module docstring), tokenized as they are read.

    Only the current chunk and the text being read are held, so memory does not grow with max_tokens.
    """

    def __init__(self, tokenizer, texts: list[str], *, context_length: int, max_tokens: int, vocab_size: int):
        self._bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
        self._eos = tokenizer.eos_token_id
        self._tokenizer = tokenizer
        self._texts = iter(texts)
        self._vocab_size = vocab_size
        self._buffer: list[int] = []
        self._started = False
        self.length = min(context_length, max_tokens)
        self.planned = max_tokens // self.length
        self._per_chunk = self.length - len(self._bos)

        self._fill(self._per_chunk)
        if len(self._buffer) < self._per_chunk:
            # Shorter than one context: one shorter chunk, as long as it still scores enough tokens.
            self._per_chunk = len(self._buffer)
            self.length = self._per_chunk + len(self._bos)
            self.planned = 1
        if _scored_per_chunk(self.length) < MIN_SCORED_PER_CHUNK:
            needed = MIN_CHUNK_LENGTH - len(self._bos)
            raise PipelineInputError(
                f"The evaluation dataset gave {len(self._buffer)} tokens; at least {needed} are needed "
                f"({MIN_SCORED_PER_CHUNK} scored tokens in the second half of a chunk). Upload a dataset with "
                "more text (a few thousand tokens give stable statistics)."
            )

    def _fill(self, wanted: int) -> None:
        while len(self._buffer) < wanted:
            text = next(self._texts, None)
            if text is None:
                return
            if not isinstance(text, str) or not text.strip():
                continue
            if self._started and self._eos is not None:
                self._buffer.append(self._eos)
            self._started = True
            self._buffer.extend(self._tokenizer.encode(text, add_special_tokens=False))

    def __iter__(self):
        for _ in range(self.planned):
            self._fill(self._per_chunk)
            if len(self._buffer) < self._per_chunk:
                return  # a trailing partial chunk is dropped, as llama.cpp does
            chunk = torch.tensor(self._bos + self._buffer[: self._per_chunk], dtype=torch.long)
            del self._buffer[: self._per_chunk]
            largest = int(chunk.max())
            if largest >= self._vocab_size:
                raise PipelineInputError(
                    f"The tokenizer produced token id {largest} but the model has only {self._vocab_size:,} "
                    "tokens; the tokenizer does not belong to this model."
                )
            yield chunk


def _context_length(spec: AnalysisSpec, model) -> int:
    """The chunk length: the spec's, else min(model's positions, 512); never beyond the model's positions."""
    positions = _max_positions(model)
    if spec.context_length is None:
        return min(positions or DEFAULT_CONTEXT_LENGTH, DEFAULT_CONTEXT_LENGTH)
    if positions is not None and spec.context_length > positions:
        raise PipelineInputError(
            f"context_length={spec.context_length} exceeds the model's {positions} positions; use {positions} "
            "or less."
        )
    return spec.context_length


def _scored_per_chunk(n_ctx: int) -> int:
    return n_ctx - 1 - n_ctx // 2


def _layer_sequences(chunks: "_EvaluationChunks", layer_tokens: int) -> list[torch.Tensor]:
    """The first `layer_tokens` tokens of the evaluation chunks, as (1, length) sequences."""
    sequences = []
    remaining = layer_tokens
    for chunk in chunks:
        if remaining < 2:
            break
        sequence = chunk[:remaining]
        sequences.append(sequence.unsqueeze(0))
        remaining -= sequence.numel()
    return sequences


# --- Token statistics -------------------------------------------------------------------------------------------


def _score_chunks(reference_model, candidate_model, chunks: "_EvaluationChunks", spec, device,
                  report) -> "_TokenStatistics":
    statistics = _TokenStatistics(spec.top_k)
    n_ctx = chunks.length
    first = n_ctx // 2
    done = 0
    batch: list[torch.Tensor] = []
    for chunk in chunks:
        batch.append(chunk)
        if len(batch) < spec.batch_size:
            continue
        _score_batch(reference_model, candidate_model, torch.stack(batch).to(device), first, statistics)
        done += len(batch)
        batch = []
        report(int(100 * done / chunks.planned), f"Scored {done} chunks ({statistics.tokens:,} tokens)")
    if batch:
        _score_batch(reference_model, candidate_model, torch.stack(batch).to(device), first, statistics)
        done += len(batch)
    report(100, f"Scored {done} chunks ({statistics.tokens:,} tokens)")
    return statistics


def _score_batch(reference_model, candidate_model, input_ids, first, statistics) -> None:
    n_ctx = input_ids.shape[1]
    # Logits are needed at positions first .. n_ctx - 2 only (the logits at t predict token t + 1): the models
    # are asked for the last n_ctx - first positions, which saves their output head on the first half.
    keep = n_ctx - first
    reference_logits = _finite_logits(reference_model, input_ids, "reference", keep)[:, :-1]
    if candidate_model is reference_model:
        candidate_logits = reference_logits
    else:
        candidate_logits = _finite_logits(candidate_model, input_ids, "candidate", keep)[:, :-1]
    targets = input_ids[:, first + 1 :]
    statistics.add(
        reference_logits.reshape(-1, reference_logits.shape[-1]),
        candidate_logits.reshape(-1, candidate_logits.shape[-1]),
        targets.reshape(-1),
    )


def _logits(model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
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


def _finite_logits(model, input_ids: torch.Tensor, role: str, last: int | None = None) -> torch.Tensor:
    """Logits, or a PipelineInputError when the model is numerically broken (they could not be stored as JSON)."""
    logits = _logits(model, input_ids, last=last)
    # The extremes are finite exactly when every logit is (aminmax propagates NaN): one pass, no mask tensor.
    if not bool(torch.isfinite(torch.stack(torch.aminmax(logits))).all()):
        raise PipelineInputError(
            f"The {role} model produced NaN or infinite logits on the evaluation text, so it is numerically "
            "broken (often a float16 overflow); quantize it again with compute_dtype bfloat16 or float32, or "
            "check its weights."
        )
    return logits


def _log_prob_blocks(reference_logits: torch.Tensor, candidate_logits: torch.Tensor,
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


def _kl_divergence(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """Row-wise KL(P || Q) in float64; exact 0 for identical rows, rounding negatives clamped to 0."""
    p = log_p.exp()
    terms = torch.where(p > 0, p * (log_p - log_q), torch.zeros((), dtype=log_p.dtype, device=log_p.device))
    return terms.sum(dim=-1).clamp_min(0.0)


class _TokenStatistics:
    """Everything reported about scored tokens, in memory that does not depend on how many there are."""

    def __init__(self, top_k: int):
        self.top_k = top_k
        self.tokens = 0
        self.same_top1 = 0
        self.topk_overlap = 0
        self.kl = _Moments()
        self.delta_p = _Moments()
        self.squared_delta_p = _Moments()
        self.nll = _PairedMoments()
        self.nll_difference = _Moments()
        self.kl_sketch = _QuantileSketch()
        self.delta_p_sketch = _QuantileSketch()
        self.kl_chart = _ChartHistogram(KL_CHART_EDGES)
        self.delta_p_chart = _ChartHistogram(DELTA_P_CHART_EDGES)

    def add(self, reference_logits, candidate_logits, targets) -> None:
        """Accumulate one batch of scored rows; the logits must be finite (_finite_logits checks them)."""
        rows, vocab = reference_logits.shape
        same = candidate_logits is reference_logits
        device = reference_logits.device
        kl = torch.zeros(rows, dtype=torch.float64, device=device)
        target_log_p = torch.empty(rows, dtype=torch.float64, device=device)
        target_log_q = target_log_p if same else torch.empty(rows, dtype=torch.float64, device=device)
        same_top1 = overlap = 0
        # Small row blocks keep the float64 temporaries in cache; each row is computed exactly as over all rows.
        step = max(1, STATISTICS_ELEMENTS_PER_BLOCK // vocab)
        for start in range(0, rows, step):
            block = slice(start, min(start + step, rows))
            target = targets[block].unsqueeze(-1)
            log_p = torch.log_softmax(reference_logits[block], dim=-1, dtype=torch.float64)
            target_log_p[block] = log_p.gather(-1, target).squeeze(-1)
            if same:
                # Q is P: KL stays exactly 0, and top-1 and top-k agree everywhere.
                same_top1 += log_p.shape[0]
                overlap += log_p.shape[0] * self.top_k
                continue
            log_q = torch.log_softmax(candidate_logits[block], dim=-1, dtype=torch.float64)
            target_log_q[block] = log_q.gather(-1, target).squeeze(-1)
            # KL_t = sum_v P_v (log P_v - log Q_v), in place. Finite logits give finite log-probabilities, so a
            # P_v that underflows to 0 contributes exactly 0 without a mask.
            terms = log_p - log_q
            terms.mul_(log_p.exp())
            kl[block] = terms.sum(dim=-1)
            top_p_values, top_p = log_p.topk(self.top_k, dim=-1)
            top_q_values, top_q = log_q.topk(self.top_k, dim=-1)
            overlap += int((top_p.unsqueeze(-1) == top_q.unsqueeze(-2)).any(-1).sum())
            if self.top_k > 1 and bool((top_p_values[:, 0] > top_p_values[:, 1]).all()) and bool(
                (top_q_values[:, 0] > top_q_values[:, 1]).all()
            ):
                # A strict maximum is argmax's answer; ties (rare) go to argmax, which picks the first index.
                same_top1 += int((top_p[:, 0] == top_q[:, 0]).sum())
            else:
                same_top1 += int((log_p.argmax(-1) == log_q.argmax(-1)).sum())
        kl.clamp_min_(0.0)
        delta_p = target_log_q.exp() - target_log_p.exp()

        kl_values = kl.cpu().numpy()
        delta_p_values = delta_p.cpu().numpy()
        nll_p = (-target_log_p).cpu().numpy()
        nll_q = (-target_log_q).cpu().numpy()
        self.tokens += kl_values.size
        self.same_top1 += same_top1
        self.topk_overlap += overlap
        self.kl.add(kl_values)
        self.delta_p.add(delta_p_values)
        self.squared_delta_p.add(delta_p_values * delta_p_values)
        self.nll.add(nll_p, nll_q)
        self.nll_difference.add(nll_q - nll_p)
        self.kl_sketch.add(kl_values)
        self.delta_p_sketch.add(delta_p_values)
        self.kl_chart.add(kl_values)
        self.delta_p_chart.add(delta_p_values)

    def result(self) -> dict:
        n = self.tokens
        agreement = self.same_top1 / n
        ln_ppl_ratio = self.nll_difference.mean
        return {
            "tokens": n,
            "kl": self._distribution(self.kl, self.kl_sketch),
            "delta_p": self._distribution(self.delta_p, self.delta_p_sketch),
            "rms_delta_p": math.sqrt(self.squared_delta_p.mean),
            "top1_agreement": agreement,
            "top1_agreement_uncertainty": math.sqrt(agreement * (1 - agreement) / (n - 1)) if n > 1 else 0.0,
            "topk_overlap": self.topk_overlap / (n * self.top_k),
            "ppl_reference": math.exp(self.nll.mean_x),
            "ppl_candidate": math.exp(self.nll.mean_y),
            "ppl_ratio": math.exp(ln_ppl_ratio),
            "ln_ppl_ratio": ln_ppl_ratio,
            "nll_correlation": self.nll.correlation(),
        }

    def histograms(self) -> dict:
        return {"kl": self.kl_chart.result(), "delta_p": self.delta_p_chart.result()}

    @staticmethod
    def _distribution(moments: "_Moments", sketch: "_QuantileSketch") -> dict:
        values = {"mean": moments.mean, "mean_uncertainty": moments.standard_error(), "min": moments.minimum}
        for key, fraction in PERCENTILES:
            values[key] = sketch.quantile(fraction, moments.minimum, moments.maximum)
        values["max"] = moments.maximum
        return values


class _Moments:
    """Count, mean, M2 (Welford, merged batch by batch with Chan et al.'s formula), min and max, in float64."""

    def __init__(self):
        self.count = 0
        self.mean = 0.0
        self.m2 = 0.0
        self.minimum = math.inf
        self.maximum = -math.inf

    def add(self, values: np.ndarray) -> None:
        if values.size == 0:
            return
        values = values.astype(np.float64, copy=False)
        batch_count = values.size
        batch_mean = float(values.mean())
        batch_m2 = float(np.square(values - batch_mean).sum())
        total = self.count + batch_count
        delta = batch_mean - self.mean
        self.mean += delta * batch_count / total
        self.m2 += batch_m2 + delta * delta * self.count * batch_count / total
        self.count = total
        self.minimum = min(self.minimum, float(values.min()))
        self.maximum = max(self.maximum, float(values.max()))

    def standard_error(self) -> float:
        """Standard error of the mean, as llama.cpp reports it: sqrt(population variance / (n - 1))."""
        if self.count < 2:
            return 0.0
        return math.sqrt(max(self.m2, 0.0) / self.count / (self.count - 1))


class _PairedMoments:
    """Means, M2s and co-moment of two paired series, for their Pearson correlation."""

    def __init__(self):
        self.count = 0
        self.mean_x = 0.0
        self.mean_y = 0.0
        self.m2_x = 0.0
        self.m2_y = 0.0
        self.co_moment = 0.0

    def add(self, x: np.ndarray, y: np.ndarray) -> None:
        if x.size == 0:
            return
        batch_count = x.size
        batch_mean_x, batch_mean_y = float(x.mean()), float(y.mean())
        dx, dy = x - batch_mean_x, y - batch_mean_y
        total = self.count + batch_count
        delta_x, delta_y = batch_mean_x - self.mean_x, batch_mean_y - self.mean_y
        weight = self.count * batch_count / total
        self.m2_x += float((dx * dx).sum()) + delta_x * delta_x * weight
        self.m2_y += float((dy * dy).sum()) + delta_y * delta_y * weight
        self.co_moment += float((dx * dy).sum()) + delta_x * delta_y * weight
        self.mean_x += delta_x * batch_count / total
        self.mean_y += delta_y * batch_count / total
        self.count = total

    def correlation(self) -> float | None:
        """Pearson correlation; None when either series is constant."""
        if self.m2_x <= 0 or self.m2_y <= 0:
            return None
        return max(-1.0, min(1.0, self.co_moment / math.sqrt(self.m2_x * self.m2_y)))


class _QuantileSketch:
    """Signed logarithmic buckets (DDSketch): fixed memory, each order statistic within 0.5 % relative error."""

    def __init__(
        self,
        relative_accuracy: float = PERCENTILE_RELATIVE_ACCURACY,
        zero_below: float = PERCENTILE_ZERO_BELOW,
        largest: float = PERCENTILE_LARGEST,
    ):
        gamma = (1 + relative_accuracy) / (1 - relative_accuracy)
        self.log_gamma = math.log(gamma)
        self.zero_below = zero_below
        self.offset = math.ceil(math.log(zero_below) / self.log_gamma)
        size = math.ceil(math.log(largest) / self.log_gamma) - self.offset + 1
        # Bucket i holds magnitudes in (gamma^(i+offset-1), gamma^(i+offset)]; its representative value is off
        # by at most relative_accuracy from anything in it.
        self.representatives = 2 * gamma ** (np.arange(size) + self.offset) / (gamma + 1)
        self.positive = np.zeros(size, dtype=np.int64)
        self.negative = np.zeros(size, dtype=np.int64)
        self.zero = 0

    def add(self, values: np.ndarray) -> None:
        magnitudes = np.abs(values)
        significant = magnitudes >= self.zero_below
        self.zero += int(values.size - significant.sum())
        for counts, mask in ((self.positive, significant & (values > 0)), (self.negative, significant & (values < 0))):
            if not mask.any():
                continue
            index = np.ceil(np.log(magnitudes[mask]) / self.log_gamma).astype(np.int64) - self.offset
            np.clip(index, 0, counts.size - 1, out=index)
            counts += np.bincount(index, minlength=counts.size)

    def quantile(self, fraction: float, minimum: float, maximum: float) -> float:
        """numpy's linear-interpolation percentile, from bucket representatives (exact at rank 0 and n - 1)."""
        counts = np.concatenate((self.negative[::-1], [self.zero], self.positive))
        values = np.concatenate((-self.representatives[::-1], [0.0], self.representatives))
        cumulative = np.cumsum(counts)
        n = int(cumulative[-1])
        position = fraction * (n - 1)
        low = math.floor(position)
        high = min(low + 1, n - 1)
        weight = position - low

        def at_rank(rank: int) -> float:
            if rank == 0:
                return minimum
            if rank == n - 1:
                return maximum
            return float(values[np.searchsorted(cumulative, rank, side="right")])

        estimate = at_rank(low) if weight == 0 else (1 - weight) * at_rank(low) + weight * at_rank(high)
        return min(max(estimate, minimum), maximum)


class _ChartHistogram:
    """Exact counts over fixed edges, for charts; the last bin also holds values beyond the last edge."""

    def __init__(self, edges: np.ndarray):
        self.edges = edges
        self.counts = np.zeros(edges.size - 1, dtype=np.int64)

    def add(self, values: np.ndarray) -> None:
        index = np.searchsorted(self.edges, values, side="right") - 1
        np.clip(index, 0, self.counts.size - 1, out=index)
        self.counts += np.bincount(index, minlength=self.counts.size)

    def result(self) -> dict:
        return {"edges": [float(edge) for edge in self.edges], "counts": [int(count) for count in self.counts]}


# --- Multiple-choice flips --------------------------------------------------------------------------------------


def _check_mcq_records(records: list[dict]) -> None:
    for number, record in enumerate(records, start=1):
        problem = None
        if not isinstance(record, dict):
            problem = "is not an object"
        elif not isinstance(record.get("prompt"), str) or not record["prompt"]:
            problem = 'has no "prompt" text'
        elif (
            not isinstance(record.get("choices"), list)
            or len(record["choices"]) < 2
            or not all(isinstance(choice, str) and choice.strip() for choice in record["choices"])
        ):
            problem = 'needs "choices": a list of at least two non-empty strings'
        elif (
            isinstance(record.get("answer"), bool)
            or not isinstance(record.get("answer"), int)
            or not 0 <= record["answer"] < len(record["choices"])
        ):
            problem = f'needs "answer": the index (0 to {len(record["choices"]) - 1}) of the correct choice'
        if problem:
            raise PipelineInputError(
                f'Multiple-choice record {number} {problem}; each line must look like {{"prompt": "...", '
                '"choices": ["...", "..."], "answer": 0}.'
            )


def _count_flips(reference_model, candidate_model, tokenizer, records, context_length, device, report) -> dict:
    """Accuracy of both models and answer flips (Dutta et al. 2024) on multiple-choice records."""
    reference_correct = candidate_correct = correct_to_incorrect = incorrect_to_correct = changed = 0
    for number, record in enumerate(records, start=1):
        sequences, spans = _choice_sequences(tokenizer, record, context_length)
        reference_choice = _best_choice(reference_model, sequences, spans, tokenizer, device)
        if candidate_model is reference_model:
            candidate_choice = reference_choice
        else:
            candidate_choice = _best_choice(candidate_model, sequences, spans, tokenizer, device)
        answer = record["answer"]
        reference_correct += reference_choice == answer
        candidate_correct += candidate_choice == answer
        correct_to_incorrect += reference_choice == answer and candidate_choice != answer
        incorrect_to_correct += reference_choice != answer and candidate_choice == answer
        changed += reference_choice != candidate_choice
        report(int(100 * number / len(records)), f"Scored {number} of {len(records)} multiple-choice records")
    n = len(records)
    return {
        "accuracy_reference": reference_correct / n,
        "accuracy_candidate": candidate_correct / n,
        "correct_to_incorrect": int(correct_to_incorrect),
        "incorrect_to_correct": int(incorrect_to_correct),
        "rate": changed / n,
    }


def _choice_sequences(tokenizer, record: dict, context_length: int):
    """Token ids of prompt + choice for every choice, and the (start, end) of the choice tokens in each.

    As lm-evaluation-harness does, a space separates prompt and choice unless one of them already has it.
    Prompts too long for the context lose their beginning.
    """
    prompt = record["prompt"]
    prompt_ids = tokenizer.encode(prompt, add_special_tokens=True)
    bos = tokenizer.bos_token_id
    has_bos = bos is not None and prompt_ids[:1] == [bos]
    sequences, spans = [], []
    for choice in record["choices"]:
        if not prompt[-1:].isspace() and not choice[:1].isspace():
            choice = " " + choice
        choice_ids = tokenizer.encode(choice, add_special_tokens=False)[: context_length - 2]
        room = context_length - len(choice_ids)
        context_ids = prompt_ids
        if len(context_ids) > room:
            context_ids = ([bos] if has_bos else []) + prompt_ids[len(prompt_ids) - room + (1 if has_bos else 0) :]
        sequences.append(context_ids + choice_ids)
        spans.append((len(context_ids), len(context_ids) + len(choice_ids)))
    return sequences, spans


def _best_choice(model, sequences, spans, tokenizer, device) -> int:
    """Index of the choice with the highest summed log-probability (the first one on a tie)."""
    length = max(len(sequence) for sequence in sequences)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    input_ids = torch.full((len(sequences), length), pad, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), length), dtype=torch.long)
    for row, sequence in enumerate(sequences):
        input_ids[row, : len(sequence)] = torch.tensor(sequence)
        attention_mask[row, : len(sequence)] = 1
    logits = _logits(model, input_ids.to(device), attention_mask.to(device))
    scores = []
    for row, (start, end) in enumerate(spans):
        log_probs = torch.log_softmax(logits[row, start - 1 : end - 1].to(torch.float64), dim=-1)
        targets = input_ids[row, start:end].to(log_probs.device).unsqueeze(-1)
        scores.append(float(log_probs.gather(-1, targets).sum()))
    return max(range(len(scores)), key=lambda index: (scores[index], -index))


# --- Per-layer errors -------------------------------------------------------------------------------------------


def _linear_units(model) -> dict[str, torch.nn.Module]:
    """Linear layers by name, bitsandbytes' included; a LoRA-wrapped layer counts as one unit (its own name).

    Names drop PEFT's "base_model.model." prefix so a LoRA model matches its plain base model.
    """
    units: dict[str, torch.nn.Module] = {}
    inside_lora: list[str] = []
    for name, module in model.named_modules():
        if any(name.startswith(prefix + ".") for prefix in inside_lora):
            continue
        is_lora = hasattr(module, "base_layer") and hasattr(module, "lora_A")
        if is_lora:
            inside_lora.append(name)
        if is_lora or isinstance(module, torch.nn.Linear):
            units[name.removeprefix("base_model.model.")] = module
    return units


class _LayerError:
    """Sums over the layer-phase tokens for one module, in float64."""

    def __init__(self):
        self.reference_energy = 0.0
        self.local_energy = 0.0
        self.local_error = 0.0
        self.local_dot = 0.0
        self.propagated_error = 0.0
        self.propagated_reference_energy = 0.0
        self.channel_error: torch.Tensor | None = None
        self.candidate_input_dtype: torch.dtype | None = None

    def add(self, reference_output, local_output, own_output) -> None:
        reference = reference_output.reshape(-1, reference_output.shape[-1]).to(torch.float64)
        local = local_output.reshape(-1, local_output.shape[-1]).to(device=reference.device, dtype=torch.float64)
        own = own_output.reshape(-1, own_output.shape[-1]).to(device=reference.device, dtype=torch.float64)
        # Sums of products as float64 dot products: one pass each, no temporaries.
        reference_flat, local_flat = reference.reshape(-1), local.reshape(-1)
        channel_error = (local - reference).square_().sum(0)
        self.channel_error = channel_error if self.channel_error is None else self.channel_error + channel_error
        self.reference_energy += float(torch.dot(reference_flat, reference_flat))
        self.local_energy += float(torch.dot(local_flat, local_flat))
        self.local_error += float(channel_error.sum())
        self.local_dot += float(torch.dot(local_flat, reference_flat))
        propagated = (own - reference).reshape(-1)
        self.propagated_error += float(torch.dot(propagated, propagated))

    def result(self, name: str, weight_relative_error: float | None) -> dict:
        relative_error = self.local_error / self.reference_energy if self.reference_energy > 0 else None
        norms = math.sqrt(self.local_energy * self.reference_energy)
        return {
            "name": name,
            "relative_error": relative_error,
            "relative_error_propagated": (
                self.propagated_error / self.reference_energy if self.reference_energy > 0 else None
            ),
            "cosine": max(-1.0, min(1.0, self.local_dot / norms)) if norms > 0 else None,
            # Infinite SQNR (no error at all) is reported as null: JSON has no infinity.
            "sqnr_db": 10 * math.log10(1 / relative_error) if relative_error else None,
            "max_error_channel": (
                int(self.channel_error.argmax()) if self.channel_error is not None and self.local_error > 0 else None
            ),
            "weight_relative_error": weight_relative_error,
            "ablation_kl": None,
        }


def _weight_errors(reference_model, candidate_model) -> dict[str, float | None]:
    """Relative weight error of every Linear module the two models share, by name."""
    reference_units = _linear_units(reference_model)
    candidate_units = _linear_units(candidate_model)
    return {
        name: _weight_relative_error(unit, candidate_units[name])
        for name, unit in reference_units.items()
        if name in candidate_units
    }


def _layer_errors(reference_model, candidate_model, sequences, weight_errors, ablation_top_n, device,
                  report) -> list[dict]:
    """Per Linear module: local and propagated output error, weight error, and ablation KL for the worst few."""
    reference_units = _linear_units(reference_model)
    candidate_units = _linear_units(candidate_model)
    names = [name for name in reference_units if name in candidate_units]
    if not names or not sequences:
        return []
    errors = {name: _LayerError() for name in names}
    # The capture passes' logits (their hooks change nothing) and decoder-layer outputs, reused by the ablations.
    stack, stack_positions = _decoder_stack(reference_model, reference_units) if ablation_top_n > 0 else (None, {})
    reference_logits, stack_outputs = [], []
    for index, sequence in enumerate(sequences):
        logits, outputs = _accumulate_layer_errors(reference_model, candidate_model, reference_units,
                                                   candidate_units, names, sequence.to(device), errors, stack)
        if ablation_top_n > 0:
            reference_logits.append(logits)
            stack_outputs.append(outputs)
        del logits, outputs
        report(int(40 * (index + 1) / len(sequences)), f"Measured layer errors on {index + 1} of {len(sequences)} "
               "sequences")

    layers = [errors[name].result(name, weight_errors.get(name)) for name in names]

    ranked = sorted(
        (layer for layer in layers if layer["relative_error"] is not None),
        key=lambda layer: layer["relative_error"],
        reverse=True,
    )[:ablation_top_n]
    if ranked:
        for number, layer in enumerate(ranked, start=1):
            name = layer["name"]
            layer["ablation_kl"] = _ablation_kl(
                reference_model, reference_units[name], candidate_units[name], errors[name].candidate_input_dtype,
                sequences, reference_logits, device, stack, stack_positions.get(name, 0), stack_outputs,
            )
            report(50 + int(50 * number / len(ranked)), f"Ablated {number} of {len(ranked)} most sensitive layers")
    return layers


def _accumulate_layer_errors(reference_model, candidate_model, reference_units, candidate_units, names, input_ids,
                             errors, stack=None) -> tuple[torch.Tensor, list]:
    """Hooked passes of both models over input_ids; returns the reference's logits (capture hooks alter nothing)
    and the outputs of the reference's decoder layers in `stack` (empty without one)."""
    # The reference's Linear inputs and outputs are kept without copying: the decoder architectures served here
    # (Llama, Mistral, Qwen) never modify them in place after the Linear returns.
    captured: dict[str, list] = {name: [] for name in names}
    busy = {"local": False}

    def capture(name):
        def hook(module, args, kwargs, output):
            captured[name].append((_linear_input(args, kwargs), output))

        return hook

    def compare(name):
        def hook(module, args, kwargs, output):
            if busy["local"] or not captured[name]:
                return
            reference_input, reference_output = captured[name].pop(0)
            own_input = _linear_input(args, kwargs)
            errors[name].candidate_input_dtype = own_input.dtype
            busy["local"] = True
            try:
                # "Local" error: this module alone, fed exactly what the reference module saw.
                local_output = module(reference_input.to(device=own_input.device, dtype=own_input.dtype))
            finally:
                busy["local"] = False
            errors[name].add(reference_output, local_output, output)

        return hook

    stack_outputs: list = []
    handles = [reference_units[name].register_forward_hook(capture(name), with_kwargs=True) for name in names]
    if stack is not None:
        handles += [layer.register_forward_hook(lambda module, args, output: stack_outputs.append(output))
                    for layer in stack]
    try:
        reference_logits = _logits(reference_model, input_ids)
    finally:
        for handle in handles:
            handle.remove()
    handles = [candidate_units[name].register_forward_hook(compare(name), with_kwargs=True) for name in names]
    try:
        _logits(candidate_model, input_ids)
    finally:
        for handle in handles:
            handle.remove()
        captured.clear()
    if stack is not None and len(stack_outputs) != len(stack):
        stack_outputs = []  # the layers did not run once each in order: the ablations run whole passes
    return reference_logits, stack_outputs


def _decoder_stack(model, units) -> tuple[torch.nn.ModuleList | None, dict[str, int]]:
    """The model's decoder layers (the ModuleList holding most of `units`) and, per unit name, how many of those
    layers run before the unit: an ablation need not recompute them. The output head comes after all of them;
    other units outside the stack get 0 (a whole pass)."""
    stack, positions = None, {}
    for path, module in model.named_modules():
        if not isinstance(module, torch.nn.ModuleList) or len(module) == 0:
            continue
        prefix = path.removeprefix("base_model.model.") + "."
        found = {}
        for name in units:
            if name.startswith(prefix):
                head = name[len(prefix):].split(".", 1)[0]
                if head.isdigit() and int(head) < len(module):
                    found[name] = int(head)
        if len(found) > len(positions):
            stack, positions = module, found
    if stack is None:
        return None, {}
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    for name, unit in units.items():
        if head is not None and (unit is head or getattr(unit, "base_layer", None) is head):
            positions[name] = len(stack)
    return stack, positions


class _ReplayedLayers:
    """Within the block, the first `count` layers of `stack` return their recorded outputs instead of running."""

    def __init__(self, stack, count: int, outputs: list):
        self.layers = list(stack)[:count] if outputs else []
        self.outputs = outputs
        self.saved: list = []

    def __enter__(self):
        for index, layer in enumerate(self.layers):
            self.saved.append(layer.__dict__.get("forward"))  # accelerate may have wrapped forward already
            layer.forward = self._replay(self.outputs[index], last=index == len(self.layers) - 1)
        return self

    def __exit__(self, *exc_info):
        for layer, saved in zip(self.layers, self.saved):
            if saved is None:
                del layer.forward
            else:
                layer.forward = saved
        self.saved = []

    @staticmethod
    def _replay(output, last: bool):
        def forward(*args, **kwargs):
            # The next layer gets a copy, so nothing it might do in place reaches the record.
            if last and isinstance(output, torch.Tensor):
                return output.clone()
            if last and isinstance(output, tuple):
                return tuple(item.clone() if isinstance(item, torch.Tensor) else item for item in output)
            return output

        return forward


def _linear_input(args, kwargs) -> torch.Tensor:
    if args:
        return args[0]
    return next(value for value in kwargs.values() if isinstance(value, torch.Tensor))


def _ablation_kl(reference_model, reference_unit, candidate_unit, candidate_input_dtype, sequences,
                 reference_logits, device, stack=None, skipped: int = 0, stack_outputs=None) -> float:
    """Mean KL(reference || reference with this one module swapped for the candidate's) over all positions.

    The `skipped` decoder layers before the module cannot change; they replay their recorded outputs.
    """

    busy = {"swapping": False}

    def swap(module, args, kwargs, output):
        if busy["swapping"]:  # the candidate's module is the reference's own (a version against itself)
            return None
        layer_input = _linear_input(args, kwargs)
        dtype = candidate_input_dtype or layer_input.dtype
        busy["swapping"] = True
        try:
            return candidate_unit(layer_input.to(dtype=dtype)).to(output.dtype)
        finally:
            busy["swapping"] = False

    moments = _Moments()
    handle = reference_unit.register_forward_hook(swap, with_kwargs=True)
    try:
        for index, (sequence, logits) in enumerate(zip(sequences, reference_logits)):
            outputs = stack_outputs[index] if stack is not None and stack_outputs else []
            with torch.inference_mode(), _ReplayedLayers(stack, skipped, outputs):
                ablated = _logits(reference_model, sequence.to(device))
            reference_rows = logits.reshape(-1, logits.shape[-1])
            ablated_rows = ablated.reshape(-1, ablated.shape[-1])
            for _, log_p, log_q in _log_prob_blocks(reference_rows, ablated_rows, STATISTICS_ELEMENTS_PER_BLOCK):
                # Unmasked first; where P_v > 0 the terms are the masked ones, elsewhere 0 * finite adds nothing,
                # so a finite result is the masked one. Non-finite logits take the masked path.
                terms = log_p - log_q
                terms.mul_(log_p.exp())
                kl = terms.sum(dim=-1)
                kl = kl.clamp_min_(0.0) if bool(torch.isfinite(kl).all()) else _kl_divergence(log_p, log_q)
                moments.add(kl.cpu().numpy())
    finally:
        handle.remove()
    return moments.mean


def _weight_relative_error(reference_unit, candidate_unit) -> float | None:
    """||W_c - W_r|| / ||W_r|| on the effective dense weights; None when one cannot be had or shapes differ."""
    reference_weight = _effective_weight(reference_unit)
    candidate_weight = _effective_weight(candidate_unit)
    if reference_weight is None or candidate_weight is None or reference_weight.shape != candidate_weight.shape:
        return None
    difference = reference_norm = 0.0
    rows = max(1, LOG_PROB_ELEMENTS_PER_BLOCK // max(1, reference_weight.shape[-1]))
    for start in range(0, reference_weight.shape[0], rows):
        reference_rows = reference_weight[start : start + rows].to(torch.float64)
        candidate_rows = candidate_weight[start : start + rows].to(device=reference_rows.device, dtype=torch.float64)
        difference += float((candidate_rows - reference_rows).square().sum())
        reference_norm += float(reference_rows.square().sum())
    if reference_norm == 0:
        return None
    return math.sqrt(difference / reference_norm)


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


# --- Checks and small helpers -----------------------------------------------------------------------------------


def _check_same_tokenizer(reference_tokenizer, candidate_tokenizer) -> None:
    if len(reference_tokenizer) != len(candidate_tokenizer):
        raise PipelineInputError(
            f"The reference tokenizer has {len(reference_tokenizer):,} tokens and the candidate's "
            f"{len(candidate_tokenizer):,}; an analysis compares versions of the same model, so choose a reference "
            "with the candidate's tokenizer."
        )
    if reference_tokenizer.get_vocab() != candidate_tokenizer.get_vocab():
        raise PipelineInputError(
            "The reference and candidate tokenizers map tokens to different ids; an analysis compares versions "
            "with the same tokenizer, so choose a reference with the candidate's tokenizer."
        )
    reference_ids = reference_tokenizer.encode(PROBE_TEXT, add_special_tokens=True)
    candidate_ids = candidate_tokenizer.encode(PROBE_TEXT, add_special_tokens=True)
    if reference_ids != candidate_ids:
        raise PipelineInputError(
            f"The reference and candidate tokenizers encode {PROBE_TEXT!r} differently ({reference_ids[:12]} vs "
            f"{candidate_ids[:12]}); choose a reference with the candidate's tokenizer settings."
        )


def _output_vocab_size(model) -> int:
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    size = getattr(head, "out_features", None) or getattr(head, "num_embeddings", None)
    if size is None:
        size = getattr(getattr(model, "config", None), "vocab_size", None)
    if size is None:
        raise PipelineInputError("The model's vocabulary size is unknown: its config.json has no vocab_size.")
    return int(size)


def _check_same_vocabulary(reference_model, candidate_model) -> int:
    reference_size = _output_vocab_size(reference_model)
    candidate_size = _output_vocab_size(candidate_model)
    if reference_size != candidate_size:
        raise PipelineInputError(
            f"The reference model predicts over {reference_size:,} tokens and the candidate over "
            f"{candidate_size:,}; KL divergence needs the same vocabulary, so choose a reference with the "
            "candidate's vocabulary."
        )
    return reference_size


def _max_positions(model) -> int | None:
    value = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    return int(value) if value else None


def _model_device(model) -> torch.device:
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


def _same_path(first: Path | None, second: Path | None) -> bool:
    if first is None or second is None:
        return first is second
    return Path(first).resolve() == Path(second).resolve()


def _scaled_progress(report: ProgressCallback, start: int, end: int) -> ProgressCallback:
    def scaled(percent: int, message: str) -> None:
        report(start + (end - start) * percent // 100, message)

    return scaled
