"""Records/s of the evaluation pipeline against lm-eval's own simple_evaluate, same tiny model, same task.

    .venv/bin/python bench/evaluation.py [--records 256] [--repetitions 5] [--batch-size 16] [--threads 1] ...

Builds a tiny Llama (workers.pipelines.tiny_model, random weights: throughput does not depend on their values)
and a multiple-choice dataset from SAMPLE_TEXTS (the first half of a sentence as the prompt, its second half and
three other sentences' second halves as choices), then alternates, `--repetitions` times each:

- evaluation: workers.pipelines.evaluation.evaluate_model(model_dir, records, spec) as a job calls it: loads the
  model and tokenizer, builds the in-memory lm-eval task, runs lm-eval's `evaluate`, computes the metrics.
- lm_eval: lm_eval.simple_evaluate(model="hf", model_args={"pretrained": model_dir, ...}, tasks=[config]) with
  the task a user would write for the same JSONL file (dataset_path "json", data_files) and the same batch size,
  device and dtype: it loads the model too, reads the file through `datasets`, and adds its per-call extras
  (global reseeding, environment report, git describe, a hub lookup of the model that fails at once offline).

Both are timed with the wall clock around the whole call; samples/s = records / seconds, and
evaluation_over_lm_eval is the median of the per-round ratios, after one untimed warm-up of each (imports,
the `datasets` cache of the JSONL file). evaluation_over_lm_eval_cpu is the same ratio of this process's CPU
seconds (simple_evaluate's pip and git subprocesses left out) and evaluation_over_lm_eval_fastest that of the
fastest round of each; both are steadier than the median wall-clock ratio on a shared machine. Both sides must
give the same acc, or the run stops. torch runs one intra-op thread by default (--threads): on a machine whose
cores are busy with other work, more threads spin against each other and the timings swing several-fold.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

# Before huggingface_hub is imported: it reads these once. Nothing here may reach the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.stack import emit, library_versions, log, machine_description, median  # noqa: E402

DISTRACTORS = 3


def multiple_choice_records(count: int) -> list[dict]:
    """Sentence halves from SAMPLE_TEXTS: the true second half among DISTRACTORS others, the answer rotating.

    Each pass over the sentences draws other distractors, so no two records are the same request: lm-eval runs
    identical requests once, which would flatter both sides.
    """
    from workers.pipelines.tiny_model import SAMPLE_TEXTS

    halves = []
    for text in SAMPLE_TEXTS:
        words = text.split()
        halves.append((" ".join(words[: len(words) // 2]), " ".join(words[len(words) // 2 :])))
    records, seen = [], set()
    for index in range(count):
        prompt, ending = halves[index % len(halves)]
        stride = 1 + index // len(halves)
        others = [halves[(index + step * stride) % len(halves)][1] for step in range(1, DISTRACTORS + 1)]
        answer = index % (DISTRACTORS + 1)
        choices = others[:answer] + [ending] + others[answer:]
        if len(set(choices)) != len(choices) or (prompt, tuple(choices)) in seen:
            raise SystemExit(f"--records {count} is more than this generator makes distinct records for")
        seen.add((prompt, tuple(choices)))
        records.append({"prompt": prompt, "choices": choices, "answer": answer})
    return records


def lm_eval_task_config(jsonl_path: Path) -> dict:
    """The lm-eval task a user would write for the same JSONL file."""
    return {
        "task": "bench_multiple_choice",
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(jsonl_path)}},
        "test_split": "test",
        "output_type": "multiple_choice",
        "doc_to_text": "prompt",
        "doc_to_choice": "choices",
        "doc_to_target": "answer",
        "num_fewshot": 0,
        "metric_list": [
            {"metric": "acc", "aggregation": "mean", "higher_is_better": True},
            {"metric": "acc_norm", "aggregation": "mean", "higher_is_better": True},
        ],
    }


def run_evaluation(model_dir: Path, records: list[dict], batch_size: int) -> dict:
    from workers.pipelines.evaluation import EvaluationSpec, evaluate_model

    started, cpu_started = time.perf_counter(), time.process_time()
    result = evaluate_model(model_dir, records, EvaluationSpec(batch_size=batch_size))
    return {
        "s": time.perf_counter() - started,
        "cpu_s": time.process_time() - cpu_started,
        "acc": result["metrics"]["acc"]["value"],
    }


def run_lm_eval(model_dir: Path, jsonl_path: Path, batch_size: int, device: str) -> dict:
    import lm_eval
    from lm_eval.tasks import TaskManager

    # Built outside the timing: indexing lm-eval's built-in task YAML is not part of evaluating this task.
    task_manager = TaskManager(include_defaults=False)
    started, cpu_started = time.perf_counter(), time.process_time()
    results = lm_eval.simple_evaluate(
        model="hf",
        model_args={"pretrained": str(model_dir), "dtype": "float32", "device": device},
        tasks=[lm_eval_task_config(jsonl_path)],
        batch_size=batch_size,
        task_manager=task_manager,
    )
    return {
        "s": time.perf_counter() - started,
        "cpu_s": time.process_time() - cpu_started,
        "acc": results["results"]["bench_multiple_choice"]["acc,none"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=256)
    parser.add_argument("--repetitions", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--intermediate", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads, 0 for torch's default; with more threads than idle cores, torch's spinning "
        "threads make every timing several times slower and erratic",
    )
    args = parser.parse_args()

    import torch

    from workers.pipelines.loading import pick_device
    from workers.pipelines.tiny_model import build_tiny_llama

    if args.threads:
        torch.set_num_threads(args.threads)
    scratch = Path(tempfile.mkdtemp(prefix="bench-evaluation-"))
    os.environ.setdefault("HF_DATASETS_CACHE", str(scratch / "datasets-cache"))
    try:
        model_dir = build_tiny_llama(
            scratch / "model",
            hidden_size=args.hidden,
            intermediate_size=args.intermediate,
            num_layers=args.layers,
            num_heads=args.heads,
        )
        records = multiple_choice_records(args.records)
        jsonl_path = scratch / "records.jsonl"
        jsonl_path.write_text("".join(json.dumps(record) + "\n" for record in records), encoding="utf-8")
        device = pick_device()

        log("warm-up (imports, datasets cache)")
        run_evaluation(model_dir, records, args.batch_size)
        run_lm_eval(model_dir, jsonl_path, args.batch_size, device)

        rounds = []
        for repetition in range(args.repetitions):
            order = ("evaluation", "lm_eval") if repetition % 2 == 0 else ("lm_eval", "evaluation")
            timings = {}
            for name in order:
                if name == "evaluation":
                    timings[name] = run_evaluation(model_dir, records, args.batch_size)
                else:
                    timings[name] = run_lm_eval(model_dir, jsonl_path, args.batch_size, device)
            ours, theirs = timings["evaluation"], timings["lm_eval"]
            if abs(ours["acc"] - theirs["acc"]) > 1e-9:
                raise SystemExit(f"acc differs: evaluation {ours['acc']} vs lm-eval {theirs['acc']}")
            rounds.append(
                {
                    "evaluation_s": ours["s"],
                    "lm_eval_s": theirs["s"],
                    "evaluation_cpu_s": ours["cpu_s"],
                    "lm_eval_cpu_s": theirs["cpu_s"],
                    "acc": ours["acc"],
                }
            )
            log(
                f"round {repetition + 1}: evaluation {ours['s']:.3f} s ({ours['cpu_s']:.3f} s CPU), lm-eval "
                f"{theirs['s']:.3f} s ({theirs['cpu_s']:.3f} s CPU), load average {os.getloadavg()[0]:.2f}"
            )

        emit(
            {
                "evaluation_samples_per_s": round(median([args.records / r["evaluation_s"] for r in rounds]), 1),
                "lm_eval_samples_per_s": round(median([args.records / r["lm_eval_s"] for r in rounds]), 1),
                "evaluation_over_lm_eval": round(median([r["lm_eval_s"] / r["evaluation_s"] for r in rounds]), 3),
                # The key shared/BENCHMARKS.md names for the same ratio.
                "samples_ratio": round(median([r["lm_eval_s"] / r["evaluation_s"] for r in rounds]), 3),
                # Fastest round of each: other work on the machine only ever adds time, so the minimum is the least
                # disturbed measurement.
                "evaluation_over_lm_eval_fastest": round(
                    min(r["lm_eval_s"] for r in rounds) / min(r["evaluation_s"] for r in rounds), 3
                ),
                # CPU seconds of this process: less disturbed than the wall clock when other work shares the machine.
                "evaluation_over_lm_eval_cpu": round(
                    median([r["lm_eval_cpu_s"] / r["evaluation_cpu_s"] for r in rounds]), 3
                ),
                "records": args.records,
                "choices_per_record": DISTRACTORS + 1,
                "batch_size": args.batch_size,
                "repetitions": args.repetitions,
                "acc": rounds[0]["acc"],
                "rounds": [{key: round(value, 4) for key, value in r.items()} for r in rounds],
                "model_shape": {
                    "hidden": args.hidden,
                    "intermediate": args.intermediate,
                    "layers": args.layers,
                    "heads": args.heads,
                },
                "device": device,
                "torch_threads": torch.get_num_threads(),
                "machine": machine_description(),
                "versions": library_versions("lm_eval", "torch", "transformers", "datasets"),
            }
        )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
