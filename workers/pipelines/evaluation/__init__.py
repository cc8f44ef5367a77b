"""Task evaluation of a model version on lm-evaluation-harness (issue 16), without Django.

A JSONL dataset poses one of three tasks, told apart by its records' keys (records.detect_task_type):

- multiple choice `{"prompt", "choices", "answer"}`: lm-eval's acc and acc_norm;
- classification `{"text", "label"}`: multiple choice over the dataset's label set, then accuracy, macro-F1,
  per-class precision / recall / F1 and the confusion matrix from the per-record predictions;
- generation `{"prompt", "answer"}`: greedy decoding, SQuAD exact match and token F1.

Every metric carries a standard error: lm-eval's where it has one (the mean's), else a bootstrap with a fixed
seed. harness.py is the one module that imports lm-eval; metrics.py holds what lm-eval cannot compute offline.
"""

from workers.pipelines.evaluation.metrics import exact_match, normalize_answer, token_f1
from workers.pipelines.evaluation.pipeline import (
    EvaluationSpec,
    compare,
    evaluate_model,
    validate_evaluation_spec,
)
from workers.pipelines.evaluation.records import CLASSIFICATION, GENERATION, MULTIPLE_CHOICE, detect_task_type

__all__ = [
    "CLASSIFICATION",
    "GENERATION",
    "MULTIPLE_CHOICE",
    "EvaluationSpec",
    "compare",
    "detect_task_type",
    "evaluate_model",
    "exact_match",
    "normalize_answer",
    "token_f1",
    "validate_evaluation_spec",
]
