"""Answer flips on multiple-choice records: how often the candidate answers differently from the reference.

Each choice is scored by the summed log-probability of its tokens after the prompt (a space is put between them
unless one side has it, as lm-evaluation-harness does); ties go to the first choice. A flip is any changed answer
(Dutta et al. 2024, "Accuracy is not all you need").
"""

from __future__ import annotations

import torch

from workers.pipelines.analysis.logits import model_logits
from workers.pipelines.errors import PipelineInputError


def check_mcq_records(records: list[dict]) -> None:
    """Raise PipelineInputError naming the first record that is not {"prompt", "choices", "answer"} as required."""
    for number, record in enumerate(records, start=1):
        problem = None
        if not isinstance(record, dict):
            problem = "is not an object"
        elif not isinstance(record.get("prompt"), str) or not record["prompt"]:
            problem = 'has no "prompt" text'
        elif (
            not isinstance(record.get("choices"), list)
            or len(record["choices"]) < 2
            or not all(isinstance(choice, str) and choice.strip() for choice in record["choices"])
        ):
            problem = 'needs "choices": a list of at least two non-empty strings'
        elif (
            isinstance(record.get("answer"), bool)
            or not isinstance(record.get("answer"), int)
            or not 0 <= record["answer"] < len(record["choices"])
        ):
            problem = f'needs "answer": the index (0 to {len(record["choices"]) - 1}) of the correct choice'
        if problem:
            raise PipelineInputError(
                f'Multiple-choice record {number} {problem}; each line must look like {{"prompt": "...", '
                '"choices": ["...", "..."], "answer": 0}.'
            )


def count_flips(reference_model, candidate_model, tokenizer, records, context_length, device, report) -> dict:
    """Accuracy of both models and answer flips (Dutta et al. 2024) on multiple-choice records."""
    reference_correct = candidate_correct = correct_to_incorrect = incorrect_to_correct = changed = 0
    for number, record in enumerate(records, start=1):
        sequences, spans = _choice_sequences(tokenizer, record, context_length)
        reference_choice = _best_choice(reference_model, sequences, spans, tokenizer, device)
        if candidate_model is reference_model:
            candidate_choice = reference_choice
        else:
            candidate_choice = _best_choice(candidate_model, sequences, spans, tokenizer, device)
        answer = record["answer"]
        reference_correct += reference_choice == answer
        candidate_correct += candidate_choice == answer
        correct_to_incorrect += reference_choice == answer and candidate_choice != answer
        incorrect_to_correct += reference_choice != answer and candidate_choice == answer
        changed += reference_choice != candidate_choice
        report(int(100 * number / len(records)), f"Scored {number} of {len(records)} multiple-choice records")
    n = len(records)
    return {
        "accuracy_reference": reference_correct / n,
        "accuracy_candidate": candidate_correct / n,
        "correct_to_incorrect": int(correct_to_incorrect),
        "incorrect_to_correct": int(incorrect_to_correct),
        "rate": changed / n,
    }


def _choice_sequences(tokenizer, record: dict, context_length: int):
    """Token ids of prompt + choice for every choice, and the (start, end) of the choice tokens in each.

    As lm-evaluation-harness does, a space separates prompt and choice unless one of them already has it.
    Prompts too long for the context lose their beginning.
    """
    prompt = record["prompt"]
    prompt_ids = tokenizer.encode(prompt, add_special_tokens=True)
    bos = tokenizer.bos_token_id
    has_bos = bos is not None and prompt_ids[:1] == [bos]
    sequences, spans = [], []
    for choice in record["choices"]:
        if not prompt[-1:].isspace() and not choice[:1].isspace():
            choice = " " + choice
        choice_ids = tokenizer.encode(choice, add_special_tokens=False)[: context_length - 2]
        room = context_length - len(choice_ids)
        context_ids = prompt_ids
        if len(context_ids) > room:
            context_ids = ([bos] if has_bos else []) + prompt_ids[len(prompt_ids) - room + (1 if has_bos else 0) :]
        sequences.append(context_ids + choice_ids)
        spans.append((len(context_ids), len(context_ids) + len(choice_ids)))
    return sequences, spans


def _best_choice(model, sequences, spans, tokenizer, device) -> int:
    """Index of the choice with the highest summed log-probability (the first one on a tie)."""
    length = max(len(sequence) for sequence in sequences)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    input_ids = torch.full((len(sequences), length), pad, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), length), dtype=torch.long)
    for row, sequence in enumerate(sequences):
        input_ids[row, : len(sequence)] = torch.tensor(sequence)
        attention_mask[row, : len(sequence)] = 1
    logits = model_logits(model, input_ids.to(device), attention_mask.to(device))
    scores = []
    for row, (start, end) in enumerate(spans):
        log_probs = torch.log_softmax(logits[row, start - 1 : end - 1].to(torch.float64), dim=-1)
        targets = input_ids[row, start:end].to(log_probs.device).unsqueeze(-1)
        scores.append(float(log_probs.gather(-1, targets).sum()))
    return max(range(len(scores)), key=lambda index: (scores[index], -index))
