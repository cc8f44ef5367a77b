"""Evaluation datasets: which task a list of JSONL records poses, and whether every record fits that task."""

from __future__ import annotations

from workers.pipelines.errors import PipelineInputError

MULTIPLE_CHOICE = "multiple_choice"
CLASSIFICATION = "classification"
GENERATION = "generation"
TASK_TYPES = (MULTIPLE_CHOICE, CLASSIFICATION, GENERATION)

# One example line per task type, quoted in the errors so the user sees what to upload.
RECORD_EXAMPLES = {
    MULTIPLE_CHOICE: '{"prompt": "...", "choices": ["...", "..."], "answer": 0}',
    CLASSIFICATION: '{"text": "...", "label": "..."}',
    GENERATION: '{"prompt": "...", "answer": "..."}',
}
TASK_TYPE_WORDS = {
    MULTIPLE_CHOICE: "a multiple-choice",
    CLASSIFICATION: "a classification",
    GENERATION: "a generation",
}


def detect_task_type(records: list) -> str:
    """The task type all records share; a PipelineInputError names the first (1-based) record that differs."""
    if not isinstance(records, list) or not records:
        raise PipelineInputError(
            "The evaluation dataset has no records; upload a JSONL file with one record per line, such as "
            f"{RECORD_EXAMPLES[MULTIPLE_CHOICE]}."
        )
    first_type = None
    for number, record in enumerate(records, start=1):
        task_type = record_task_type(record, number)
        if first_type is None:
            first_type = task_type
        elif task_type != first_type:
            raise PipelineInputError(
                f"Record {number} is {TASK_TYPE_WORDS[task_type]} record but record 1 is "
                f"{TASK_TYPE_WORDS[first_type]} record; a dataset holds one task type, so split it into one "
                "dataset per type."
            )
        check_record(record, task_type, number)
    if first_type == CLASSIFICATION and len(label_set(records)) < 2:
        raise PipelineInputError(
            f"Every record has the label {records[0]['label']!r}; a classification dataset needs at least two "
            "different labels."
        )
    return first_type


def record_task_type(record, number: int) -> str:
    """The task type record's keys announce, or a PipelineInputError saying which shapes are accepted."""
    if not isinstance(record, dict):
        raise PipelineInputError(
            f"Record {number} is a JSON {type(record).__name__}, not an object; every line must be an object "
            f"such as {RECORD_EXAMPLES[GENERATION]}."
        )
    if "choices" in record:
        return MULTIPLE_CHOICE
    is_classification = "text" in record and "label" in record
    is_generation = "prompt" in record and "answer" in record
    if is_classification and is_generation:
        raise PipelineInputError(
            f"Record {number} has both text/label and prompt/answer, so its task type is ambiguous; keep only "
            f"the keys of one type: {RECORD_EXAMPLES[CLASSIFICATION]} or {RECORD_EXAMPLES[GENERATION]}."
        )
    if is_classification:
        return CLASSIFICATION
    if is_generation:
        return GENERATION
    keys = ", ".join(sorted(map(str, record))) or "none"
    raise PipelineInputError(
        f"Record {number} fits no task type (its keys: {keys}); use multiple choice "
        f"{RECORD_EXAMPLES[MULTIPLE_CHOICE]}, classification {RECORD_EXAMPLES[CLASSIFICATION]} or generation "
        f"{RECORD_EXAMPLES[GENERATION]}."
    )


def check_record(record: dict, task_type: str, number: int) -> None:
    """Raise PipelineInputError when a field of record does not hold what task_type needs."""
    problem = None
    if task_type == MULTIPLE_CHOICE:
        choices = record.get("choices")
        answer = record.get("answer")
        if not _is_text(record.get("prompt")):
            problem = 'needs "prompt": a non-empty string'
        elif not isinstance(choices, list) or len(choices) < 2 or not all(map(_is_text, choices)):
            problem = 'needs "choices": a list of at least two non-empty strings'
        elif len(set(choices)) != len(choices):
            problem = 'has the same text twice in "choices"; every choice must be different'
        elif isinstance(answer, bool) or not isinstance(answer, int) or not 0 <= answer < len(choices):
            problem = f'needs "answer": the index (0 to {len(choices) - 1}) of the correct choice'
    elif task_type == CLASSIFICATION:
        if not _is_text(record.get("text")):
            problem = 'needs "text": a non-empty string'
        elif not _is_text(record.get("label")):
            problem = 'needs "label": a non-empty string such as "complaint" (numbers must be quoted label names)'
    elif task_type == GENERATION:
        if not _is_text(record.get("prompt")):
            problem = 'needs "prompt": a non-empty string'
        elif not _is_text(record.get("answer")):
            problem = 'needs "answer": the expected text, a non-empty string'
    if problem:
        raise PipelineInputError(f"Record {number} {problem}, like {RECORD_EXAMPLES[task_type]}.")


def label_set(records: list[dict]) -> list[str]:
    """The distinct labels of classification records, sorted so the confusion matrix has a stable layout."""
    return sorted({record["label"] for record in records})


def _is_text(value) -> bool:
    return isinstance(value, str) and bool(value.strip())
