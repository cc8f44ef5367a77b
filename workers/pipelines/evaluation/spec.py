"""Evaluation settings and their checks, with no torch: the web process validates a request with them."""

from __future__ import annotations

from dataclasses import dataclass

from workers.pipelines.errors import PipelineInputError

MAX_BATCH_SIZE = 256
MAX_NEW_TOKENS = 1024
MIN_BOOTSTRAP_ITERS, MAX_BOOTSTRAP_ITERS = 100, 100_000
# Proportions (value in [0, 1]) whose deltas compare() gives in percentage points.
PROPORTION_METRICS = ("acc", "acc_norm", "accuracy", "exact_match", "macro_f1", "token_f1")
F1_METRICS = ("macro_f1", "token_f1")


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


def _is_int_in(value, low: int, high: int | None) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= low and (high is None or value <= high)
