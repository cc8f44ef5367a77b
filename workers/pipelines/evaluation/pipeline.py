"""Evaluate a model version on a task dataset through lm-eval, and compare two versions' results."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from workers.pipelines import loading
from workers.pipelines.errors import PipelineInputError
from workers.pipelines.evaluation.metrics import BOOTSTRAP_SEED, classification_report
from workers.pipelines.evaluation.records import CLASSIFICATION, detect_task_type, label_set

MAX_BATCH_SIZE = 256
MAX_NEW_TOKENS = 1024
MIN_BOOTSTRAP_ITERS, MAX_BOOTSTRAP_ITERS = 100, 100_000
# Proportions (value in [0, 1]) whose deltas compare() gives in percentage points.
PROPORTION_METRICS = ("acc", "acc_norm", "accuracy", "exact_match", "macro_f1", "token_f1")
F1_METRICS = ("macro_f1", "token_f1")

ProgressCallback = Callable[[int, str], None]


def _ignore_progress(percent: int, message: str) -> None:
    pass


@dataclass
class EvaluationSpec:
    """What the user asked for: how many records, the batch size, and the task's prompt and decoding settings."""

    limit: int | None = None  # evaluate the first `limit` records only; None for all
    batch_size: int = 8
    max_new_tokens: int = 32  # generation tasks: longest answer decoded
    classification_prompt: str = "{text}\nLabel:"  # classification tasks: the context each label is scored after
    bootstrap_iters: int = 1000  # resamples for the standard errors lm-eval has no closed form for


def validate_evaluation_spec(spec: EvaluationSpec) -> None:
    """Raise PipelineInputError when a setting of spec is out of range or of the wrong type."""
    if spec.limit is not None and not _is_int_in(spec.limit, 1, None):
        raise PipelineInputError(
            f"limit must be a whole number of records of at least 1 (or unset), not {spec.limit!r}."
        )
    if not _is_int_in(spec.batch_size, 1, MAX_BATCH_SIZE):
        raise PipelineInputError(
            f"batch_size must be a whole number from 1 to {MAX_BATCH_SIZE}, not {spec.batch_size!r}."
        )
    if not _is_int_in(spec.max_new_tokens, 1, MAX_NEW_TOKENS):
        raise PipelineInputError(
            f"max_new_tokens must be a whole number from 1 to {MAX_NEW_TOKENS}, not {spec.max_new_tokens!r}."
        )
    if not _is_int_in(spec.bootstrap_iters, MIN_BOOTSTRAP_ITERS, MAX_BOOTSTRAP_ITERS):
        raise PipelineInputError(
            f"bootstrap_iters must be a whole number from {MIN_BOOTSTRAP_ITERS} to {MAX_BOOTSTRAP_ITERS}, "
            f"not {spec.bootstrap_iters!r}."
        )
    prompt = spec.classification_prompt
    try:
        valid_prompt = isinstance(prompt, str) and "{text}" in prompt and bool(prompt.format(text="x").strip())
    except (IndexError, KeyError, ValueError):  # other {fields} or stray braces
        valid_prompt = False
    if not valid_prompt:
        raise PipelineInputError(
            f"classification_prompt must be text containing {{text}} and no other {{...}} field, such as "
            f"'{{text}}\\nLabel:', not {prompt!r}; write literal braces as {{{{ and }}}}."
        )


def evaluate_model(
    model_dir: Path,
    records: list[dict],
    spec: EvaluationSpec,
    *,
    adapter_dir: Path | None = None,
    report: ProgressCallback = _ignore_progress,
) -> dict:
    """Score the version in model_dir (with adapter_dir's LoRA on top, if given) on records through lm-eval."""
    started = time.monotonic()
    report(0, "Checking the evaluation settings and the dataset")
    validate_evaluation_spec(spec)
    task_type = detect_task_type(records)
    # The label set is the whole dataset's, so a limited run still chooses among every label.
    labels = label_set(records) if task_type == CLASSIFICATION else None
    evaluated = records if spec.limit is None else records[: spec.limit]

    report(5, "Loading the model and its adapter" if adapter_dir is not None else "Loading the model")
    model, tokenizer = loading.load_causal_lm(Path(model_dir), adapter_dir=adapter_dir)
    device_type = next(model.parameters()).device.type
    # Imported here: lm-eval takes seconds to import, and only evaluation jobs need it.
    from workers.pipelines.evaluation import harness

    task = harness.build_task(
        task_type,
        evaluated,
        labels=labels,
        classification_prompt=spec.classification_prompt,
        max_new_tokens=spec.max_new_tokens,
    )
    report(10, f"Running {len(evaluated)} {task_type.replace('_', ' ')} records through lm-eval")
    run = harness.run_task(
        model,
        tokenizer,
        task,
        batch_size=spec.batch_size,
        bootstrap_iters=spec.bootstrap_iters,
        report=_scaled_progress(report, 10, 90),
    )
    del model, task
    if device_type == "cuda":
        torch.cuda.empty_cache()  # the worker process lives on; give the next job the memory

    report(95, "Computing the metrics")
    result = {"task_type": task_type, "metrics": run.metrics}
    if task_type == CLASSIFICATION:
        label_index = {label: index for index, label in enumerate(labels)}
        gold = [label_index[record["label"]] for record in evaluated]
        classes = classification_report(
            gold, run.predicted_choices(), labels, bootstrap_iters=spec.bootstrap_iters, seed=BOOTSTRAP_SEED
        )
        result["metrics"] = {"accuracy": run.metrics["acc"], "macro_f1": classes["macro_f1"]}
        result["per_class"] = classes["per_class"]
        result["confusion"] = classes["confusion"]
    result["samples"] = len(evaluated)
    result["seconds"] = round(time.monotonic() - started, 3)
    result["harness"] = {"name": harness.HARNESS_NAME, "version": harness.harness_version()}
    summary = ", ".join(f"{name} {metric['value']:.4f}" for name, metric in result["metrics"].items())
    report(100, f"Evaluated {len(evaluated)} records: {summary}")
    return result


def compare(reference_result: dict, candidate_result: dict) -> dict:
    """Candidate minus reference per metric: {delta, stderr} in points (x100); F1 metrics add f1_relative.

    The stderr treats the two results as independent, which overstates it: both versions read the same records,
    so their errors are positively correlated.
    """
    for name, result in (("reference", reference_result), ("candidate", candidate_result)):
        if not isinstance(result, dict) or not isinstance(result.get("metrics"), dict) or "task_type" not in result:
            raise PipelineInputError(f"The {name} result is not an evaluate_model result; evaluate the version first.")
    if reference_result["task_type"] != candidate_result["task_type"]:
        raise PipelineInputError(
            f"The reference was evaluated on a {reference_result['task_type']} task and the candidate on a "
            f"{candidate_result['task_type']} task; compare results of the same dataset."
        )
    if reference_result.get("samples") != candidate_result.get("samples"):
        raise PipelineInputError(
            f"The reference was evaluated on {reference_result.get('samples')} records and the candidate on "
            f"{candidate_result.get('samples')}; compare results of the same dataset and limit."
        )
    reference_labels = (reference_result.get("confusion") or {}).get("labels")
    candidate_labels = (candidate_result.get("confusion") or {}).get("labels")
    if reference_labels != candidate_labels:
        raise PipelineInputError(
            f"The reference's labels {reference_labels} differ from the candidate's {candidate_labels}; compare "
            "results of the same dataset."
        )

    deltas = {}
    for name, reference in reference_result["metrics"].items():
        candidate = candidate_result["metrics"].get(name)
        if candidate is None or reference["value"] is None or candidate["value"] is None:
            continue
        scale = 100.0 if name in PROPORTION_METRICS else 1.0
        delta = {
            "delta": scale * (candidate["value"] - reference["value"]),
            "stderr": _scaled_stderr(scale, reference["stderr"], candidate["stderr"]),
        }
        if name in F1_METRICS:
            delta.update(_relative(reference, candidate))
        deltas[name] = delta
    return deltas


def _relative(reference: dict, candidate: dict) -> dict:
    """candidate / reference with its delta-method stderr; None when the reference F1 is 0."""
    if reference["value"] == 0:
        return {"f1_relative": None, "f1_relative_stderr": None}
    ratio = candidate["value"] / reference["value"]
    stderr = None
    if reference["stderr"] is not None and candidate["stderr"] is not None:
        if candidate["value"] == 0:
            stderr = candidate["stderr"] / reference["value"]
        else:
            stderr = abs(ratio) * math.hypot(
                candidate["stderr"] / candidate["value"], reference["stderr"] / reference["value"]
            )
    return {"f1_relative": ratio, "f1_relative_stderr": stderr}


def _scaled_stderr(scale: float, reference: float | None, candidate: float | None) -> float | None:
    if reference is None or candidate is None:
        return None
    return scale * math.hypot(reference, candidate)


def _scaled_progress(report: ProgressCallback, start: int, end: int) -> ProgressCallback:
    def scaled(percent: int, message: str) -> None:
        report(start + (end - start) * percent // 100, message)

    return scaled


def _is_int_in(value, low: int, high: int | None) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= low and (high is None or value <= high)
