"""Error analysis of a candidate model version against a reference (llama.cpp's KL-divergence statistics).

Both models read the same tokens of an evaluation dataset; for every scored token t with next token y we take
P = softmax(reference logits) and Q = softmax(candidate logits), computed in float64, and accumulate

    KL_t = sum_v P_v (log P_v - log Q_v)      delta_p_t = Q(y) - P(y)      NLL_t = -log P(y), -log Q(y)
    same top-1 token, |top-k(P) ∩ top-k(Q)| / k

on the fly: nothing grows with the token count, so 10^6 tokens cost the memory of one batch of logits.

The modules, in the order a run uses them (each docstring says how its part is computed):

- run: the entry points below, the settings and their checks, and the run phase by phase;
- chunks: the evaluation tokens, cut into chunks as llama.cpp's `perplexity --kl-divergence` does;
- logits: the models' logits and float64 log-probabilities, as every phase asks for them;
- statistics: the token statistics (moments, percentile sketch, chart histograms);
- choices: answer flips on multiple-choice records;
- layers: per-layer output and weight errors, and the ablation KL of the most sensitive modules.
"""

from workers.pipelines.analysis.chunks import MIN_CHUNK_LENGTH, MIN_SCORED_PER_CHUNK
from workers.pipelines.analysis.logits import LOG_PROB_ELEMENTS_PER_BLOCK, STATISTICS_ELEMENTS_PER_BLOCK
from workers.pipelines.analysis.run import (
    DEFAULT_CONTEXT_LENGTH,
    MAX_ABLATION_TOP_N,
    MAX_BATCH_SIZE,
    MAX_CONTEXT_LENGTH,
    MAX_LAYER_TOKENS,
    MAX_MAX_TOKENS,
    MAX_TOP_K,
    MIN_MAX_TOKENS,
    PROBE_TEXT,
    AnalysisSpec,
    ProgressCallback,
    analyse_models,
    analyse_versions,
    validate_analysis_spec,
)
from workers.pipelines.analysis.statistics import (
    DELTA_P_CHART_EDGES,
    KL_CHART_EDGES,
    PERCENTILE_LARGEST,
    PERCENTILE_RELATIVE_ACCURACY,
    PERCENTILE_ZERO_BELOW,
    PERCENTILES,
)

__all__ = [
    "AnalysisSpec",
    "DEFAULT_CONTEXT_LENGTH",
    "DELTA_P_CHART_EDGES",
    "KL_CHART_EDGES",
    "LOG_PROB_ELEMENTS_PER_BLOCK",
    "MAX_ABLATION_TOP_N",
    "MAX_BATCH_SIZE",
    "MAX_CONTEXT_LENGTH",
    "MAX_LAYER_TOKENS",
    "MAX_MAX_TOKENS",
    "MAX_TOP_K",
    "MIN_CHUNK_LENGTH",
    "MIN_MAX_TOKENS",
    "MIN_SCORED_PER_CHUNK",
    "PERCENTILES",
    "PERCENTILE_LARGEST",
    "PERCENTILE_RELATIVE_ACCURACY",
    "PERCENTILE_ZERO_BELOW",
    "PROBE_TEXT",
    "ProgressCallback",
    "STATISTICS_ELEMENTS_PER_BLOCK",
    "analyse_models",
    "analyse_versions",
    "validate_analysis_spec",
]
