"""Distillation candidates (the data flywheel's loop): a teacher labels training texts, stratified subsets of
several sizes keep every class, students are trained on them with LoRA and judged by their F1 relative to the
teacher's. Plain functions, no Django; the parts that need no torch are importable by the web process.

The F1-relative table of the seeds (llama-3.2-1b reaching 0.29 / 0.78 / 0.90 of the teacher's F1 with 5k / 10k /
25k examples) is what a distillation experiment reproduces on the registry's own parts.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from workers.pipelines.errors import PipelineInputError

# A class needs two records to be split across subsets at all (scikit-learn's stratified splits ask the same).
MIN_RECORDS_PER_CLASS = 2
MAX_SIZES = 10
MAX_STUDENTS = 8
SUBSET_SEED = 20261201


def check_sizes(sizes, records: int) -> list[int]:
    """The subset sizes as sorted distinct whole numbers from 1 to the number of records, or a PipelineInputError."""
    if not isinstance(sizes, list) or not sizes or len(sizes) > MAX_SIZES:
        raise PipelineInputError(f"sizes must be a list of 1 to {MAX_SIZES} subset sizes such as [5000, 10000, 25000].")
    for size in sizes:
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise PipelineInputError(f"sizes must hold whole numbers of records of at least 1, not {size!r}.")
        if size > records:
            raise PipelineInputError(
                f"Size {size:,} is larger than the training dataset ({records:,} records); choose sizes up to "
                f"{records:,} or register a larger dataset."
            )
    if len(set(sizes)) != len(sizes):
        raise PipelineInputError(f"sizes {sizes} name the same size twice; list each size once.")
    return sorted(sizes)


def check_labels(labels: list[str], known: list[str], *, label_field: str) -> None:
    """Every training label must be one of the evaluation set's labels (the students are judged on those)."""
    allowed = set(known)
    for number, label in enumerate(labels, start=1):
        if not isinstance(label, str) or not label.strip():
            raise PipelineInputError(
                f"Record {number} of the training dataset has no usable {label_field!r} (a non-empty string); "
                "give every record a label or none at all (then the teacher labels them)."
            )
        if label not in allowed:
            raise PipelineInputError(
                f"Record {number} of the training dataset has the label {label!r}, which the evaluation dataset "
                f"does not know (its labels: {', '.join(known)}); the students are judged on those labels only."
            )


def check_stratifiable(labels: list[str], sizes: list[int]) -> None:
    """Raise PipelineInputError when a subset of some size cannot keep every class."""
    counts = Counter(labels)
    rare = sorted(label for label, count in counts.items() if count < MIN_RECORDS_PER_CLASS)
    if rare:
        shown = ", ".join(f"{label!r} ({counts[label]} record)" for label in rare)
        raise PipelineInputError(
            f"The class {shown} is too rare for stratified subsets, which need at least {MIN_RECORDS_PER_CLASS} "
            "records per class; add records of it or drop it from the training data."
        )
    too_small = [size for size in sizes if size < len(counts)]
    if too_small:
        raise PipelineInputError(
            f"Size {too_small[0]} cannot keep one record of each of the {len(counts)} classes; use sizes of at "
            f"least {len(counts)}."
        )


def stratified_subsets(labels: list[str], sizes: list[int], *, seed: int = SUBSET_SEED) -> dict[int, list[int]]:
    """Record indices per size: every class keeps at least one record and its share otherwise (largest remainder),
    drawn in a fixed random order per class, so a smaller subset is contained in every larger one."""
    check_stratifiable(labels, sizes)
    by_class: dict[str, list[int]] = {}
    for index, label in enumerate(labels):
        by_class.setdefault(label, []).append(index)
    rng = random.Random(seed)
    for label in sorted(by_class):
        rng.shuffle(by_class[label])
    total = len(labels)
    subsets = {}
    for size in sizes:
        quotas = {label: 1 for label in by_class}
        spare = size - len(by_class)
        shares = {label: spare * len(members) / total for label, members in by_class.items()}
        for label in by_class:
            quotas[label] += min(int(shares[label]), len(by_class[label]) - 1)
        # Hand out what rounding down left over, largest remainder first, never beyond a class's records.
        left = size - sum(quotas.values())
        order = sorted(by_class, key=lambda label: (-(shares[label] - int(shares[label])), label))
        while left > 0:
            for label in order:
                if left and quotas[label] < len(by_class[label]):
                    quotas[label] += 1
                    left -= 1
        subsets[size] = sorted(index for label, members in by_class.items() for index in members[: quotas[label]])
    return subsets


def training_records(texts: list[str], labels: list[str], *, classification_prompt: str) -> list[dict]:
    """LoRA training records that teach a student to continue the classification prompt with the label, exactly
    where the evaluation scores each label (after the prompt, with lm-eval's one-space target delimiter)."""
    return [{"prompt": classification_prompt.format(text=text), "completion": " " + label}
            for text, label in zip(texts, labels)]


def best_candidate(rows: list[dict], f1_relative_min: float) -> dict | None:
    """The smallest trained student meeting f1_relative_min: fewest training records, then fewest parameters,
    then the higher F1; None when none meets it."""
    meeting = [row for row in rows if row.get("f1_relative_to_teacher") is not None
               and row["f1_relative_to_teacher"] >= f1_relative_min]
    if not meeting:
        return None
    return min(meeting, key=lambda row: (row["size"], row.get("params") or 0, -(row.get("f1") or 0.0)))


# --- the parts that load models (torch, lm-eval) -------------------------------------------------------------------


def teacher_labels(model_dir: Path, texts: list[str], labels: list[str], *, adapter_dir: Path | None = None,
                   classification_prompt: str, batch_size: int = 8,
                   report: Callable[[int, str], None] = lambda percent, message: None) -> list[str]:
    """The teacher's most likely label for each text, scored through lm-eval as the evaluation scores them."""
    from workers.pipelines import loading
    from workers.pipelines.evaluation import harness
    from workers.pipelines.evaluation.records import CLASSIFICATION

    report(0, f"Loading the teacher to label {len(texts)} texts")
    model, tokenizer = loading.load_causal_lm(Path(model_dir), adapter_dir=adapter_dir)
    # The target is a placeholder: only the per-label log-likelihoods are read.
    records = [{"text": text, "label": labels[0]} for text in texts]
    task = harness.build_task(CLASSIFICATION, records, labels=labels, classification_prompt=classification_prompt)
    run = harness.run_task(model, tokenizer, task, batch_size=batch_size, bootstrap_iters=100, report=report)
    return [labels[index] for index in run.predicted_choices()]


def parameter_count(model_dir: Path) -> int:
    """Parameters stored in a version directory's safetensors files (headers only, nothing loaded)."""
    from safetensors import safe_open

    total = 0
    for path in sorted(Path(model_dir).glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as handle:
            for name in handle.keys():
                count = 1
                for dimension in handle.get_slice(name).get_shape():
                    count *= dimension
                total += count
    return total
