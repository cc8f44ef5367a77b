"""The training records: their checks, digest, held-out split, and tokenization into supervised sequences."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from workers.pipelines.errors import PipelineInputError

IGNORE_INDEX = -100  # the label value torch's cross_entropy skips: prompt tokens and padding

# At most this many records are held out, whatever eval_fraction says: a few thousand tokens measure the loss
# well enough, and each evaluation pass over more would cost more than the training steps between passes.
MAX_EVAL_RECORDS = 256


@dataclass(frozen=True)
class EncodedRecord:
    """One tokenized record: `labels` is `input_ids` with IGNORE_INDEX where no loss is taken (the prompt)."""

    input_ids: list[int]
    labels: list[int]
    truncated: bool
    supervised_tokens: int  # tokens the loss covers; a label is predicted from the token before it, never the first


def canonical_record(record: dict) -> str:
    """The record as canonical JSON (sorted keys, no spaces): what data_sha256 and the split are computed from."""
    return json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def records_sha256(records: list[dict]) -> str:
    """SHA-256 of the records' canonical JSON lines, in order: names exactly the data a run trained on."""
    digest = hashlib.sha256()
    for record in records:
        digest.update(canonical_record(record).encode("utf-8"))
        digest.update(b"\n")
    return digest.hexdigest()


def check_records(records: list[dict]) -> None:
    """Raise PipelineInputError unless every record is {"text"} or {"prompt", "completion"} with usable strings."""
    if not records:
        raise PipelineInputError(
            'The dataset has no records; upload JSON Lines with one {"text": ...} or '
            '{"prompt": ..., "completion": ...} object per line.'
        )
    problems: list[str] = []
    for number, record in enumerate(records, start=1):
        problem = _record_problem(record)
        if problem:
            problems.append(f"record {number} {problem}")
    if problems:
        shown = "; ".join(problems[:5])
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        raise PipelineInputError(
            f"{len(problems)} of {len(records)} dataset records cannot be used for training: {shown}{more}. "
            'Each line must be {"text": "..."} or {"prompt": "...", "completion": "..."} with non-empty strings.'
        )


def _record_problem(record) -> str | None:
    """Why one record cannot be used, or None."""
    if not isinstance(record, dict):
        return f"is a {type(record).__name__}, not a JSON object"
    has_text = "text" in record
    has_pair = "prompt" in record or "completion" in record
    if has_text and has_pair:
        return "has both 'text' and 'prompt'/'completion'; use one form per record"
    if has_text:
        if not isinstance(record["text"], str) or not record["text"].strip():
            return "has an empty or non-string 'text'"
        return None
    if not has_pair:
        return f"has neither 'text' nor 'prompt'/'completion' (keys: {sorted(record)})"
    if not isinstance(record.get("prompt"), str):
        return "is missing 'prompt' (a string; it may be empty)"
    if not isinstance(record.get("completion"), str) or not record["completion"].strip():
        return "is missing 'completion' or it is empty"
    return None


def split_records(records: list[dict], eval_fraction: float) -> tuple[list[dict], list[dict]]:
    """Deterministic (train, eval) split by content hash: independent of record order and seed, stable as data grows.

    eval_fraction of the records (at least 1, at most MAX_EVAL_RECORDS) are held out.
    """
    if eval_fraction <= 0:
        return list(records), []
    eval_count = min(max(1, round(len(records) * eval_fraction)), MAX_EVAL_RECORDS)
    if len(records) - eval_count < 1:
        raise PipelineInputError(
            f"The dataset has {len(records)} record(s); holding out eval_fraction {eval_fraction:g} for "
            f"evaluation leaves none to train on. Upload at least {_minimum_records(eval_fraction)} records "
            "(dozens are sensible) or set eval_fraction to 0."
        )
    order = sorted(
        range(len(records)),
        key=lambda index: (hashlib.sha256(canonical_record(records[index]).encode("utf-8")).digest(), index),
    )
    held_out = set(order[:eval_count])
    train = [record for index, record in enumerate(records) if index not in held_out]
    evaluation = [record for index, record in enumerate(records) if index in held_out]
    return train, evaluation


def _minimum_records(eval_fraction: float) -> int:
    """Fewest records that leave at least one for training and one for evaluation."""
    count = 2
    while count - max(1, round(count * eval_fraction)) < 1:
        count += 1
    return count


def encode_record(record: dict, tokenizer, *, max_length: int) -> EncodedRecord:
    """Tokenize one record; for prompt/completion the loss covers the completion (and the closing EOS) only."""
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    if "text" in record:
        input_ids = tokenizer(record["text"], add_special_tokens=True)["input_ids"] + eos
        labels = list(input_ids)
    else:
        # Prompt and completion are tokenized separately so the prompt tokens are exactly those the model sees
        # at inference time, when it is given the prompt alone.
        prompt_ids = tokenizer(record["prompt"], add_special_tokens=True)["input_ids"]
        completion_ids = tokenizer(record["completion"], add_special_tokens=False)["input_ids"] + eos
        input_ids = prompt_ids + completion_ids
        labels = [IGNORE_INDEX] * len(prompt_ids) + completion_ids
    truncated = len(input_ids) > max_length
    labels = labels[:max_length]
    supervised = sum(1 for label in labels[1:] if label != IGNORE_INDEX)
    return EncodedRecord(input_ids[:max_length], labels, truncated, supervised)


def encode_records(records: list[dict], tokenizer, *, max_length: int) -> list[EncodedRecord]:
    """Tokenize records (see encode_record); records left with nothing to learn are kept, usable() drops them."""
    return [encode_record(record, tokenizer, max_length=max_length) for record in records]


def usable(encoded: list[EncodedRecord]) -> list[EncodedRecord]:
    """The records with at least one token to learn (a prompt can fill max_length and leave none)."""
    return [item for item in encoded if item.supervised_tokens > 0]


def encoding_warnings(encoded: list[EncodedRecord], *, max_length: int) -> list[str]:
    """Warnings about truncated and skipped records, for the version's metadata."""
    warnings = []
    truncated = sum(1 for item in encoded if item.truncated)
    if truncated:
        warnings.append(f"{truncated} sequences longer than max_length {max_length} were truncated")
    skipped = len(encoded) - len(usable(encoded))
    if skipped:
        warnings.append(
            f"{skipped} records were skipped because nothing of their completion fits within max_length "
            f"{max_length}; raise max_length or shorten their prompts"
        )
    return warnings
