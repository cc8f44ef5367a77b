"""Error analysis of a candidate against a reference: statistics checked against a direct computation over full
logits, the self-analysis invariant, quantization drift, answer flips, flat memory, and refused inputs."""

import copy
import gc
import json
import math
import pickle
import shutil
import tracemalloc
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from workers.pipelines.analysis import (
    PERCENTILE_RELATIVE_ACCURACY,
    PERCENTILE_ZERO_BELOW,
    PERCENTILES,
    AnalysisSpec,
    analyse_models,
    analyse_versions,
    chunks,
    layers,
    statistics,
    validate_analysis_spec,
)
from workers.pipelines.analysis.run import _output_vocab_size
from workers.pipelines.errors import JobCancelled, PipelineInputError
from workers.pipelines.loading import load_causal_lm
from workers.pipelines.quantize import QuantizeSpec, quantize_version
from workers.pipelines.tiny_model import SAMPLE_TEXTS, build_tiny_llama, build_tokenizer

DISTRIBUTION_KEYS = ["mean", "mean_uncertainty", "min"] + [key for key, _ in PERCENTILES] + ["max"]
RESULT_KEYS = {
    "tokens", "seconds", "kl", "delta_p", "rms_delta_p", "top1_agreement", "top1_agreement_uncertainty",
    "topk_overlap", "ppl_reference", "ppl_candidate", "ppl_ratio", "ln_ppl_ratio", "nll_correlation", "flips",
    "layers", "histograms", "device", "memory", "peak_rss_bytes", "rss_before_bytes", "peak_gpu_bytes", "dtypes",
}
LAYER_KEYS = {
    "name", "relative_error", "relative_error_propagated", "cosine", "sqnr_db", "max_error_channel",
    "weight_relative_error", "ablation_kl",
}


@pytest.fixture(scope="module")
def reference_dir(trained_tiny_llama_dir):
    return trained_tiny_llama_dir


@pytest.fixture(scope="module")
def reference(reference_dir):
    return load_causal_lm(reference_dir, device="cpu")


def perturbed_copy(model, *, scale, seed=0):
    candidate = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in candidate.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * scale)
    return candidate


# --- The numbers ------------------------------------------------------------------------------------------------


def direct_statistics(reference_model, candidate_model, tokenizer, *, context_length, max_tokens, batch_size, top_k):
    """Per-token arrays from full float64 log-softmax of both models, chunked as the module documents."""
    stream = []
    for text in SAMPLE_TEXTS:
        if stream:
            stream.append(tokenizer.eos_token_id)
        stream.extend(tokenizer.encode(text, add_special_tokens=False))
    per_chunk = context_length - 1
    n_chunks = max_tokens // context_length
    assert len(stream) >= n_chunks * per_chunk
    chunks = torch.tensor(
        [[tokenizer.bos_token_id] + stream[index * per_chunk : (index + 1) * per_chunk] for index in range(n_chunks)]
    )
    first = context_length // 2
    arrays = {"kl": [], "delta_p": [], "nll_p": [], "nll_q": [], "same_top1": [], "overlap": []}
    with torch.no_grad():
        for start in range(0, n_chunks, batch_size):  # same batches, so float32 logits are bit-identical
            batch = chunks[start : start + batch_size]
            log_p = torch.log_softmax(reference_model(input_ids=batch).logits.double(), -1)[:, first:-1]
            log_q = torch.log_softmax(candidate_model(input_ids=batch).logits.double(), -1)[:, first:-1]
            targets = batch[:, first + 1 :].unsqueeze(-1)
            p, q = log_p.exp(), log_q.exp()
            arrays["kl"].append((p * (log_p - log_q)).sum(-1).flatten())
            arrays["delta_p"].append((q.gather(-1, targets) - p.gather(-1, targets)).flatten())
            arrays["nll_p"].append(-log_p.gather(-1, targets).flatten())
            arrays["nll_q"].append(-log_q.gather(-1, targets).flatten())
            arrays["same_top1"].append((log_p.argmax(-1) == log_q.argmax(-1)).flatten())
            top_p = set_per_row(log_p.topk(top_k, -1).indices)
            top_q = set_per_row(log_q.topk(top_k, -1).indices)
            arrays["overlap"].append(torch.tensor([len(a & b) for a, b in zip(top_p, top_q)]))
    return {name: torch.cat(values).double().numpy() for name, values in arrays.items()}


def set_per_row(indices):
    return [set(row.tolist()) for row in indices.reshape(-1, indices.shape[-1])]


def assert_percentiles_within_documented_precision(reported, values):
    """|estimate - exact| <= 0.005 ((1 - f)|x_lo| + f|x_hi|) + 1e-12 around numpy's interpolated percentile."""
    ordered = np.sort(values)
    n = ordered.size
    assert reported["min"] == ordered[0]
    assert reported["max"] == ordered[-1]
    for key, fraction in PERCENTILES:
        position = fraction * (n - 1)
        low = math.floor(position)
        high = min(low + 1, n - 1)
        weight = position - low
        exact = np.percentile(values, 100 * fraction)
        # 1.001: a value on a bucket boundary may land in the neighbouring bucket through log() rounding.
        bound = PERCENTILE_RELATIVE_ACCURACY * 1.001 * (
            (1 - weight) * abs(ordered[low]) + weight * abs(ordered[high])
        ) + PERCENTILE_ZERO_BELOW
        assert abs(reported[key] - exact) <= bound, (key, reported[key], exact, bound)


def test_statistics_match_a_direct_computation_over_full_logits(reference):
    model, tokenizer = reference
    candidate = perturbed_copy(model, scale=0.003)
    spec = AnalysisSpec(max_tokens=1024, top_k=5, context_length=64, layer_tokens=0, batch_size=3)

    result = analyse_models(model, candidate, tokenizer, SAMPLE_TEXTS, spec)
    direct = direct_statistics(model, candidate, tokenizer, context_length=64, max_tokens=1024, batch_size=3,
                               top_k=5)

    n = direct["kl"].size
    assert n == 16 * 31  # 16 chunks of 64, positions 32..62 scored
    assert result["tokens"] == n
    kl, delta_p = direct["kl"], direct["delta_p"]
    assert result["kl"]["mean"] == pytest.approx(kl.mean(), rel=1e-9)
    assert result["kl"]["mean_uncertainty"] == pytest.approx(kl.std() / math.sqrt(n - 1), rel=1e-6)
    assert result["delta_p"]["mean"] == pytest.approx(delta_p.mean(), rel=1e-9, abs=1e-15)
    assert result["delta_p"]["mean_uncertainty"] == pytest.approx(delta_p.std() / math.sqrt(n - 1), rel=1e-6)
    assert_percentiles_within_documented_precision(result["kl"], kl)
    assert_percentiles_within_documented_precision(result["delta_p"], delta_p)
    assert result["rms_delta_p"] == pytest.approx(math.sqrt((delta_p**2).mean()), rel=1e-9)

    agreement = direct["same_top1"].mean()
    assert result["top1_agreement"] == agreement
    assert result["top1_agreement_uncertainty"] == pytest.approx(math.sqrt(agreement * (1 - agreement) / (n - 1)))
    assert result["topk_overlap"] == direct["overlap"].sum() / (5 * n)
    assert result["ppl_reference"] == pytest.approx(math.exp(direct["nll_p"].mean()), rel=1e-9)
    assert result["ppl_candidate"] == pytest.approx(math.exp(direct["nll_q"].mean()), rel=1e-9)
    ln_ratio = (direct["nll_q"] - direct["nll_p"]).mean()
    assert result["ln_ppl_ratio"] == pytest.approx(ln_ratio, rel=1e-9)
    assert result["ppl_ratio"] == pytest.approx(result["ppl_candidate"] / result["ppl_reference"], rel=1e-9)
    assert result["nll_correlation"] == pytest.approx(np.corrcoef(direct["nll_p"], direct["nll_q"])[0, 1], rel=1e-9)

    # The case is not degenerate: the candidate really drifts, and not everywhere alike.
    assert 0 < kl.min() < kl.max() and 0.5 < agreement < 1
    assert sum(result["histograms"]["kl"]["counts"]) == n
    assert sum(result["histograms"]["delta_p"]["counts"]) == n
    assert result["flips"] is None and result["layers"] == []


def assert_exactly_unchanged(result):
    assert all(result["kl"][key] == 0.0 for key in DISTRIBUTION_KEYS)
    assert all(result["delta_p"][key] == 0.0 for key in DISTRIBUTION_KEYS)
    assert result["top1_agreement"] == 1.0
    assert result["topk_overlap"] == 1.0
    assert result["rms_delta_p"] == 0.0
    assert result["ppl_ratio"] == 1.0 and result["ln_ppl_ratio"] == 0.0
    assert result["ppl_reference"] == result["ppl_candidate"]


def test_a_version_against_itself_shows_exactly_no_drift(reference_dir):
    mcq = [{"prompt": "The bank raised its interest", "choices": ["rate", "cat"], "answer": 0}]
    result = analyse_versions(reference_dir, reference_dir, SAMPLE_TEXTS, AnalysisSpec(max_tokens=512), mcq=mcq)

    assert_exactly_unchanged(result)
    assert result["flips"]["rate"] == 0.0
    assert result["flips"]["accuracy_reference"] == result["flips"]["accuracy_candidate"]
    assert result["layers"] and all(layer["relative_error"] == 0.0 for layer in result["layers"])
    assert all(layer["weight_relative_error"] == 0.0 for layer in result["layers"])


def test_a_separately_loaded_copy_also_shows_exactly_no_drift(reference):
    model, tokenizer = reference
    spec = AnalysisSpec(max_tokens=512, context_length=128, batch_size=2, layer_tokens=32, ablation_top_n=1)

    result = analyse_models(model, copy.deepcopy(model), tokenizer, SAMPLE_TEXTS, spec)

    assert_exactly_unchanged(result)
    assert all(layer["relative_error_propagated"] == 0.0 for layer in result["layers"])


# --- Quantization drift -----------------------------------------------------------------------------------------


def test_nf4_drifts_more_than_int8_and_layers_show_why(reference_dir, tmp_path):
    spec = AnalysisSpec(max_tokens=1024, context_length=128, layer_tokens=64, ablation_top_n=2)
    results = {}
    for method in ("nf4", "int8"):
        quantize_version(reference_dir, tmp_path / method, QuantizeSpec(method=method))
        results[method] = analyse_versions(reference_dir, tmp_path / method, SAMPLE_TEXTS, spec)
    nf4, int8 = results["nf4"], results["int8"]

    assert nf4["kl"]["mean"] > 5 * int8["kl"]["mean"] > 0
    assert nf4["top1_agreement"] <= int8["top1_agreement"]
    assert set(nf4) == RESULT_KEYS
    assert all(set(stats) == set(DISTRIBUTION_KEYS) for stats in (nf4["kl"], nf4["delta_p"]))
    json.dumps(nf4, allow_nan=False)  # storable as jsonb: no NaN or infinity anywhere

    layers = {layer["name"]: layer for layer in nf4["layers"]}
    int8_layers = {layer["name"]: layer for layer in int8["layers"]}
    q_proj = "model.layers.0.self_attn.q_proj"
    assert set(layers[q_proj]) == LAYER_KEYS
    # The first layer sees the unquantized embeddings, so its local and propagated errors coincide.
    assert layers[q_proj]["relative_error"] == pytest.approx(layers[q_proj]["relative_error_propagated"])
    assert layers[q_proj]["weight_relative_error"] > int8_layers[q_proj]["weight_relative_error"] > 0
    assert 0 < layers[q_proj]["relative_error"] < 0.1 and layers[q_proj]["cosine"] > 0.95
    assert layers[q_proj]["sqnr_db"] == pytest.approx(-10 * math.log10(layers[q_proj]["relative_error"]))
    assert isinstance(layers[q_proj]["max_error_channel"], int)
    ablated = [layer for layer in nf4["layers"] if layer["ablation_kl"] is not None]
    assert len(ablated) == 2 and all(layer["ablation_kl"] > 0 for layer in ablated)
    most_sensitive = max(nf4["layers"], key=lambda layer: layer["relative_error"])
    assert most_sensitive["ablation_kl"] is not None
    assert int8_layers["lm_head"]["weight_relative_error"] == 0.0  # skipped by default


def test_ablations_replaying_the_earlier_layers_equal_whole_passes(reference, monkeypatch):
    model, tokenizer = reference
    candidate = perturbed_copy(model, scale=0.01)
    units = layers._linear_units(model)
    stack, positions = layers._decoder_stack(model, units)
    assert stack is model.model.layers and positions["lm_head"] == len(stack)
    assert positions["model.layers.1.mlp.down_proj"] == 1
    # Every module ablated, over two sequences of different lengths.
    sequences = chunks.layer_sequences(
        chunks.EvaluationChunks(tokenizer, SAMPLE_TEXTS, context_length=64, max_tokens=1024,
                                vocab_size=_output_vocab_size(model)), 100)
    assert [sequence.shape[1] for sequence in sequences] == [64, 36]

    def layer_errors():
        with torch.no_grad():
            return layers.layer_errors(model, candidate, sequences, {}, len(units), torch.device("cpu"),
                                       lambda percent, message: None)

    replayed = layer_errors()
    monkeypatch.setattr(layers, "_decoder_stack", lambda model, units: (None, {}))
    whole = layer_errors()
    assert [layer["ablation_kl"] for layer in replayed] == [layer["ablation_kl"] for layer in whole]
    assert all(layer["ablation_kl"] > 0 for layer in whole if layer["name"] != "lm_head")
    assert replayed == whole
    assert "forward" not in vars(stack[0])  # the replay is undone


# --- Answer flips -----------------------------------------------------------------------------------------------


class UnigramModel(torch.nn.Module):
    """Predicts the same distribution at every position, so a choice's score is its tokens' log-probability."""

    def __init__(self, logits):
        super().__init__()
        self.bias = torch.nn.Parameter(logits, requires_grad=False)
        self.config = SimpleNamespace(max_position_embeddings=64, vocab_size=logits.numel())

    def forward(self, input_ids, attention_mask=None, use_cache=None):
        return SimpleNamespace(logits=self.bias.expand(*input_ids.shape, -1))


def test_flips_count_changed_answers_on_a_hand_made_set():
    tokenizer = build_tokenizer(512)
    words = [" bank", " loan", " risk", " market", " up"]
    word_id = {word: tokenizer.encode(word, add_special_tokens=False) for word in words}
    assert all(len(ids) == 1 for ids in word_id.values())
    # The reference prefers bank > loan > risk > market > up, the candidate loan > bank > market > risk > up.
    preferences = {
        "reference": [" bank", " loan", " risk", " market", " up"],
        "candidate": [" loan", " bank", " market", " risk", " up"],
    }
    models = {}
    for name, order in preferences.items():
        logits = torch.zeros(512)
        for rank, word in enumerate(order):
            logits[word_id[word][0]] = 5.0 - rank
        models[name] = UnigramModel(logits)
    records = [
        {"prompt": "The", "choices": ["bank", "loan"], "answer": 0},  # reference right, candidate wrong
        {"prompt": "The", "choices": ["risk", "market"], "answer": 1},  # reference wrong, candidate right
        {"prompt": "The", "choices": ["up", "bank"], "answer": 1},  # both right
        {"prompt": "The", "choices": [" up", " risk", " loan"], "answer": 0},  # both wrong, same answer (spaced)
        {"prompt": "The", "choices": ["bank", "loan", "risk"], "answer": 2},  # both wrong, different answers
    ]
    spec = AnalysisSpec(max_tokens=64, layer_tokens=0)

    result = analyse_models(models["reference"], models["candidate"], tokenizer, SAMPLE_TEXTS, spec, mcq=records)

    assert result["flips"] == {
        "accuracy_reference": 2 / 5,
        "accuracy_candidate": 2 / 5,
        "correct_to_incorrect": 1,
        "incorrect_to_correct": 1,
        "rate": 3 / 5,
    }


# --- Memory -----------------------------------------------------------------------------------------------------


def test_memory_does_not_grow_with_the_token_count(reference, monkeypatch):
    model, tokenizer = reference
    texts = SAMPLE_TEXTS * 4  # about 7,000 tokens
    accumulators = []

    class RecordedTokenStatistics(statistics.TokenStatistics):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            accumulators.append(self)

    monkeypatch.setattr(statistics, "TokenStatistics", RecordedTokenStatistics)

    def run(max_tokens):
        spec = AnalysisSpec(max_tokens=max_tokens, context_length=128, layer_tokens=0, batch_size=4)
        # Collecting after every chunk keeps the cyclic garbage of transformers' forward out of the peak.
        return analyse_models(model, model, tokenizer, texts, spec, report=lambda percent, message: gc.collect())

    def traced_peak(max_tokens):
        gc.collect()
        tracemalloc.start()
        try:
            baseline = tracemalloc.get_traced_memory()[0]
            result = run(max_tokens)
            return tracemalloc.get_traced_memory()[1] - baseline, result
        finally:
            tracemalloc.stop()

    run(512)  # warm-up: imports and caches are not the analysis' footprint
    small_peak, small = traced_peak(512)
    large_peak, large = traced_peak(4096)

    assert large["tokens"] == 8 * small["tokens"]
    # Holding the logits would add megabytes, a Python float per token about 90 kB; torch itself retains
    # about 100 bytes per forward pass.
    assert large_peak < 1.1 * small_peak, (small_peak, large_peak)
    # What the accumulators hold is the same size however many tokens went through them.
    small_state, large_state = (len(pickle.dumps(vars(accumulator))) for accumulator in accumulators[-2:])
    assert abs(large_state - small_state) < 64, (small_state, large_state)


# --- Refused inputs ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "settings, expected",
    [
        ({"max_tokens": 15}, "max_tokens must be between 16 and 1,000,000; got 15"),
        ({"max_tokens": 1_000_001}, "max_tokens must be between 16 and 1,000,000"),
        ({"max_tokens": "4096"}, "max_tokens must be a whole number"),
        ({"top_k": 0}, "top_k must be between 1 and 100; got 0"),
        ({"top_k": 101}, "top_k must be between 1 and 100"),
        ({"context_length": 4}, "context_length must be between 6"),
        ({"batch_size": 0}, "batch_size must be between 1"),
    ],
)
def test_settings_out_of_range_are_refused_at_request_time(settings, expected):
    with pytest.raises(PipelineInputError, match=expected):
        validate_analysis_spec(AnalysisSpec(**settings))


@pytest.mark.parametrize(
    "texts, found",
    [([], 0), (["   ", ""], 0), (["The bank"], 2)],
)
def test_a_dataset_with_too_few_tokens_is_refused_with_counts(reference, texts, found):
    model, tokenizer = reference
    with pytest.raises(PipelineInputError, match=f"gave {found} tokens; at least 5 are needed"):
        analyse_models(model, model, tokenizer, texts, AnalysisSpec())


def test_a_context_longer_than_the_model_is_refused(reference):
    model, tokenizer = reference
    with pytest.raises(PipelineInputError, match="exceeds the model's 256 positions"):
        analyse_models(model, model, tokenizer, SAMPLE_TEXTS, AnalysisSpec(context_length=1024))


def test_models_with_different_vocabularies_are_refused(reference, reference_dir, tmp_path):
    other_dir = build_tiny_llama(tmp_path / "other", vocab_size=544)
    with pytest.raises(PipelineInputError, match="reference tokenizer has 512 tokens and the candidate's 544"):
        analyse_versions(reference_dir, other_dir, SAMPLE_TEXTS, AnalysisSpec())

    model, tokenizer = reference
    other_model, _ = load_causal_lm(other_dir, device="cpu")
    with pytest.raises(PipelineInputError, match="predicts over 512 tokens and the candidate over 544"):
        analyse_models(model, other_model, tokenizer, SAMPLE_TEXTS, AnalysisSpec())


def test_a_tokenizer_with_the_same_size_but_other_ids_is_refused(reference_dir, tmp_path):
    candidate_dir = tmp_path / "candidate"
    shutil.copytree(reference_dir, candidate_dir)
    tokenizer_file = candidate_dir / "tokenizer.json"
    tokenizer_json = json.loads(tokenizer_file.read_text())
    vocab = tokenizer_json["model"]["vocab"]
    vocab["Ġbank"], vocab["Ġloan"] = vocab["Ġloan"], vocab["Ġbank"]
    tokenizer_file.write_text(json.dumps(tokenizer_json))

    with pytest.raises(PipelineInputError, match="tokenizers map tokens to different ids"):
        analyse_versions(reference_dir, candidate_dir, SAMPLE_TEXTS, AnalysisSpec())


@pytest.mark.parametrize(
    "record, problem",
    [
        ({"prompt": "Q", "choices": ["a"], "answer": 0}, "at least two non-empty strings"),
        ({"prompt": "Q", "choices": ["a", "b"], "answer": 2}, "the index \\(0 to 1\\)"),
        ({"choices": ["a", "b"], "answer": 0}, 'has no "prompt"'),
    ],
)
def test_malformed_multiple_choice_records_are_refused_by_number(reference, record, problem):
    model, tokenizer = reference
    good = {"prompt": "Q", "choices": ["a", "b"], "answer": 0}
    with pytest.raises(PipelineInputError, match=f"record 2 .*{problem}"):
        analyse_models(model, model, tokenizer, SAMPLE_TEXTS, AnalysisSpec(), mcq=[good, record])


def test_a_model_producing_nan_is_refused_with_advice():
    tokenizer = build_tokenizer(512)
    broken = torch.zeros(512)
    broken[7] = float("nan")
    with pytest.raises(PipelineInputError, match="candidate model produced NaN or infinite logits"):
        analyse_models(UnigramModel(torch.zeros(512)), UnigramModel(broken), tokenizer, SAMPLE_TEXTS,
                       AnalysisSpec(max_tokens=64, layer_tokens=0))


# --- Progress ---------------------------------------------------------------------------------------------------


def test_progress_rises_to_100_and_cancellation_stops_the_analysis(reference):
    model, tokenizer = reference
    spec = AnalysisSpec(max_tokens=512, context_length=64, layer_tokens=32, ablation_top_n=1)
    percents = []
    analyse_models(model, model, tokenizer, SAMPLE_TEXTS, spec, report=lambda percent, _: percents.append(percent))
    assert percents == sorted(percents) and percents[-1] == 100 and len(percents) > 3

    def cancel(percent, message):
        raise JobCancelled()

    with pytest.raises(JobCancelled):
        analyse_models(model, model, tokenizer, SAMPLE_TEXTS, spec, report=cancel)
