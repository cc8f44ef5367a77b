"""The analysis pipeline's cost against bare forward passes of the two models it compares, and its memory.

    .venv/bin/python bench/analysis.py [--repetitions 5] [--max-tokens 8192] [--layer-tokens 512] [--models DIR] ...

Measured on the pipeline (workers.pipelines.analysis.analyse_models), in this process, on a tiny Llama
(workers.pipelines.tiny_model, trained a few steps so its predictions are peaked) as reference and its NF4
quantization (workers.pipelines.quantize.quantize_version) as candidate, over SAMPLE_TEXTS repeated:

- throughput_vs_limit: scored tokens/s of the distribution statistics (layer_tokens=0, so only that phase runs)
  / scored tokens/s of the limit, one bare forward pass of each model over the same chunks (the pipeline's own
  chunking, same batch size). 1.0 would mean the statistics cost nothing beyond the two forward passes.
- layer_phase_over_forward: seconds of the per-layer phase without ablations (weight errors + hooked passes,
  ablation_top_n 0, timed directly around the pipeline's weight_errors and layer_errors) / one bare forward pass
  of both models over the same `--layer-tokens` tokens.
- ablation_over_forward: seconds of one single-module ablation (the pipeline's _ablation_kl, timed around each
  call during a default-spec run and averaged over its ablation_top_n calls) / one bare forward pass of the
  candidate over the same layer tokens. An ablation replays the decoder layers before the module, so ≤ 1.0.
- peak_mb_small / peak_mb_large: peak RSS growth of a fresh subprocess during analyse_models (default spec, so
  the per-layer phase included) at two token budgets, over its RSS after loading both models and one warm-up
  forward pass (bitsandbytes repacks 4-bit weights for the CPU at the first forward; that is loading, not
  analysis). RSS, sampled every 5 ms, covers torch's allocations, which tracemalloc does not see.

Each round runs the statistics, the bare passes and the layer phase one after another, in alternating order;
the ratios are medians of the per-round ratios, after one untimed warm-up.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.stack import emit, library_versions, log, machine_description, median  # noqa: E402

MIB = 1024 * 1024


def sample_texts(copies: int) -> list[str]:
    from workers.pipelines.tiny_model import SAMPLE_TEXTS

    return list(SAMPLE_TEXTS) * copies


def build_models(scratch: Path, args) -> tuple[Path, Path]:
    from workers.pipelines.quantize import QuantizeSpec, quantize_version
    from workers.pipelines.tiny_model import build_tiny_llama

    reference = scratch / "reference"
    candidate = scratch / "candidate-nf4"
    build_tiny_llama(reference, hidden_size=args.hidden, intermediate_size=args.intermediate,
                     num_layers=args.layers, num_heads=args.heads, vocab_size=args.vocab,
                     max_position_embeddings=args.context, train_steps=args.train_steps)
    quantize_version(reference, candidate, QuantizeSpec(method="nf4"))
    return reference, candidate


def load_pair(reference: Path, candidate: Path):
    from workers.pipelines.loading import load_causal_lm

    reference_model, tokenizer = load_causal_lm(reference, device="cpu")
    candidate_model, _ = load_causal_lm(candidate, device="cpu")
    return reference_model, candidate_model, tokenizer


def warm_up(reference_model, candidate_model) -> None:
    import torch

    with torch.no_grad():
        for model in (reference_model, candidate_model):
            model(input_ids=torch.ones((1, 16), dtype=torch.long), use_cache=False)


def pipeline_chunks(reference_model, tokenizer, texts, spec):
    """The chunks analyse_models scores, cut by the pipeline's own code so the bare passes see the same tokens."""
    from workers.pipelines.analysis import chunks, run

    context_length = run._context_length(spec, reference_model)
    return chunks.EvaluationChunks(tokenizer, texts, context_length=context_length, max_tokens=spec.max_tokens,
                                   vocab_size=run._check_same_vocabulary(reference_model, reference_model))


def bare_forward(reference_model, candidate_model, batches) -> float:
    """One plain forward pass of each model over every batch; logits are materialised, nothing else is done."""
    import torch

    started = time.perf_counter()
    with torch.no_grad():
        for input_ids in batches:
            reference_model(input_ids=input_ids, use_cache=False).logits
            candidate_model(input_ids=input_ids, use_cache=False).logits
    return time.perf_counter() - started


class LayerPhaseTimer:
    """Times the pipeline's per-layer phase by wrapping the two functions analyse_models calls for it, and each
    ablation inside it (layers._ablation_kl, which layer_errors looks up in its module)."""

    def __init__(self):
        from workers.pipelines.analysis import layers, run

        self.targets = {"weight_errors": run, "layer_errors": run, "_ablation_kl": layers}
        self.by_function = {"weight_errors": 0.0, "layer_errors": 0.0}
        self.ablation_seconds: list[float] = []
        self._originals = {name: getattr(module, name) for name, module in self.targets.items()}

    def __enter__(self):
        for name, original in self._originals.items():
            setattr(self.targets[name], name, self._timed(name, original))
        return self

    def __exit__(self, *exc_info):
        for name, original in self._originals.items():
            setattr(self.targets[name], name, original)

    @property
    def seconds(self) -> float:
        return sum(self.by_function.values())

    def _timed(self, name, function):
        def timed(*args, **kwargs):
            started = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                if name == "_ablation_kl":
                    self.ablation_seconds.append(time.perf_counter() - started)
                else:
                    self.by_function[name] += time.perf_counter() - started

        return timed


def bare_candidate_forward(candidate_model, batches) -> float:
    """One plain forward pass of the candidate alone over every batch (what one ablation is compared with)."""
    import torch

    started = time.perf_counter()
    with torch.no_grad():
        for input_ids in batches:
            candidate_model(input_ids=input_ids, use_cache=False).logits
    return time.perf_counter() - started


def run_analysis(reference_model, candidate_model, tokenizer, texts, spec) -> tuple[float, dict, dict]:
    """Seconds of analyse_models, its result, and the seconds of the layer phase's parts (and each ablation)."""
    from workers.pipelines.analysis import analyse_models

    with LayerPhaseTimer() as layer_phase:
        started = time.perf_counter()
        result = analyse_models(reference_model, candidate_model, tokenizer, texts, spec)
        seconds = time.perf_counter() - started
    return seconds, result, {**layer_phase.by_function, "ablations": layer_phase.ablation_seconds}


# --- memory, in a fresh process per token budget -------------------------------------------------------------------


def peak_memory_child(reference: Path, candidate: Path, max_tokens: int, copies: int) -> dict:
    """Runs in a subprocess: peak RSS growth during one default-spec analyse_models at max_tokens."""
    import gc

    import psutil

    from workers.pipelines.analysis import AnalysisSpec, analyse_models

    reference_model, candidate_model, tokenizer = load_pair(reference, candidate)
    warm_up(reference_model, candidate_model)
    texts = sample_texts(copies)
    gc.collect()
    process = psutil.Process()
    baseline = process.memory_info().rss
    peak = [baseline]
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], process.memory_info().rss)
            done.wait(0.005)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        result = analyse_models(reference_model, candidate_model, tokenizer, texts, AnalysisSpec(max_tokens=max_tokens))
    finally:
        done.set()
        sampler.join()
    peak[0] = max(peak[0], process.memory_info().rss)
    return {"tokens": result["tokens"], "peak_mb": round((peak[0] - baseline) / MIB, 1),
            "baseline_mb": round(baseline / MIB, 1), "seconds": round(result["seconds"], 3)}


def peak_memory(reference: Path, candidate: Path, max_tokens: int, copies: int) -> dict:
    output = subprocess.run(
        [sys.executable, __file__, "--memory-child", str(reference), str(candidate), str(max_tokens), str(copies)],
        check=True, capture_output=True, text=True, env={**os.environ, "TRANSFORMERS_VERBOSITY": "error"},
    ).stdout
    return json.loads(output.strip().splitlines()[-1])


# --- the benchmark -------------------------------------------------------------------------------------------------


def main() -> None:
    if sys.argv[1:2] == ["--memory-child"]:
        reference, candidate, max_tokens, copies = sys.argv[2:6]
        print(json.dumps(peak_memory_child(Path(reference), Path(candidate), int(max_tokens), int(copies))))
        return

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repetitions", type=int, default=5)
    parser.add_argument("--max-tokens", type=int, default=8192, help="tokens fed per model for the throughput")
    parser.add_argument("--layer-tokens", type=int, default=512)
    parser.add_argument("--tokens-small", type=int, default=2048)
    parser.add_argument("--tokens-large", type=int, default=16384)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--intermediate", type=int, default=704)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=4096)
    parser.add_argument("--context", type=int, default=512, help="max_position_embeddings = chunk length")
    parser.add_argument("--train-steps", type=int, default=30)
    parser.add_argument("--models", type=Path, help="reuse reference/ and candidate-nf4/ built there by an earlier "
                        "run (the shape flags are then ignored); built there when missing")
    args = parser.parse_args()

    import torch
    import transformers

    from workers.pipelines.analysis import AnalysisSpec

    transformers.utils.logging.disable_progress_bar()
    scratch = Path(tempfile.mkdtemp(prefix="bench-analysis-"))
    try:
        models = args.models or scratch
        reference, candidate = models / "reference", models / "candidate-nf4"
        if not (candidate / "config.json").exists():
            log(f"building a tiny Llama (hidden {args.hidden}, {args.layers} layers, vocab {args.vocab}) and its NF4")
            reference, candidate = build_models(models, args)
        reference_model, candidate_model, tokenizer = load_pair(reference, candidate)
        params = sum(parameter.numel() for parameter in reference_model.parameters())
        warm_up(reference_model, candidate_model)

        # Enough text for the largest budget: each copy of SAMPLE_TEXTS is about a thousand tokens.
        sample_tokens = sum(len(tokenizer.encode(text, add_special_tokens=False)) + 1 for text in sample_texts(1))
        copies = max(args.max_tokens, args.tokens_large) // sample_tokens + 2
        texts = sample_texts(copies)

        statistics_spec = AnalysisSpec(max_tokens=args.max_tokens, layer_tokens=0)
        layer_spec = AnalysisSpec(max_tokens=args.max_tokens, layer_tokens=args.layer_tokens)  # with ablations
        layer_only_spec = AnalysisSpec(max_tokens=args.max_tokens, layer_tokens=args.layer_tokens, ablation_top_n=0)
        chunks = list(pipeline_chunks(reference_model, tokenizer, texts, statistics_spec))
        stats_batches = [chunk.unsqueeze(0) for chunk in chunks]  # batch_size 1, the spec's default
        from workers.pipelines.analysis.chunks import layer_sequences

        layer_batches = layer_sequences(pipeline_chunks(reference_model, tokenizer, texts, layer_spec),
                                        args.layer_tokens)

        log("warm-up: one analysis with the layer phase and the bare passes, not timed")
        run_analysis(reference_model, candidate_model, tokenizer, texts, layer_spec)
        bare_forward(reference_model, candidate_model, stats_batches)

        rounds = []
        for repetition in range(args.repetitions):
            steps = {
                "statistics": lambda: run_analysis(reference_model, candidate_model, tokenizer, texts,
                                                   statistics_spec),
                "with_layers": lambda: run_analysis(reference_model, candidate_model, tokenizer, texts, layer_spec),
                "layers_only": lambda: run_analysis(reference_model, candidate_model, tokenizer, texts,
                                                    layer_only_spec),
                "bare_candidate_layer_tokens": lambda: bare_candidate_forward(candidate_model, layer_batches),
                "bare": lambda: bare_forward(reference_model, candidate_model, stats_batches),
                "bare_layer_tokens": lambda: bare_forward(reference_model, candidate_model, layer_batches),
            }
            order = list(steps) if repetition % 2 == 0 else list(reversed(steps))
            outcome = {name: steps[name]() for name in order}
            statistics_seconds, statistics_result, _ = outcome["statistics"]
            with_layers_seconds, layers_result, with_layers_parts = outcome["with_layers"]
            _, _, layer_parts = outcome["layers_only"]
            layer_phase_seconds = layer_parts["weight_errors"] + layer_parts["layer_errors"]
            ablations = with_layers_parts["ablations"]
            scored = statistics_result["tokens"]
            round_result = {
                "statistics_s": statistics_seconds,
                "bare_s": outcome["bare"],
                "with_layers_s": with_layers_seconds,
                "layer_phase_s": layer_phase_seconds,
                "weight_errors_s": layer_parts["weight_errors"],
                "layer_errors_s": layer_parts["layer_errors"],
                "bare_layer_tokens_s": outcome["bare_layer_tokens"],
                "with_layers_phase_s": with_layers_parts["weight_errors"] + with_layers_parts["layer_errors"],
                "ablation_s": sum(ablations) / len(ablations) if ablations else 0.0,
                "ablations": len(ablations),
                "bare_candidate_layer_tokens_s": outcome["bare_candidate_layer_tokens"],
                "tokens": scored,
                "layers": len(layers_result["layers"]),
            }
            rounds.append(round_result)
            log(f"round {repetition + 1}/{args.repetitions}: statistics {statistics_seconds:.2f} s vs bare "
                f"{outcome['bare']:.2f} s for {scored} scored tokens; layer phase {layer_phase_seconds:.2f} s vs bare "
                f"{outcome['bare_layer_tokens']:.3f} s over {args.layer_tokens} tokens")

        log(f"memory: fresh subprocesses at {args.tokens_small} and {args.tokens_large} tokens")
        small = peak_memory(reference, candidate, args.tokens_small, copies)
        large = peak_memory(reference, candidate, args.tokens_large, copies)
        log(f"memory: {small['peak_mb']} MiB at {small['tokens']} scored tokens, {large['peak_mb']} MiB at "
            f"{large['tokens']}")

        emit({
            "throughput_vs_limit": round(median([r["bare_s"] / r["statistics_s"] for r in rounds]), 3),
            "layer_phase_over_forward": round(median([r["layer_phase_s"] / r["bare_layer_tokens_s"] for r in rounds]),
                                              3),
            "ablation_over_forward": round(median([r["ablation_s"] / r["bare_candidate_layer_tokens_s"]
                                                   for r in rounds]), 3),
            # The ablated pass runs the reference (one module swapped), so this is its cost against what it runs;
            # where bitsandbytes' bf16 CPU kernels run the NF4 candidate faster than the float32 reference, the
            # candidate-based figure above is dominated by that speed difference.
            "ablation_over_reference_forward": round(median(
                [r["ablation_s"] / max(r["bare_layer_tokens_s"] - r["bare_candidate_layer_tokens_s"], 1e-9)
                 for r in rounds]), 3),
            "layer_phase_with_ablations_over_forward": round(median(
                [r["with_layers_phase_s"] / r["bare_layer_tokens_s"] for r in rounds]), 3),
            "ablation_s": round(median([r["ablation_s"] for r in rounds]), 4),
            "bare_candidate_layer_tokens_s": round(median([r["bare_candidate_layer_tokens_s"] for r in rounds]), 4),
            "tokens_small": small["tokens"],
            "tokens_large": large["tokens"],
            "peak_mb_small": small["peak_mb"],
            "peak_mb_large": large["peak_mb"],
            "memory_note": ("peak RSS growth of a fresh process during analyse_models (default spec, layer phase "
                            "included) over its RSS after loading both models and a warm-up pass; tokens are "
                            "scored tokens (fed tokens: --tokens-small/--tokens-large)"),
            "fed_tokens_small": args.tokens_small,
            "fed_tokens_large": args.tokens_large,
            "statistics_tokens_per_s": round(median([r["tokens"] / r["statistics_s"] for r in rounds]), 1),
            "limit_tokens_per_s": round(median([r["tokens"] / r["bare_s"] for r in rounds]), 1),
            "scored_tokens": rounds[0]["tokens"],
            "fed_tokens": args.max_tokens,
            "layer_tokens": args.layer_tokens,
            "layer_phase_s": round(median([r["layer_phase_s"] for r in rounds]), 3),
            "layer_phase_parts_s": {
                "weight_errors": round(median([r["weight_errors_s"] for r in rounds]), 3),
                "hooked_passes": round(median([r["layer_errors_s"] for r in rounds]), 3),
            },
            "statistics_overhead_us_per_scored_token": round(
                median([(r["statistics_s"] - r["bare_s"]) / r["tokens"] for r in rounds]) * 1e6, 1),
            "bare_layer_tokens_s": round(median([r["bare_layer_tokens_s"] for r in rounds]), 4),
            "ablation_top_n": layer_spec.ablation_top_n,
            "layers_reported": rounds[0]["layers"],
            "rounds": [{key: round(value, 4) if isinstance(value, float) else value for key, value in r.items()}
                       for r in rounds],
            "repetitions": args.repetitions,
            "context_length": int(chunks[0].numel()),
            "batch_size": statistics_spec.batch_size,
            "measured": "pipeline (analyse_models in process)",
            "model_shape": {"hidden": args.hidden, "intermediate": args.intermediate, "layers": args.layers,
                            "heads": args.heads, "vocab": args.vocab, "params": params},
            "candidate": "nf4 (quantize_version)",
            "device": "cpu",
            "torch_threads": torch.get_num_threads(),
            "machine": machine_description(),
            "versions": library_versions("torch", "transformers", "bitsandbytes", "numpy"),
        })
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
