"""The only module that imports lm-evaluation-harness: our records as an in-memory task, one evaluate() call.

Offline by construction: the task's `custom_dataset` hands lm-eval a `datasets.Dataset` built from the records
in memory (no `load_dataset`, no hub), the TaskManager indexes no built-in task YAML, the model and tokenizer are
the ones already loaded (HFLM makes no hub call for them), and `evaluate` is called instead of
`simple_evaluate`, which would reseed the worker's global random generators, ask the hub for the model's SHA
and collect environment details.

Prompts: multiple choice scores " " + choice after the prompt (lm-eval's target_delimiter), classification
scores " " + label after `classification_prompt` filled with the text, so classification is multiple choice
over the dataset's label set; generation decodes greedily after the prompt until a newline or
`max_new_tokens`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata

import datasets
import numpy as np
from lm_eval.api.task import ConfigurableTask
from lm_eval.evaluator import evaluate
from lm_eval.models.huggingface import HFLM
from lm_eval.tasks import TaskManager

from workers.pipelines.evaluation.metrics import exact_match, token_f1
from workers.pipelines.evaluation.records import CLASSIFICATION, GENERATION, MULTIPLE_CHOICE

HARNESS_NAME = "lm-eval"
TASK_NAME = "registry_evaluation"
# Each progress report is a database write by the worker; a cancelled job still stops within about a batch.
REPORT_INTERVAL_S = 1.0

_MEAN = {"aggregation": "mean", "higher_is_better": True}


def harness_version() -> str:
    """The installed lm-eval version, recorded with every result."""
    return metadata.version("lm_eval")


@dataclass
class HarnessRun:
    """What one evaluate() call gave: its metrics with stderrs and, per record in order, the model's output."""

    metrics: dict[str, dict]
    outputs: list  # choice log-likelihoods (multiple choice, classification) or generated text (generation)

    def predicted_choices(self) -> list[int]:
        """Index of the most likely choice per record; ties go to the first, as in lm-eval's own acc."""
        return [int(np.argmax(loglikelihoods)) for loglikelihoods in self.outputs]


class ReportingHFLM(HFLM):
    """HFLM that reports progress (the job's safe point for cancelling) after model batches, at most once a second.

    Hooked on HFLM's per-batch _model_call / _model_generate (pinned lm-eval) rather than by feeding requests in
    slices, which would undo HFLM's length sorting and its sharing of one forward pass between the one-token
    choices of a context. Progress counts forward rows, and HFLM runs requests that share a prefix as one row, so
    the count during a phase may stay below the request count; the phase's last report says 100 %.
    """

    def __init__(self, *, report: Callable[[int, str], None], **kwargs):
        super().__init__(**kwargs)
        self._report = report
        self._phase, self._requests, self._sequences, self._last_report = "", 0, 0, 0.0

    def loglikelihood(self, requests, disable_tqdm: bool = False):
        return self._run_phase("Scored", super().loglikelihood, requests)

    def generate_until(self, requests, disable_tqdm: bool = False):
        return self._run_phase("Generated", super().generate_until, requests)

    def _model_call(self, inps, attn_mask=None, labels=None):
        logits = super()._model_call(inps, attn_mask=attn_mask, labels=labels)
        self._advance(inps.shape[0])
        return logits

    def _model_generate(self, context, max_length, stop, **generation_kwargs):
        tokens = super()._model_generate(context, max_length, stop, **generation_kwargs)
        self._advance(context.shape[0])
        return tokens

    def _run_phase(self, verb: str, method, requests) -> list:
        self._phase, self._requests, self._sequences = verb, len(requests), 0
        self._last_report = time.monotonic()
        outputs = method(requests, disable_tqdm=True)
        self._report(100, f"{verb} {len(requests)} of {len(requests)} requests")
        return outputs

    def _advance(self, sequences: int) -> None:
        self._sequences = min(self._requests, self._sequences + sequences)
        if time.monotonic() - self._last_report >= REPORT_INTERVAL_S and self._requests:
            self._report(
                100 * self._sequences // self._requests,
                f"{self._phase} {self._sequences} of {self._requests} requests",
            )
            self._last_report = time.monotonic()


def build_task(
    task_type: str,
    records: list[dict],
    *,
    labels: list[str] | None = None,
    classification_prompt: str = "{text}",
    max_new_tokens: int = 32,
) -> ConfigurableTask:
    """An lm-eval task over checked records (see records.detect_task_type) held in memory."""
    if task_type == MULTIPLE_CHOICE:
        docs = [{"prompt": r["prompt"], "choices": list(r["choices"]), "answer": r["answer"]} for r in records]
        task_config = {
            "output_type": "multiple_choice",
            "doc_to_text": lambda doc: doc["prompt"],
            "doc_to_choice": lambda doc: doc["choices"],
            "doc_to_target": lambda doc: doc["answer"],
            "metric_list": [{"metric": "acc", **_MEAN}, {"metric": "acc_norm", **_MEAN}],
        }
    elif task_type == CLASSIFICATION:
        choices = list(labels)
        label_index = {label: index for index, label in enumerate(choices)}
        docs = [{"text": r["text"], "label_index": label_index[r["label"]]} for r in records]
        task_config = {
            "output_type": "multiple_choice",
            "doc_to_text": lambda doc: classification_prompt.format(text=doc["text"]),
            "doc_to_choice": lambda doc: choices,
            "doc_to_target": lambda doc: doc["label_index"],
            "metric_list": [{"metric": "acc", **_MEAN}],
        }
    elif task_type == GENERATION:
        docs = [{"prompt": r["prompt"], "answer": r["answer"]} for r in records]
        task_config = {
            "output_type": "generate_until",
            "doc_to_text": lambda doc: doc["prompt"],
            "doc_to_target": lambda doc: doc["answer"],
            "generation_kwargs": {"until": ["\n"], "max_gen_toks": max_new_tokens, "do_sample": False},
            # Our own scorers: lm-eval's token F1 would come from Hugging Face evaluate, a download.
            "process_results": lambda doc, outputs: {
                "exact_match": exact_match(outputs[0], doc["answer"]),
                "token_f1": token_f1(outputs[0], doc["answer"]),
            },
            "metric_list": [{"metric": "exact_match", **_MEAN}, {"metric": "token_f1", **_MEAN}],
        }
    else:
        raise ValueError(f"unknown task type {task_type!r}")
    return ConfigurableTask(
        config={
            "task": TASK_NAME,
            # Only the fields the task reads, so extra keys of varying types cannot trip Arrow's schema inference.
            "custom_dataset": lambda **_: {"test": datasets.Dataset.from_list(docs)},
            "test_split": "test",
            "num_fewshot": 0,
            **task_config,
        }
    )


def run_task(
    model,
    tokenizer,
    task: ConfigurableTask,
    *,
    batch_size: int,
    bootstrap_iters: int,
    report: Callable[[int, str], None],
) -> HarnessRun:
    """Evaluate the loaded model on task with lm-eval; report(percent, message) is called between slices."""
    lm = ReportingHFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, report=report)
    results = evaluate(
        lm=lm,
        task_dict=TaskManager(include_defaults=False).load([task]),
        bootstrap_iters=bootstrap_iters,
        log_samples=True,
    )
    numbers = results["results"][TASK_NAME]
    metrics = {
        name: {"value": float(numbers[f"{name},none"]), "stderr": _stderr(numbers.get(f"{name}_stderr,none"))}
        for name in task.aggregation()
    }
    samples = sorted(results["samples"][TASK_NAME], key=lambda sample: sample["doc_id"])
    if task.OUTPUT_TYPE == "multiple_choice":
        outputs = [[float(loglikelihood) for loglikelihood, _ in sample["filtered_resps"]] for sample in samples]
    else:
        outputs = [sample["filtered_resps"][0] for sample in samples]
    return HarnessRun(metrics=metrics, outputs=outputs)


def _stderr(value) -> float | None:
    # lm-eval writes "N/A" when it has no standard error for a metric.
    return float(value) if isinstance(value, (int, float)) else None
