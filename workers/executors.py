"""What each kind of job does: fetch its inputs from the registry, run a pure pipeline, register the output.

Each executor takes the claimed Job, a scratch directory that the runner deletes afterwards and a `report`
callback (which raises JobCancelled when the user cancelled), and returns the job's result document.
"""
import json
import shutil
from collections import Counter
from pathlib import Path

from foundation import storage
from registry import services as registry_services
from registry.models import Dataset, LineageEdge, ModelVersion
from workers import charts, distillation_services, pii_services, services, signals
from workers.models import Job
from workers.pipelines.calibrated.run import quantize_calibrated_version
from workers.pipelines.calibrated.spec import CALIBRATED_METHODS, CalibratedQuantizeSpec
from workers.pipelines.memory import memory_figures
from workers.pipelines.quantize import QuantizeSpec, quantize_version


def download_version(version: ModelVersion, destination: Path) -> Path:
    """Materialise a sealed version's files in a local directory (the layout from_pretrained expects), each
    checked against the SHA-256 recorded at upload."""
    for version_file in version.files.all():
        storage.download_to(version_file.object_key, destination / version_file.path,
                            version_id=version_file.storage_version_id, sha256=version_file.sha256)
    return destination


def execute_quantize(*, job, workdir: Path, report) -> dict:
    if job.params["method"] in CALIBRATED_METHODS:
        return execute_calibrated_quantize(job=job, workdir=workdir, report=report)
    source = job.source_version
    report(2, f"Downloading {source}")
    source_dir = download_version(source, workdir / "source")
    spec = QuantizeSpec(**job.params)
    report(10, f"Quantizing with {spec.method}")
    output_dir = workdir / "output"
    metadata = quantize_version(source_dir, output_dir, spec,
                                report=lambda percent, message: report(10 + int(percent * 0.75), message))
    report(88, "Uploading and registering the quantized version")
    version = registry_services.register_derived_version(
        parent=source, job=job, local_dir=output_dir, kind=ModelVersion.Kind.QUANTIZED,
        relation=LineageEdge.Relation.QUANTIZED_FROM, metadata=metadata,
        description=f"{spec.method} quantization of v{source.number}", actor=job.created_by,
    )
    return {"model": version.model.name, "version": version.number, **memory_figures(metadata)}


def calibration_texts(records: list[dict]) -> list[str]:
    """The text of each calibration record: `text`, or a training-style prompt and completion joined."""
    return [record["text"] if "text" in record else f"{record.get('prompt', '')} {record.get('completion', '')}"
            for record in records]


def execute_calibrated_quantize(*, job, workdir: Path, report) -> dict:
    """GPTQ or AWQ on the job's calibration dataset; registers the version with parents quantized_from and
    calibrated_on, and the settings, calibration data and per-module loss as its quantization metadata."""
    source = job.source_version
    params = dict(job.params)
    dataset = Dataset.objects.get(pk=params.pop("calibration_dataset"))
    keep_sensitive = params.pop("keep_sensitive", None)
    spec = CalibratedQuantizeSpec(**{**params, "skip_modules": tuple(params["skip_modules"]),
                                     "keep": tuple(params["keep"])})
    report(2, f"Downloading {source} and calibration dataset {dataset.name}")
    source_dir = download_version(source, workdir / "source")
    texts = calibration_texts(read_dataset(dataset))
    output_dir = workdir / "output"
    metadata = quantize_calibrated_version(source_dir, output_dir, spec, texts,
                                     report=lambda percent, message: report(5 + int(percent * 0.8), message))
    metadata["calibration"].update({"dataset": dataset.pk, "name": dataset.name, "sha256": dataset.sha256,
                                    "records": dataset.records})
    metadata["calibration_dataset"] = {"id": dataset.pk, "sha256": dataset.sha256}
    if keep_sensitive:
        kept = {item["name"] for item in metadata["kept_modules"] if item["reason"] == "keep_sensitive"}
        top_n = keep_sensitive.get("top_n")
        rule = ("the layer with the largest relative error" if top_n == 1
                else f"among the {top_n} layers with the largest relative error" if top_n is not None
                else f"relative error above {keep_sensitive['max_relative_error']}")
        metadata["keep_sensitive"] = {**keep_sensitive, "kept": sorted(kept),
                                      "reason": f"{rule} in analysis {keep_sensitive['analysis']}"}
    report(88, "Uploading and registering the quantized version")
    version = registry_services.register_derived_version(
        parent=source, job=job, local_dir=output_dir, kind=ModelVersion.Kind.QUANTIZED,
        relation=LineageEdge.Relation.QUANTIZED_FROM, metadata=metadata,
        datasets=[(dataset, LineageEdge.Relation.CALIBRATED_ON)],
        description=f"{spec.method.upper()} {spec.bits}-bit (group {spec.group_size}) of v{source.number} "
                    f"calibrated on {dataset.name}", actor=job.created_by,
    )
    return {"model": version.model.name, "version": version.number, **memory_figures(metadata)}


def adapter_base(version: ModelVersion) -> ModelVersion:
    return version.parent_edges.get(relation=LineageEdge.Relation.ADAPTED_FROM).parent_version


def download_loadable(version: ModelVersion, destination: Path) -> tuple[Path, Path | None]:
    """(model dir, adapter dir or None): a LoRA version loads as its base plus its adapter."""
    if version.kind == ModelVersion.Kind.LORA:
        base_dir = download_version(adapter_base(version), destination / "base")
        return base_dir, download_version(version, destination / "adapter")
    return download_version(version, destination / "model"), None


def read_dataset(dataset: Dataset) -> list[dict]:
    raw = storage.read_bytes(dataset.object_key, version_id=dataset.storage_version_id, sha256=dataset.sha256)
    return [json.loads(line) for line in raw.splitlines() if line.strip()]


def _evaluation_inputs(records: list[dict]) -> tuple[list[str], list[dict] | None]:
    """Texts for the token statistics and, for multiple-choice data, the questions for flips."""
    if records and "choices" in records[0]:
        texts = [f"{r['prompt']} {r['choices'][r['answer']]}" for r in records]
        return texts, records
    if records and "text" not in records[0]:  # generation records: the prompt and its expected answer
        return [f"{r['prompt']} {r['answer']}" for r in records], None
    return [r["text"] for r in records], None


def _store_analysis_charts(analysis, result: dict) -> list[dict]:
    figures = {
        "kl_distribution": charts.kl_histogram(result["histograms"]["kl"], mean=result["kl"]["mean"],
                                               p99=result["kl"]["p99"]),
        "delta_p_distribution": charts.delta_p_histogram(result["histograms"]["delta_p"]),
        "layer_error": charts.layer_error_bars(result["layers"]),
        "weight_error_heatmap": charts.weight_error_heatmap(result["layers"]),
    }
    plots = []
    for name, png in figures.items():
        stored = storage.put_bytes(f"analyses/{analysis.pk}/{name}.png", png, content_type="image/png")
        plots.append({"name": name, "object_key": stored.key, "version_id": stored.version_id})
    return plots


def execute_analysis(*, job, workdir: Path, report) -> dict:
    from workers.pipelines.analysis import AnalysisSpec, analyse_versions

    analysis = job.analysis
    report(2, "Downloading the reference and candidate versions")
    reference_dir, reference_adapter = download_loadable(analysis.reference, workdir / "reference")
    candidate_dir, candidate_adapter = download_loadable(analysis.candidate, workdir / "candidate")
    texts, mcq = _evaluation_inputs(read_dataset(analysis.dataset))
    spec = AnalysisSpec(max_tokens=analysis.params["max_tokens"], top_k=analysis.params["top_k"])
    result = analyse_versions(reference_dir, candidate_dir, texts, spec, mcq=mcq,
                              reference_adapter_dir=reference_adapter, candidate_adapter_dir=candidate_adapter,
                              report=lambda percent, message: report(5 + int(percent * 0.85), message))
    report(92, "Drawing and storing the charts")
    plots = _store_analysis_charts(analysis, result)
    services.record_analysis_result(analysis_id=analysis.pk, result=result, plots=plots)
    return {"analysis": analysis.pk, **memory_figures(result)}


def execute_evaluation(*, job, workdir: Path, report) -> dict:
    """Evaluate the candidate (and the reference, when one is named) on the dataset; store metrics and deltas."""
    from workers.pipelines.evaluation import EvaluationSpec, compare, evaluate_model

    evaluation = job.evaluation
    records = read_dataset(evaluation.dataset)
    spec = EvaluationSpec(**evaluation.params)
    versions = [("candidate", evaluation.candidate)]
    if evaluation.reference_id:
        versions.append(("reference", evaluation.reference))
    span = 88 / len(versions)
    results = {}
    for index, (role, version) in enumerate(versions):
        start = 2 + index * span
        report(int(start), f"Downloading the {role} {version}")
        model_dir, adapter_dir = download_loadable(version, workdir / role)

        def scaled(percent: int, message: str, start=start, role=role) -> None:
            report(int(start + 2 + percent * (span - 2) / 100), f"{role.capitalize()}: {message}")

        # LoRA versions run as base + adapter, quantized ones as loaded for serving (load_causal_lm).
        results[role] = evaluate_model(model_dir, records, spec, adapter_dir=adapter_dir, report=scaled)
        shutil.rmtree(workdir / role, ignore_errors=True)  # the next version's download needs the disk
    report(92, "Storing the metrics")
    result = results["candidate"]
    reference = results.get("reference")
    result["reference"] = ({key: reference.get(key) for key in ("metrics", "per_class", "confusion", "seconds")}
                           if reference else None)
    result["deltas"] = compare(reference, result) if reference else {}
    services.record_evaluation_result(evaluation_id=evaluation.pk, result=result)
    return {"evaluation": evaluation.pk}


def execute_distillation(*, job, workdir: Path, report) -> dict:
    """Label (or read labels), cut stratified subsets, train every student on every subset with LoRA, register
    and evaluate each; what a retry finds done (teacher scores, subsets, registered versions, rows) it skips."""
    from workers.pipelines.evaluation import EvaluationSpec, evaluate_model
    from workers.pipelines.evaluation import distillation as pipeline
    from workers.pipelines.evaluation.records import label_set
    from workers.pipelines.lora import train_lora

    distillation = job.distillation
    params = distillation.params
    sizes, label_field = params["sizes"], params["label_field"]
    records = read_dataset(distillation.dataset)
    eval_records = read_dataset(distillation.eval_dataset)
    known_labels = label_set(eval_records)
    texts = [record["text"] for record in records]
    spec = EvaluationSpec(classification_prompt=params["classification_prompt"])
    teacher = distillation.teacher
    students = [ModelVersion.objects.select_related("model").get(pk=pk) for pk in distillation.students]

    report(1, f"Downloading the teacher {teacher}")
    teacher_dir, teacher_adapter = download_loadable(teacher, workdir / "teacher")
    if params["labelled_by"] == "dataset":
        labels = [record[label_field] for record in records]
    else:
        labels = pipeline.teacher_labels(teacher_dir, texts, known_labels, adapter_dir=teacher_adapter,
                                         classification_prompt=spec.classification_prompt,
                                         report=lambda percent, message: report(2 + percent * 8 // 100,
                                                                                f"Teacher labelling: {message}"))
        pipeline.check_stratifiable(labels, sizes)  # before anything is registered
    if distillation.teacher_result is None:
        scored = evaluate_model(teacher_dir, eval_records, spec, adapter_dir=teacher_adapter,
                                report=lambda percent, message: report(10 + percent * 8 // 100,
                                                                       f"Teacher: {message}"))
        distillation_services.record_distillation_teacher(distillation_id=distillation.pk, teacher_result={
            "f1": scored["metrics"]["macro_f1"]["value"], "accuracy": scored["metrics"]["accuracy"]["value"],
            "latency_ms_per_sample": 1000 * scored["seconds"] / scored["samples"],
            "params": pipeline.parameter_count(teacher_dir)
            + (pipeline.parameter_count(teacher_adapter) if teacher_adapter else 0),
            "labelled_by": params["labelled_by"],
            "label_counts": dict(sorted(Counter(labels).items()))})
    shutil.rmtree(workdir / "teacher", ignore_errors=True)
    distillation.refresh_from_db(fields=["teacher_result", "rows"])
    teacher_f1 = distillation.teacher_result["f1"]

    report(19, "Registering the stratified subsets")
    subsets = {}
    for size, indices in pipeline.stratified_subsets(labels, sizes).items():
        subsets[size] = distillation_services.record_distillation_subset(
            distillation_id=distillation.pk, size=size, texts=[texts[index] for index in indices],
            labels=[labels[index] for index in indices], actor=job.created_by)

    done = {(row["student_id"], row["size"]) for row in distillation.rows}
    cells = [(student, size) for student in students for size in sizes]
    span = 78 / len(cells)
    for number, (student, size) in enumerate(cells):
        if (student.pk, size) in done:
            continue
        start = 20 + number * span

        def scaled(percent: int, message: str, start=start, student=student, size=size) -> None:
            report(int(start + percent * span / 100), f"{student.model.name} v{student.number}, {size}: {message}")

        student_dir = workdir / f"student-{student.pk}"
        if not student_dir.exists():
            download_version(student, student_dir)
        subset = subsets[size]
        adapter_dir = workdir / f"adapter-{student.pk}-{size}"
        lora = dict(params["lora"])
        metadata = train_lora(student_dir, read_dataset(subset), adapter_dir,
                              distillation_services.lora_spec_from(lora),
                              report=lambda percent, message, scaled=scaled: scaled(percent * 60 // 100, message),
                              base_reference=f"{student.model.name}/{student.number}")
        metadata["dataset"] = {"id": subset.pk, "name": subset.name, "sha256": subset.sha256}
        metadata["distillation"] = {"id": distillation.pk, "size": size,
                                    "teacher": {"model": teacher.model.name, "version": teacher.number}}
        cell_job = distillation_services.distillation_cell_job(distillation_id=distillation.pk, student=student,
                                                               size=size, subset=subset, lora=lora)
        version = registry_services.register_derived_version(
            parent=student, job=cell_job, local_dir=adapter_dir, kind=ModelVersion.Kind.LORA,
            relation=LineageEdge.Relation.ADAPTED_FROM, metadata=metadata,
            datasets=[(subset, LineageEdge.Relation.TRAINED_ON)],
            description=f"Distillation {distillation.pk}: LoRA of v{student.number} on {size} records labelled by "
                        f"{params['labelled_by']}", actor=job.created_by)
        scored = evaluate_model(student_dir, eval_records, spec, adapter_dir=adapter_dir,
                                report=lambda percent, message, scaled=scaled: scaled(60 + percent * 40 // 100,
                                                                                      message))
        f1 = scored["metrics"]["macro_f1"]["value"]
        distillation_services.record_distillation_row(
            distillation_id=distillation.pk, cell_job_id=cell_job.pk, row={
                "size": size, "student": {"model": student.model.name, "version": student.number},
                "student_id": student.pk, "version": version.number, "f1": f1,
                "f1_stderr": scored["metrics"]["macro_f1"]["stderr"],
                "f1_relative_to_teacher": f1 / teacher_f1 if teacher_f1 else None,
                "accuracy": scored["metrics"]["accuracy"]["value"],
                # Wall time of the evaluation, model load included, per record.
                "latency_ms_per_sample": 1000 * scored["seconds"] / scored["samples"],
                "params": pipeline.parameter_count(student_dir)})
        shutil.rmtree(adapter_dir, ignore_errors=True)
    report(99, "Choosing the best candidate")
    best = distillation_services.finish_distillation(distillation_id=distillation.pk)
    return {"distillation": distillation.pk, "best": best}


def execute_lora(*, job, workdir: Path, report) -> dict:
    from workers.pipelines.lora import LoraSpec, train_lora

    base = job.source_version
    params = dict(job.params)
    dataset = Dataset.objects.get(pk=params.pop("dataset"))
    if params.get("target_modules"):
        params["target_modules"] = tuple(params["target_modules"])
    report(2, f"Downloading {base} and dataset {dataset.name}")
    base_dir = download_version(base, workdir / "base")
    records = read_dataset(dataset)
    output_dir = workdir / "adapter"
    metadata = train_lora(base_dir, records, output_dir, LoraSpec(**params),
                          report=lambda percent, message: report(5 + int(percent * 0.85), message),
                          base_reference=f"{base.model.name}/{base.number}")
    metadata["dataset"] = {"id": dataset.pk, "name": dataset.name, "sha256": dataset.sha256}
    report(92, "Uploading and registering the adapter version")
    version = registry_services.register_derived_version(
        parent=base, job=job, local_dir=output_dir, kind=ModelVersion.Kind.LORA,
        relation=LineageEdge.Relation.ADAPTED_FROM, metadata=metadata,
        datasets=[(dataset, LineageEdge.Relation.TRAINED_ON)],
        description=f"LoRA update of v{base.number} on {dataset.name}", actor=job.created_by,
    )
    # Listeners (governance compares a new adapter with production) run now, in the job: their failure fails it.
    signals.version_registered.send(sender=Job, version_id=version.pk, job_id=job.pk)
    return {"model": version.model.name, "version": version.number, **memory_figures(metadata)}


def execute_pii_scan(*, job, workdir: Path, report) -> dict:
    dataset = Dataset.objects.get(pk=job.params["dataset"])
    report(2, f"Downloading dataset {dataset.name}")
    path = workdir / "dataset.jsonl"
    storage.download_to(dataset.object_key, path, version_id=dataset.storage_version_id, sha256=dataset.sha256)
    return pii_services.scan_dataset_file(dataset_id=dataset.pk, path=path,
                                          report=lambda percent, message: report(5 + int(percent * 0.9), message))


def execute_merge(*, job, workdir: Path, report) -> dict:
    from workers import merge_executors  # (kept apart from this file, see merge_services)

    return merge_executors.execute_merge(job=job, workdir=workdir, report=report, download_version=download_version)


EXECUTORS = {
    Job.Kind.QUANTIZE: execute_quantize,
    Job.Kind.ANALYSIS: execute_analysis,
    Job.Kind.LORA: execute_lora,
    Job.Kind.PII_SCAN: execute_pii_scan,
    Job.Kind.EVALUATION: execute_evaluation,
    Job.Kind.DISTILLATION: execute_distillation,
    Job.Kind.MERGE: execute_merge,
}
