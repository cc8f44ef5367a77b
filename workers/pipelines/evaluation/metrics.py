"""Metrics lm-eval does not give offline: SQuAD exact match and token F1, and the classification report.

Generation is scored with SQuAD v1.1's answer normalisation (lower case, no punctuation, no English articles,
single spaces): exact match is 1 when the normalised texts are equal, token F1 the harmonic mean of the token
precision and recall over the normalised tokens. The harness offers token F1 only through Hugging Face
`evaluate`'s "squad" metric, which downloads its script at run time.

The classification report is computed from a confusion matrix (rows: true label, columns: predicted label):
precision_k = tp_k / predicted_k, recall_k = tp_k / true_k, F1_k = 2 tp_k / (predicted_k + true_k), each
undefined (None) when its denominator is 0, and macro-F1 the mean of the defined F1_k; with every label in the
dataset's true labels this is scikit-learn's `f1_score(average="macro", zero_division=0)`. Standard errors are
bootstrap ones (resampled records, fixed seed, sample standard deviation of the replicates, as lm-eval's
bootstrap_stderr does). Written by hand because the bootstrap needs thousands of confusion matrices at once:
numpy builds them in one bincount, where scikit-learn computes one per call.
"""

from __future__ import annotations

import re
import string
from collections import Counter

import numpy as np

BOOTSTRAP_SEED = 1234
# Resampled indices held at once (replicates x records), about 32 MB of int64.
BOOTSTRAP_CHUNK_ELEMENTS = 4_000_000

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = str.maketrans("", "", string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD v1.1 normalisation: lower case, punctuation and the articles a/an/the removed, single spaces."""
    return " ".join(_ARTICLES.sub(" ", text.lower().translate(_PUNCTUATION)).split())


def exact_match(prediction: str, reference: str) -> float:
    """1.0 when prediction and reference are equal after normalize_answer, else 0.0."""
    return float(normalize_answer(prediction) == normalize_answer(reference))


def token_f1(prediction: str, reference: str) -> float:
    """SQuAD token F1 of prediction against reference (1.0 when both normalise to nothing)."""
    predicted, expected = normalize_answer(prediction).split(), normalize_answer(reference).split()
    if not predicted or not expected:
        return float(predicted == expected)
    common = sum((Counter(predicted) & Counter(expected)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(predicted), common / len(expected)
    return 2 * precision * recall / (precision + recall)


def confusion_matrices(gold: np.ndarray, predicted: np.ndarray, n_labels: int) -> np.ndarray:
    """Confusion matrices (..., n_labels, n_labels) of label indices gold and predicted of shape (..., n)."""
    gold, predicted = np.asarray(gold), np.asarray(predicted)
    batch_shape = gold.shape[:-1]
    batches = int(np.prod(batch_shape, dtype=np.int64))
    cells = n_labels * n_labels
    codes = gold.reshape(batches, -1) * n_labels + predicted.reshape(batches, -1)
    codes = codes + (np.arange(batches) * cells)[:, None]
    counts = np.bincount(codes.ravel(), minlength=batches * cells)
    return counts.reshape(*batch_shape, n_labels, n_labels)


def class_scores(confusion: np.ndarray) -> dict[str, np.ndarray]:
    """Per-class precision, recall and F1 (NaN where undefined) and macro-F1 of confusion matrices (..., K, K)."""
    confusion = np.asarray(confusion, dtype=np.float64)
    true_positives = np.diagonal(confusion, axis1=-2, axis2=-1)
    true_counts = confusion.sum(axis=-1)
    predicted_counts = confusion.sum(axis=-2)
    precision = _ratio(true_positives, predicted_counts)
    recall = _ratio(true_positives, true_counts)
    f1 = _ratio(2 * true_positives, predicted_counts + true_counts)
    defined = ~np.isnan(f1)
    macro_f1 = np.where(defined, f1, 0.0).sum(axis=-1) / np.maximum(defined.sum(axis=-1), 1)
    return {"precision": precision, "recall": recall, "f1": f1, "macro_f1": macro_f1}


def classification_report(
    gold: list[int], predicted: list[int], labels: list[str], *, bootstrap_iters: int, seed: int = BOOTSTRAP_SEED
) -> dict:
    """Macro-F1, per-class scores and the confusion matrix of label indices, with bootstrap stderrs."""
    gold_array, predicted_array = np.asarray(gold), np.asarray(predicted)
    confusion = confusion_matrices(gold_array, predicted_array, len(labels))
    point = class_scores(confusion)
    replicates = _bootstrap_scores(gold_array, predicted_array, len(labels), bootstrap_iters, seed)
    per_class = {}
    for index, label in enumerate(labels):
        per_class[label] = {
            name: _estimate(point[name][index], replicates[name][:, index]) for name in ("precision", "recall", "f1")
        }
        per_class[label]["support"] = int(confusion[index].sum())
    return {
        "macro_f1": _estimate(point["macro_f1"], replicates["macro_f1"]),
        "per_class": per_class,
        "confusion": {"labels": list(labels), "matrix": confusion.tolist()},
    }


def _bootstrap_scores(gold: np.ndarray, predicted: np.ndarray, n_labels: int, iters: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    count = len(gold)
    per_chunk = max(1, BOOTSTRAP_CHUNK_ELEMENTS // count)
    chunks = []
    for start in range(0, iters, per_chunk):
        indices = rng.integers(0, count, size=(min(per_chunk, iters - start), count))
        chunks.append(class_scores(confusion_matrices(gold[indices], predicted[indices], n_labels)))
    return {name: np.concatenate([chunk[name] for chunk in chunks]) for name in chunks[0]}


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    return np.divide(numerator, denominator, out=np.full(np.shape(numerator), np.nan), where=denominator > 0)


def _estimate(value, replicates: np.ndarray) -> dict:
    """{value, stderr} for JSON: None where the value is undefined or fewer than two replicates define it."""
    value = float(value)
    defined = replicates[~np.isnan(replicates)]
    return {
        "value": None if np.isnan(value) else value,
        "stderr": float(np.std(defined, ddof=1)) if len(defined) >= 2 and not np.isnan(value) else None,
    }
