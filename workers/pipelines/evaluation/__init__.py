"""Task evaluation of a model version on lm-evaluation-harness (issue 16), without Django.

A JSONL dataset poses one of three tasks, told apart by its records' keys (records.detect_task_type):

- multiple choice `{"prompt", "choices", "answer"}`: lm-eval's acc and acc_norm;
- classification `{"text", "label"}`: multiple choice over the dataset's label set, then accuracy, macro-F1,
  per-class precision / recall / F1 and the confusion matrix from the per-record predictions;
- generation `{"prompt", "answer"}`: greedy decoding, SQuAD exact match and token F1.

Every metric carries a standard error: lm-eval's where it has one (the mean's), else a bootstrap with a fixed
seed. harness.py is the one module that imports lm-eval; metrics.py holds what lm-eval cannot compute offline.

The package imports no torch until `evaluate_model` or `compare` is first used (pipeline.py loads the ML stack),
so the web process checks a request (records.py, spec.py) staying light.
"""

from workers.pipelines.evaluation.metrics import exact_match, normalize_answer, token_f1
from workers.pipelines.evaluation.records import CLASSIFICATION, GENERATION, MULTIPLE_CHOICE, detect_task_type
from workers.pipelines.evaluation.spec import EvaluationSpec, validate_evaluation_spec

_HEAVY = ("compare", "evaluate_model")

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


def __getattr__(name: str):
    if name in _HEAVY:
        from workers.pipelines.evaluation import pipeline

        return getattr(pipeline, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
