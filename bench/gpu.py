"""The pipelines on a GPU beside the bare library calls, on a 7B-shaped Llama (for a lent GPU machine).

    .venv/bin/python bench/gpu.py [--shape 7b|tiny] [--analysis-tokens 16384] [--layer-tokens 512] [--lora-steps 20]
                                  [--gptq-samples 16] [--gptq-length 512]

Without a CUDA device it prints {"skipped": "no CUDA device", ...} and exits 0 (`--shape tiny --device cpu` runs
every step on a tiny model instead, to check the script itself on any machine; its figures mean nothing).

The model: Llama-2-7B's shape (hidden 4096, 32 layers, intermediate 11008, 32 heads, vocab 32000), random
weights made directly on the GPU in bfloat16 and saved with save_pretrained (13.5 GB in 5 GB shards) to a
scratch directory, since the pipelines read version directories. Then, in this process, each pipeline beside
the bare calls it stands for, on the same files and data:

- quantize_over_bare: workers.pipelines.quantize.quantize_version (nf4) ÷ a bare
  from_pretrained(quantization_config=BitsAndBytesConfig(nf4, same settings), device_map cuda) + save_pretrained.
- analysis_over_limit: scored tokens/s of analyse_models (statistics only, layer_tokens 0) ÷ tokens/s of one
  bare forward pass of each model over the same chunks (the pipeline's own chunking): ≥ 0.95 is the target.
- layer_phase_over_forward: the per-layer phase without ablations (weight_errors + layer_errors, ablation_top_n
  0, timed around the pipeline's own calls) ÷ one bare forward pass of both models over the same layer tokens.
- lora_steps_ratio: train_lora's steps/s (its metadata, training loop only) ÷ a bare peft loop (r 8 on
  q/k/v, batch 4 x 512 tokens, AdamW) on the NF4 version with the same batches.
- gptq_s: workers.pipelines.calibrated.run.quantize_calibrated_version (GPTQ 4-bit, group 128, symmetric: a
  compressed-tensors pack-quantized checkpoint) on the bf16 model with `--gptq-samples` calibration texts of
  `--gptq-length` tokens, timed once after the other stages (their runs have warmed CUDA up). No GPTQ library
  installs beside our pins (see run.py), so there is no bare call beside it; `--gptq-samples 0` skips it.
- peak_gpu_mb: the largest torch.cuda.max_memory_allocated reading of the run (taken after every step, since
  each pipeline resets the statistics when it starts); the pipelines' own peak_gpu_bytes per step beside it.

Every timed call runs once untimed first (CUDA kernels and caches warm up) and `--repetitions` times after;
ratios are medians of per-round ratios. Reference figures on one H100 for this shape: bare NF4 load 5.5 s + save
4.4 s; two bare forward passes 15.1k tokens/s; bare QLoRA r=8 q/k/v 4x512 0.30 s/step at 42 GB peak.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.stack import emit, library_versions, log, machine_description, median  # noqa: E402

MIB = 1024 * 1024
SHAPES = {
    "7b": {"hidden_size": 4096, "num_hidden_layers": 32, "intermediate_size": 11008, "num_attention_heads": 32,
           "num_key_value_heads": 32, "vocab_size": 32000},
    "tiny": {"hidden_size": 256, "num_hidden_layers": 2, "intermediate_size": 704, "num_attention_heads": 4,
             "num_key_value_heads": 4, "vocab_size": 4096},
}
TOKENIZER_SIZE = 4096
LORA_TARGETS = ["q_proj", "k_proj", "v_proj"]


# Peaks seen so far: each pipeline resets CUDA's peak statistics when it starts (workers.pipelines.memory), so
# the run's peak is the largest of the readings taken after every step.
GPU_PEAKS: list[int] = []


def synchronize(device: str) -> None:
    """Wait for the GPU's queued work (so the clock stops after it) and note the peak memory so far."""
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()
        GPU_PEAKS.append(int(torch.cuda.max_memory_allocated()))


def note_pipeline_peak(outcome: dict) -> dict:
    if outcome.get("peak_gpu_bytes"):
        GPU_PEAKS.append(int(outcome["peak_gpu_bytes"]))
    return outcome


def build_model(directory: Path, shape: dict, device: str) -> int:
    """Random bf16 weights made on `device`, saved as a sharded version directory with the tiny tokenizer."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from workers.pipelines.tiny_model import BOS_TOKEN, EOS_TOKEN, PAD_TOKEN, SPECIAL_TOKENS, build_tokenizer

    config = LlamaConfig(**shape, max_position_embeddings=4096, tie_word_embeddings=False, dtype="bfloat16",
                         bos_token_id=SPECIAL_TOKENS.index(BOS_TOKEN), eos_token_id=SPECIAL_TOKENS.index(EOS_TOKEN),
                         pad_token_id=SPECIAL_TOKENS.index(PAD_TOKEN))
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    params = sum(parameter.numel() for parameter in model.parameters())
    model.save_pretrained(str(directory), max_shard_size="5GB")
    build_tokenizer(TOKENIZER_SIZE).save_pretrained(str(directory))
    del model
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return params


def texts_for(tokens: int) -> list[str]:
    from workers.pipelines.tiny_model import SAMPLE_TEXTS

    return list(SAMPLE_TEXTS) * (tokens // (15 * len(SAMPLE_TEXTS)) + 2)


# --- quantize ------------------------------------------------------------------------------------------------------


def time_pipeline_quantize(source: Path, scratch: Path, number: int) -> tuple[float, dict]:
    from workers.pipelines.quantize import QuantizeSpec, quantize_version

    out_dir = scratch / f"nf4-pipeline-{number}"
    started = time.perf_counter()
    result = quantize_version(source, out_dir, QuantizeSpec(method="nf4"))
    return time.perf_counter() - started, note_pipeline_peak(result)


def time_bare_quantize(source: Path, scratch: Path, number: int, device: str) -> float:
    """What quantize_version stands for: a bitsandbytes load with the job's settings and a save."""
    import torch
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    out_dir = scratch / f"nf4-bare-{number}"
    started = time.perf_counter()
    config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=False,
                                bnb_4bit_compute_dtype=torch.float32, llm_int8_skip_modules=["lm_head"])
    model = AutoModelForCausalLM.from_pretrained(str(source), quantization_config=config, device_map={"": device},
                                                 dtype=torch.bfloat16)
    model.save_pretrained(str(out_dir), max_shard_size="5GB")
    synchronize(device)
    seconds = time.perf_counter() - started
    del model
    shutil.rmtree(out_dir, ignore_errors=True)
    return seconds


# --- analysis ------------------------------------------------------------------------------------------------------


def bare_forward(reference_model, candidate_model, batches, device: str) -> float:
    import torch

    synchronize(device)
    started = time.perf_counter()
    with torch.no_grad():
        for input_ids in batches:
            reference_model(input_ids=input_ids, use_cache=False).logits
            candidate_model(input_ids=input_ids, use_cache=False).logits
    synchronize(device)
    return time.perf_counter() - started


def analysis_rounds(reference: Path, candidate: Path, args, device: str) -> dict:
    from bench.analysis import LayerPhaseTimer, pipeline_chunks
    from workers.pipelines.analysis import AnalysisSpec, analyse_models
    from workers.pipelines.analysis.chunks import layer_sequences
    from workers.pipelines.loading import load_causal_lm
    from workers.pipelines.memory import PeakMemory

    reference_model, tokenizer = load_causal_lm(reference, device=device)
    candidate_model, _ = load_causal_lm(candidate, device=device)
    texts = texts_for(args.analysis_tokens)
    statistics_spec = AnalysisSpec(max_tokens=args.analysis_tokens, layer_tokens=0, batch_size=args.batch_size)
    layer_spec = AnalysisSpec(max_tokens=args.analysis_tokens, layer_tokens=args.layer_tokens, ablation_top_n=0,
                              batch_size=args.batch_size)
    import torch

    chunks = list(pipeline_chunks(reference_model, tokenizer, texts, statistics_spec))
    batches = [torch.stack(chunks[start:start + args.batch_size]).to(device)
               for start in range(0, len(chunks), args.batch_size)]
    layer_batches = [sequence.to(device) for sequence in
                     layer_sequences(pipeline_chunks(reference_model, tokenizer, texts, layer_spec), args.layer_tokens)]

    def statistics():
        synchronize(device)
        started = time.perf_counter()
        result = analyse_models(reference_model, candidate_model, tokenizer, texts, statistics_spec)
        synchronize(device)
        return time.perf_counter() - started, result

    def layer_phase():
        with LayerPhaseTimer() as timer:
            analyse_models(reference_model, candidate_model, tokenizer, texts, layer_spec)
        return timer.seconds

    log("analysis: warm-up")
    statistics()
    layer_phase()
    bare_forward(reference_model, candidate_model, batches, device)
    rounds = []
    with PeakMemory(device) as peak:
        for repetition in range(args.repetitions):
            statistics_s, result = statistics()
            bare_s = bare_forward(reference_model, candidate_model, batches, device)
            layer_s = layer_phase()
            bare_layer_s = bare_forward(reference_model, candidate_model, layer_batches, device)
            rounds.append({"statistics_s": statistics_s, "bare_s": bare_s, "layer_phase_s": layer_s,
                           "bare_layer_s": bare_layer_s, "tokens": result["tokens"]})
            log(f"analysis round {repetition + 1}: statistics {statistics_s:.2f} s, bare {bare_s:.2f} s, "
                f"layer phase {layer_s:.2f} s, bare over layer tokens {bare_layer_s:.3f} s")
    note_pipeline_peak(peak.figures())
    return {  # the two models go with this frame, before the LoRA runs

        "analysis_over_limit": round(median([r["bare_s"] / r["statistics_s"] for r in rounds]), 3),
        "layer_phase_over_forward": round(median([r["layer_phase_s"] / r["bare_layer_s"] for r in rounds]), 3),
        "analysis_tokens_per_s": round(median([r["tokens"] / r["statistics_s"] for r in rounds]), 1),
        "limit_tokens_per_s": round(median([r["tokens"] / r["bare_s"] for r in rounds]), 1),
        "scored_tokens": rounds[0]["tokens"],
        "analysis_peak_gpu_mb": round((peak.figures()["peak_gpu_bytes"] or 0) / MIB),
    }


# --- LoRA ----------------------------------------------------------------------------------------------------------


def lora_records(tokenizer, max_length: int, count: int) -> list[dict]:
    """Text records of about max_length tokens each (sample sentences joined), so batches are full width."""
    from workers.pipelines.tiny_model import SAMPLE_TEXTS

    records, sentence = [], 0
    for _ in range(count):
        words, length = [], 0
        while length < max_length:
            text = SAMPLE_TEXTS[sentence % len(SAMPLE_TEXTS)]
            sentence += 1
            words.append(text)
            length += len(tokenizer.encode(text, add_special_tokens=False)) + 1
        records.append({"text": " ".join(words)})
    return records


def time_pipeline_lora(base: Path, records: list[dict], scratch: Path, number: int, args) -> dict:
    from workers.pipelines.lora import LoraSpec, train_lora

    spec = LoraSpec(r=8, alpha=16, target_modules=tuple(LORA_TARGETS), steps=args.lora_steps, batch_size=4,
                    max_length=args.lora_length, eval_fraction=0.0)
    return note_pipeline_peak(train_lora(base, records, scratch / f"adapter-{number}", spec))


def time_bare_lora(base: Path, records: list[dict], args, device: str) -> float:
    """A plain peft loop on the NF4 version with the pipeline's batches; returns steps per second."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(base))
    encoded = [tokenizer(record["text"], truncation=True, max_length=args.lora_length)["input_ids"]
               for record in records]
    model = AutoModelForCausalLM.from_pretrained(str(base), device_map={"": device})
    torch.manual_seed(0)
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.05, target_modules=LORA_TARGETS,
                                             bias="none", task_type="CAUSAL_LM"))
    model.train()
    trainable = [parameter for parameter in model.parameters() if parameter.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=2e-4, weight_decay=0.0)
    batches = []
    for step in range(args.lora_steps):
        rows = [encoded[(step * 4 + index) % len(encoded)] for index in range(4)]
        width = max(len(row) for row in rows)
        input_ids = torch.full((4, width), tokenizer.pad_token_id, dtype=torch.long)
        labels = torch.full((4, width), -100, dtype=torch.long)
        for index, row in enumerate(rows):
            input_ids[index, :len(row)] = torch.tensor(row)
            labels[index, :len(row)] = torch.tensor(row)
        batches.append({"input_ids": input_ids.to(device), "labels": labels.to(device),
                        "attention_mask": (labels != -100).long().to(device)})
    synchronize(device)
    started = time.perf_counter()
    for batch in batches:
        loss = model(**batch, use_cache=False).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    float(loss.detach())
    synchronize(device)
    seconds = time.perf_counter() - started
    del model, optimizer
    return args.lora_steps / seconds


# --- GPTQ ----------------------------------------------------------------------------------------------------------


def time_pipeline_gptq(source: Path, scratch: Path, args, device: str) -> dict:
    """The pipeline's GPTQ on the bf16 model with a small calibration set; its output is deleted afterwards."""
    from workers.pipelines.calibrated.run import quantize_calibrated_version
    from workers.pipelines.calibrated.spec import CalibratedQuantizeSpec

    spec = CalibratedQuantizeSpec(method="gptq", bits=4, group_size=128, calibration_samples=args.gptq_samples,
                                  max_length=args.gptq_length)
    # Sample sentences joined into texts of about twice max_length tokens (the pipeline cuts them to max_length).
    sentences = texts_for(2 * args.gptq_length * args.gptq_samples)
    per_text = max(1, len(sentences) // args.gptq_samples)
    texts = [" ".join(sentences[index * per_text:(index + 1) * per_text]) for index in range(args.gptq_samples)]
    out_dir = scratch / "gptq-pipeline"
    synchronize(device)
    started = time.perf_counter()
    result = note_pipeline_peak(quantize_calibrated_version(source, out_dir, spec, texts))
    synchronize(device)
    seconds = time.perf_counter() - started
    shutil.rmtree(out_dir, ignore_errors=True)
    log(f"gptq: {seconds:.1f} s ({result['calibration']['samples']} samples, {result['calibration']['tokens']} "
        f"tokens, {len(result['quantized_modules'])} layers, {result['format']})")
    return {
        "gptq_s": round(seconds, 2),
        "gptq_pipeline_wall_s": result["wall_seconds"],
        "gptq_peak_gpu_mb": round((result.get("peak_gpu_bytes") or 0) / MIB),
        "gptq_calibration_samples": result["calibration"]["samples"],
        "gptq_tokens": result["calibration"]["tokens"],
        "gptq_format": result["format"],
        "gptq_size_ratio": result["size_ratio"],
        "gptq_settings": {"bits": 4, "group_size": 128, "sym": True, "max_length": args.gptq_length},
    }


# --- the benchmark -------------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="7b")
    parser.add_argument("--device", default=None, help="cuda (default when present); cpu only with --shape tiny")
    parser.add_argument("--repetitions", type=int, default=3)
    parser.add_argument("--analysis-tokens", type=int, default=16384)
    parser.add_argument("--layer-tokens", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=8, help="analysis chunks per forward pass")
    parser.add_argument("--lora-steps", type=int, default=20)
    parser.add_argument("--lora-length", type=int, default=512)
    parser.add_argument("--gptq-samples", type=int, default=16, help="calibration texts for GPTQ (0: skip it)")
    parser.add_argument("--gptq-length", type=int, default=512, help="tokens per GPTQ calibration text")
    parser.add_argument("--scratch", type=Path, default=None, help="where the model directories go (~20 GB)")
    args = parser.parse_args()

    import torch
    import transformers

    device = args.device or ("cuda" if torch.cuda.is_available() else None)
    if device is None:
        emit({"skipped": "no CUDA device", "device": "cpu", "machine": machine_description()})
        return
    if device == "cpu" and args.shape != "tiny":
        sys.exit("--device cpu is a dry run of the script: use it with --shape tiny only.")
    transformers.utils.logging.disable_progress_bar()
    from workers.pipelines.loading import device_description
    from workers.pipelines.tiny_model import build_tokenizer

    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    scratch = Path(tempfile.mkdtemp(prefix="bench-gpu-", dir=args.scratch))
    try:
        source = scratch / "bf16"
        log(f"building a {args.shape}-shaped Llama in bf16 on {device}")
        started = time.perf_counter()
        params = build_model(source, SHAPES[args.shape], device)
        log(f"built {params:,} parameters in {time.perf_counter() - started:.0f} s")

        log("quantize: warm-up, then pipeline and bare in alternating order")
        time_pipeline_quantize(source, scratch, 0)
        time_bare_quantize(source, scratch, 0, device)
        quantize_rounds, quantize_result = [], {}
        for repetition in range(args.repetitions):
            if repetition % 2 == 0:
                pipeline_s, quantize_result = time_pipeline_quantize(source, scratch, repetition + 1)
                bare_s = time_bare_quantize(source, scratch, repetition + 1, device)
            else:
                bare_s = time_bare_quantize(source, scratch, repetition + 1, device)
                pipeline_s, quantize_result = time_pipeline_quantize(source, scratch, repetition + 1)
            quantize_rounds.append({"pipeline_s": pipeline_s, "bare_s": bare_s})
            log(f"quantize round {repetition + 1}: pipeline {pipeline_s:.1f} s, bare {bare_s:.1f} s")
        candidate = scratch / "nf4-pipeline-1"
        for extra in range(2, args.repetitions + 1):
            shutil.rmtree(scratch / f"nf4-pipeline-{extra}", ignore_errors=True)
        shutil.rmtree(scratch / "nf4-pipeline-0", ignore_errors=True)

        analysis = analysis_rounds(source, candidate, args, device)

        tokenizer = build_tokenizer(TOKENIZER_SIZE)
        records = lora_records(tokenizer, args.lora_length, count=64)
        log("lora: warm-up, then pipeline and bare")
        time_pipeline_lora(candidate, records, scratch, 0, args)
        time_bare_lora(candidate, records, args, device)
        lora_rounds, lora_result = [], {}
        for repetition in range(args.repetitions):
            lora_result = time_pipeline_lora(candidate, records, scratch, repetition + 1, args)
            bare = time_bare_lora(candidate, records, args, device)
            lora_rounds.append({"pipeline_steps_per_s": lora_result["steps_per_second"], "bare_steps_per_s": bare})
            log(f"lora round {repetition + 1}: pipeline {lora_result['steps_per_second']:.2f} steps/s, bare "
                f"{bare:.2f} steps/s")

        gptq = {}
        if args.gptq_samples > 0:
            log(f"gptq: {args.gptq_samples} calibration texts of up to {args.gptq_length} tokens")
            gptq = time_pipeline_gptq(source, scratch, args, device)

        synchronize(device)
        peak = max(GPU_PEAKS) if GPU_PEAKS else None
        emit({
            "quantize_over_bare": round(median([r["pipeline_s"] / r["bare_s"] for r in quantize_rounds]), 3),
            "analysis_over_limit": analysis.pop("analysis_over_limit"),
            "layer_phase_over_forward": analysis.pop("layer_phase_over_forward"),
            "lora_steps_ratio": round(median([r["pipeline_steps_per_s"] / r["bare_steps_per_s"]
                                              for r in lora_rounds]), 3),
            "peak_gpu_mb": round(peak / MIB) if peak is not None else None,
            "device": device_description(device),
            "quantize_pipeline_s": round(median([r["pipeline_s"] for r in quantize_rounds]), 2),
            "quantize_bare_s": round(median([r["bare_s"] for r in quantize_rounds]), 2),
            "quantize_peak_gpu_mb": round((quantize_result.get("peak_gpu_bytes") or 0) / MIB),
            **analysis,
            "lora_pipeline_steps_per_s": round(median([r["pipeline_steps_per_s"] for r in lora_rounds]), 3),
            "lora_bare_steps_per_s": round(median([r["bare_steps_per_s"] for r in lora_rounds]), 3),
            "lora_peak_gpu_mb": round((lora_result.get("peak_gpu_bytes") or 0) / MIB),
            **gptq,
            "params": params,
            "shape": {"name": args.shape, **SHAPES[args.shape]},
            "dtype": "bfloat16",
            "repetitions": args.repetitions,
            "analysis_batch_size": args.batch_size,
            "lora": {"r": 8, "targets": LORA_TARGETS, "batch_size": 4, "length": args.lora_length,
                     "steps": args.lora_steps},
            "machine": machine_description(),
            "versions": library_versions("torch", "transformers", "bitsandbytes", "peft", "accelerate",
                                         "compressed-tensors"),
        })
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
