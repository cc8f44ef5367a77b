"""Evaluate a model version on a task dataset through lm-eval, and compare two versions' results."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path

import torch

from workers.pipelines import loading
from workers.pipelines.errors import PipelineInputError
from workers.pipelines.evaluation.metrics import BOOTSTRAP_SEED, classification_report
from workers.pipelines.evaluation.records import CLASSIFICATION, detect_task_type, label_set
from workers.pipelines.evaluation.spec import (  # noqa: F401  (EvaluationSpec re-exported)
    F1_METRICS,
    PROPORTION_METRICS,
    EvaluationSpec,
    validate_evaluation_spec,
)

ProgressCallback = Callable[[int, str], None]


def _ignore_progress(percent: int, message: str) -> None:
    pass


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
