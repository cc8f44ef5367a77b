"""What each kind of job does: fetch its inputs from the registry, run a pure pipeline, register the output.

Each executor takes the claimed Job, a scratch directory that the runner deletes afterwards and a `report`
callback (which raises JobCancelled when the user cancelled), and returns the job's result document.
"""
from pathlib import Path

from registry import services as registry_services
from registry import storage
from registry.models import LineageEdge, ModelVersion
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


EXECUTORS = {
    "quantize": execute_quantize,
}
