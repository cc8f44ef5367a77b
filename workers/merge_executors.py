"""The merge job: download the adapter and its base, merge with peft in the base's dtype, register the result
as a `merged` version whose parents are the adapter and the base (both `merged_from`)."""
from pathlib import Path

from registry import services as registry_services
from registry.models import LineageEdge, ModelVersion
from workers.merge_services import adapter_base


def execute_merge(*, job, workdir: Path, report, download_version) -> dict:
    """download_version(version, directory): executors' own, passed in so this module does not import it."""
    from workers.pipelines.lora import merge_lora

    adapter = job.source_version
    base = adapter_base(adapter)
    report(2, f"Downloading {base} and the adapter {adapter}")
    base_dir = download_version(base, workdir / "base")
    adapter_dir = download_version(adapter, workdir / "adapter")
    report(40, "Merging the adapter into the base weights")
    merge = merge_lora(base_dir, adapter_dir, workdir / "merged")
    report(80, "Uploading and registering the merged version")
    metadata = {
        **(adapter.lora or {}),  # the training that produced the merged weights
        "merge": {"adapter": {"model": adapter.model.name, "number": adapter.number},
                  "base": {"model": base.model.name, "number": base.number}, **merge},
    }
    version = registry_services.register_derived_version(
        parent=adapter, job=job, local_dir=workdir / "merged", kind=ModelVersion.Kind.MERGED,
        relation=LineageEdge.Relation.MERGED_FROM, other_parents=[(base, LineageEdge.Relation.MERGED_FROM)],
        metadata=metadata, description=f"v{adapter.number} (LoRA) merged into v{base.number}",
        actor=job.created_by,
    )
    return {"model": version.model.name, "version": version.number, "dtype": merge["dtype"]}
