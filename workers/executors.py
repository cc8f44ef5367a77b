"""What each kind of job does: fetch its inputs from the registry, run a pure pipeline, register the output.

Each executor takes the claimed Job, a scratch directory that the runner deletes afterwards and a `report`
callback (which raises JobCancelled when the user cancelled), and returns the job's result document.
"""
import json
from pathlib import Path

from foundation import storage
from registry import services as registry_services
from registry.models import Dataset, LineageEdge, ModelVersion
from workers import charts, services, signals
from workers.models import Job
from workers.pipelines.quantize import QuantizeSpec, quantize_version


def download_version(version: ModelVersion, destination: Path) -> Path:
    """Materialise a sealed version's files in a local directory (the layout from_pretrained expects)."""
    for version_file in version.files.all():
        storage.download_to(version_file.object_key, destination / version_file.path,
                            version_id=version_file.storage_version_id)
    return destination


def execute_quantize(*, job, workdir: Path, report) -> dict:
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
    return {"model": version.model.name, "version": version.number}


def adapter_base(version: ModelVersion) -> ModelVersion:
    return version.parent_edges.get(relation=LineageEdge.Relation.ADAPTED_FROM).parent_version


def download_loadable(version: ModelVersion, destination: Path) -> tuple[Path, Path | None]:
    """(model dir, adapter dir or None): a LoRA version loads as its base plus its adapter."""
    if version.kind == ModelVersion.Kind.LORA:
        base_dir = download_version(adapter_base(version), destination / "base")
        return base_dir, download_version(version, destination / "adapter")
    return download_version(version, destination / "model"), None


def read_dataset(dataset: Dataset) -> list[dict]:
    raw = storage.read_bytes(dataset.object_key, version_id=dataset.storage_version_id)
    return [json.loads(line) for line in raw.splitlines() if line.strip()]


def _evaluation_inputs(records: list[dict]) -> tuple[list[str], list[dict] | None]:
    """Texts for the token statistics and, for multiple-choice data, the questions for flips."""
    if records and "choices" in records[0]:
        texts = [f"{r['prompt']} {r['choices'][r['answer']]}" for r in records]
        return texts, records
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
    return {"analysis": analysis.pk}


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
    return {"model": version.model.name, "version": version.number}


def execute_pii_scan(*, job, workdir: Path, report) -> dict:
    dataset = Dataset.objects.get(pk=job.params["dataset"])
    report(2, f"Downloading dataset {dataset.name}")
    path = workdir / "dataset.jsonl"
    storage.download_to(dataset.object_key, path, version_id=dataset.storage_version_id)
    return services.scan_dataset_file(dataset_id=dataset.pk, path=path,
                                      report=lambda percent, message: report(5 + int(percent * 0.9), message))


EXECUTORS = {
    Job.Kind.QUANTIZE: execute_quantize,
    Job.Kind.ANALYSIS: execute_analysis,
    Job.Kind.LORA: execute_lora,
    Job.Kind.PII_SCAN: execute_pii_scan,
}
