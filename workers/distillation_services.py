"""Distillation candidates: the request-time checks of a distillation (teacher, students, datasets, sizes, LoRA
settings) and what its job records as it goes (the teacher's scores, the stratified subsets registered as datasets,
one trained and evaluated student per row, the best candidate). The only code that writes Distillation rows.

The distillation's job does all the training itself: each student version it registers hangs off a job row of its
own (distillation_cell_job) that is never queued, so a retried distillation registers each version once.
"""
import json

from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import transaction
from django.utils import timezone

from foundation.audit import append_event
from foundation.errors import Conflict, InvalidInput, Unprocessable
from registry import services as registry_services
from registry.models import Dataset, ModelVersion
from registry.teams import require_team_member
from workers.models import Distillation, Job
from workers.pipelines.errors import PipelineInputError
from workers.pipelines.evaluation import EvaluationSpec, validate_evaluation_spec
from workers.pipelines.evaluation import distillation as distillation_pipeline
from workers.pipelines.evaluation.records import CLASSIFICATION, label_set
from workers.pipelines.specs import LoraSpec, validate_lora_spec
from workers.services import create_job, dataset_records, evaluation_task_type, require_free_of_pii

DEFAULT_F1_RELATIVE_MIN = 0.9


def lora_spec_from(lora_settings: dict) -> LoraSpec:
    """The LoraSpec of JSON settings (a target_modules list becomes the tuple LoraSpec holds)."""
    return LoraSpec(**{key: tuple(value) if key == "target_modules" and isinstance(value, list) else value
                       for key, value in lora_settings.items()})


def request_distillation(*, teacher, students: list, dataset, eval_dataset, sizes, label_field: str = "label",
                         lora_settings: dict | None = None, f1_relative_min: float | None = None,
                         classification_prompt: str | None = None, actor) -> Distillation:
    """Check a distillation request (teacher, students, data, sizes, LoRA settings) and queue its job."""
    if not students or len(students) > distillation_pipeline.MAX_STUDENTS:
        raise InvalidInput(f"Name 1 to {distillation_pipeline.MAX_STUDENTS} students.", field="students")
    if len({student.pk for student in students}) != len(students):
        raise InvalidInput("The same student version is named twice; list each once.", field="students")
    for student in students:
        require_team_member(actor=actor, model=student.model)
    if not teacher.is_sealed:
        raise Conflict(f"The teacher {teacher} is a draft; seal it before it labels or judges anything.",
                       field="teacher")
    for student in students:
        if not student.is_sealed:
            raise Conflict(f"The student {student} is a draft; seal it before training on it.", field="students")
        if student.kind == ModelVersion.Kind.LORA:
            raise Unprocessable(f"The student {student} is itself a LoRA adapter; name the version it was adapted "
                                "from.", field="students")
        if student.pk == teacher.pk:
            raise InvalidInput(f"{student} is the teacher; a student must be another version.", field="students")
    if dataset.purpose != Dataset.Purpose.TRAINING:
        raise InvalidInput(f"Dataset {dataset.pk} ({dataset.name}) is for {dataset.purpose}; distillation needs a "
                           "training dataset of texts (optionally labelled).", field="dataset")
    require_free_of_pii(dataset, use="distillation")
    try:
        eval_task_type = evaluation_task_type(eval_dataset)
    except (InvalidInput, Unprocessable) as error:
        error.field = "eval_dataset"
        raise
    if eval_task_type != CLASSIFICATION:
        raise InvalidInput(f"Dataset {eval_dataset.pk} ({eval_dataset.name}) is not a classification set; "
                           'distillation judges students by F1 on {"text", "label"} records.', field="eval_dataset")
    if not isinstance(label_field, str) or not label_field.strip() or label_field == "text":
        raise InvalidInput("label_field must name the records' label key, such as 'label'.", field="label_field")
    known = label_set(dataset_records(eval_dataset))
    params = {"label_field": label_field, "f1_relative_min": DEFAULT_F1_RELATIVE_MIN if f1_relative_min is None
              else f1_relative_min, "lora": {key: value for key, value in (lora_settings or {}).items()
                                             if value is not None}}
    if not isinstance(params["f1_relative_min"], (int, float)) or not 0 < params["f1_relative_min"] <= 10:
        raise InvalidInput("f1_relative_min is student F1 / teacher F1: above 0, such as 0.9.",
                           field="f1_relative_min")
    prompt_spec = EvaluationSpec(**({"classification_prompt": classification_prompt} if classification_prompt
                                    else {}))
    checks = (
        ("sizes", lambda: params.update(sizes=distillation_pipeline.check_sizes(sizes, dataset.records))),
        ("classification_prompt", lambda: validate_evaluation_spec(prompt_spec)),
        ("lora", lambda: validate_lora_spec(lora_spec_from(params["lora"]))),
    )
    for field, check in checks:
        try:
            check()
        except PipelineInputError as error:
            raise InvalidInput(str(error), field=field) from None
        except TypeError as error:  # LoraSpec(**settings) with a setting it does not have
            raise InvalidInput(f"Unknown LoRA setting ({error}).", field=field) from None
    params["classification_prompt"] = prompt_spec.classification_prompt
    params["student_refs"] = [{"model": student.model.name, "version": student.number} for student in students]
    records = dataset_records(dataset)
    if not all("text" in record for record in records):
        raise Unprocessable(f"Dataset {dataset.pk} ({dataset.name}) has records without \"text\"; distillation "
                            'reads {"text": ..., "label"?: ...} records.', field="dataset")
    if all(label_field in record for record in records):
        labels = [record[label_field] for record in records]
        try:
            distillation_pipeline.check_labels(labels, known, label_field=label_field)
            distillation_pipeline.check_stratifiable(labels, params["sizes"])
        except PipelineInputError as error:
            raise Unprocessable(str(error), field="dataset") from None
        params["labelled_by"] = "dataset"
    else:
        params["labelled_by"] = "teacher"  # checked once the teacher has labelled them, in the job
    with transaction.atomic():
        job = create_job(kind=Job.Kind.DISTILLATION, params=params, source_version=students[0], actor=actor)
        distillation = Distillation.objects.create(
            teacher=teacher, students=[student.pk for student in students], dataset=dataset,
            eval_dataset=eval_dataset, params=params, job=job, created_by=actor)
        append_event(actor=actor, action="distillation.requested", object_type="distillation",
                     object_id=distillation.pk, model_name=students[0].model.name,
                     after={"teacher": {"model": teacher.model.name, "version": teacher.number},
                            "students": [{"model": s.model.name, "version": s.number} for s in students],
                            "dataset": dataset.pk, "eval_dataset": eval_dataset.pk, "params": params})
        return distillation


@transaction.atomic
def record_distillation_teacher(*, distillation_id: int, teacher_result: dict) -> None:
    """The teacher's scores on the evaluation set (what every student is measured against)."""
    Distillation.objects.filter(pk=distillation_id).update(teacher_result=teacher_result)


@transaction.atomic
def record_distillation_subset(*, distillation_id: int, size: int, texts: list[str], labels: list[str],
                               actor) -> Dataset:
    """Register one stratified subset as a training dataset (once per size; a retry finds it)."""
    distillation = Distillation.objects.select_for_update(no_key=True).get(pk=distillation_id)
    existing = distillation.subsets.get(str(size))
    if existing:
        return Dataset.objects.get(pk=existing)
    records = distillation_pipeline.training_records(
        texts, labels, classification_prompt=distillation.params["classification_prompt"])
    payload = b"".join(json.dumps(record).encode() + b"\n" for record in records)
    dataset = registry_services.register_dataset(
        name=f"distillation {distillation.pk}: {size} records of {distillation.dataset.name}"[:200],
        purpose=Dataset.Purpose.TRAINING, uploaded_file=SimpleUploadedFile(f"subset-{size}.jsonl", payload),
        actor=actor)
    distillation.subsets = {**distillation.subsets, str(size): dataset.pk}
    distillation.save(update_fields=["subsets"])
    return dataset


@transaction.atomic
def distillation_cell_job(*, distillation_id: int, student, size: int, subset, lora: dict) -> Job:
    """The job row a trained student version is registered under (one per student and size, so a retried
    distillation registers each version once). It is never queued: the distillation's job does its work."""
    distillation = Distillation.objects.select_for_update(no_key=True).get(pk=distillation_id)
    key = f"{student.pk}:{size}"
    if key in distillation.cells:
        return Job.objects.get(pk=distillation.cells[key])
    job = Job.objects.create(kind=Job.Kind.LORA, status=Job.Status.SUCCEEDED, progress=100,
                             params={"dataset": subset.pk, **lora, "distillation": distillation.pk},
                             source_version=student, created_by=distillation.created_by,
                             message=f"Trained by distillation {distillation.pk}", started_at=timezone.now(),
                             finished_at=timezone.now())
    distillation.cells = {**distillation.cells, key: job.pk}
    distillation.save(update_fields=["cells"])
    append_event(actor=distillation.created_by, action="job.created", object_type="job", object_id=job.pk,
                 model_name=student.model.name,
                 after={"kind": job.kind, "params": job.params, "source_version": student.number})
    return job


@transaction.atomic
def record_distillation_row(*, distillation_id: int, row: dict, cell_job_id: int) -> None:
    """One trained and evaluated student: its row of the table (and the result of the job that registered it)."""
    distillation = Distillation.objects.select_for_update(no_key=True).get(pk=distillation_id)
    if any(existing["student_id"] == row["student_id"] and existing["size"] == row["size"]
           for existing in distillation.rows):
        return
    distillation.rows = [*distillation.rows, row]
    distillation.save(update_fields=["rows"])
    Job.objects.filter(pk=cell_job_id).update(result={"model": row["student"]["model"], "version": row["version"]})


@transaction.atomic
def finish_distillation(*, distillation_id: int) -> dict | None:
    """Pick the best candidate (the smallest meeting f1_relative_min) and record it."""
    distillation = Distillation.objects.select_for_update(no_key=True).select_related("teacher__model").get(
        pk=distillation_id)
    distillation.best = distillation_pipeline.best_candidate(distillation.rows,
                                                            distillation.params["f1_relative_min"])
    distillation.save(update_fields=["best"])
    append_event(actor=None, action="distillation.completed", object_type="distillation",
                 object_id=distillation.pk, model_name=distillation.teacher.model.name,
                 after={"rows": len(distillation.rows), "best": distillation.best})
    return distillation.best
