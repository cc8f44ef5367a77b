"""The analysis' entry points: its settings, their checks, and the run over two models, phase by phase."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import torch

from workers.pipelines.analysis.choices import check_mcq_records, count_flips
from workers.pipelines.analysis.chunks import EvaluationChunks, layer_sequences
from workers.pipelines.analysis.layers import layer_errors, weight_errors
from workers.pipelines.analysis.statistics import score_chunks
from workers.pipelines.errors import PipelineInputError
from workers.pipelines.memory import PeakMemory, analysis_working_bytes, check_fits, release_memory
from workers.pipelines.specs import (  # noqa: F401  (re-exported by the package)
    DEFAULT_CONTEXT_LENGTH,
    MAX_ABLATION_TOP_N,
    MAX_BATCH_SIZE,
    MAX_CONTEXT_LENGTH,
    MAX_LAYER_TOKENS,
    MAX_MAX_TOKENS,
    MAX_TOP_K,
    MIN_MAX_TOKENS,
    AnalysisSpec,
    validate_analysis_spec,
)

PROBE_TEXT = "The bank's Q3 net interest margin rose 0.25% to 3.1 %; café naïve 2024-01-31."

ProgressCallback = Callable[[int, str], None]


def _ignore_progress(percent: int, message: str) -> None:
    return None


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
    available_bytes: int | None = None,
) -> dict:
    """Load two version directories (with optional LoRA adapters) and analyse the candidate against the reference.

    Before anything loads, the two models' resident size (from their headers) plus the analysis' bounded working
    set is checked against the device's free memory (`available_bytes` replaces that measurement).
    """
    from workers.pipelines.loading import pick_device

    validate_analysis_spec(spec)
    if mcq:
        check_mcq_records(mcq)
    device = pick_device()
    same_version = _same_path(reference_dir, candidate_dir) and _same_path(
        reference_adapter_dir, candidate_adapter_dir
    )
    memory = _check_analysis_fits(reference_dir, candidate_dir, reference_adapter_dir, candidate_adapter_dir, spec,
                                  same_version=same_version, device=device, available_bytes=available_bytes)
    try:
        with PeakMemory(device) as peak:
            result = _load_and_analyse(reference_dir, candidate_dir, texts, spec, mcq=mcq,
                                       reference_adapter_dir=reference_adapter_dir,
                                       candidate_adapter_dir=candidate_adapter_dir, same_version=same_version,
                                       device=device, report=report)
    finally:
        release_memory(device)  # the two models went with _load_and_analyse's frame
    return {**result, "memory": memory, **peak.figures()}


def _check_analysis_fits(reference_dir, candidate_dir, reference_adapter_dir, candidate_adapter_dir, spec, *,
                         same_version: bool, device: str, available_bytes: int | None) -> dict:
    from workers.pipelines.loading import read_model_config, resident_bytes

    weights = resident_bytes(Path(reference_dir), adapter_dir=reference_adapter_dir)
    if not same_version:
        weights += resident_bytes(Path(candidate_dir), adapter_dir=candidate_adapter_dir)
    config = read_model_config(Path(reference_dir))
    positions = config.get("max_position_embeddings") or DEFAULT_CONTEXT_LENGTH
    context_length = spec.context_length or min(int(positions), DEFAULT_CONTEXT_LENGTH)
    working = analysis_working_bytes(config, context_length=min(context_length, spec.max_tokens),
                                     batch_size=spec.batch_size, layer_tokens=spec.layer_tokens)
    return check_fits(needed_bytes=weights + working, what="Analysing these two versions", device=device,
                      available_bytes=available_bytes)


def _load_and_analyse(reference_dir, candidate_dir, texts, spec, *, mcq, reference_adapter_dir,
                      candidate_adapter_dir, same_version: bool, device: str, report: ProgressCallback) -> dict:
    from workers.pipelines.loading import floating_dtype, load_causal_lm

    report(0, "Loading the reference model")
    reference_model, reference_tokenizer = load_causal_lm(
        Path(reference_dir), adapter_dir=reference_adapter_dir, device=device
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
    result = analyse_models(
        reference_model,
        candidate_model,
        reference_tokenizer,
        texts,
        spec,
        mcq=mcq,
        report=_scaled_progress(report, 10, 100),
    )
    result["dtypes"] = {"reference": floating_dtype(reference_model), "candidate": floating_dtype(candidate_model)}
    return result


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
    """Analyse two loaded causal LMs sharing `tokenizer`; return the statistics dict described in the package doc."""
    validate_analysis_spec(spec)
    if mcq:
        check_mcq_records(mcq)
    started = time.perf_counter()
    reference_model.eval()
    candidate_model.eval()
    vocab_size = _check_same_vocabulary(reference_model, candidate_model)
    if spec.top_k > vocab_size:
        raise PipelineInputError(f"top_k={spec.top_k} is larger than the vocabulary ({vocab_size} tokens); lower it.")
    device = _model_device(reference_model)

    context_length = _context_length(spec, reference_model)

    def evaluation_chunks():
        return EvaluationChunks(tokenizer, texts, context_length=context_length, max_tokens=spec.max_tokens,
                                vocab_size=vocab_size)

    chunks = evaluation_chunks()  # tokenizes the first chunk now, so a too-short dataset fails before any work

    with torch.no_grad():
        # Weights are compared before any forward pass: on CPUs with AVX512-BF16, bitsandbytes repacks 4-bit
        # weights (and rounds their scales to bfloat16) at the first inference call.
        module_weight_errors = weight_errors(reference_model, candidate_model) if spec.layer_tokens > 0 else {}
        token_statistics = score_chunks(
            reference_model, candidate_model, chunks, spec, device, _scaled_progress(report, 0, 60)
        )
        flips = None
        if mcq:
            flips = count_flips(reference_model, candidate_model, tokenizer, mcq, context_length, device,
                                _scaled_progress(report, 60, 70))
        layers = []
        if spec.layer_tokens > 0:
            sequences = layer_sequences(evaluation_chunks(), spec.layer_tokens)
            layers = layer_errors(reference_model, candidate_model, sequences, module_weight_errors,
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
