"""Merging a LoRA adapter into its full-precision base: the request-time checks and the job (POST .../merge).

Kept apart from services.py (quantization sweeps are built there in parallel). Merging into a quantized base is
refused: the adapter's update would be rounded onto the base's 4-/8-bit grid and mostly lost.
"""
from foundation.errors import Conflict, Unprocessable
from registry.models import LineageEdge, ModelVersion
from registry.teams import require_team_member
from workers.models import Job
from workers.services import create_job


def adapter_base(adapter: ModelVersion) -> ModelVersion | None:
    """The version a LoRA adapter was trained on (its adapted_from parent)."""
    edge = (adapter.parent_edges.select_related("parent_version__model")
            .filter(relation=LineageEdge.Relation.ADAPTED_FROM, parent_version__isnull=False).first())
    return edge.parent_version if edge else None


def start_merge(*, adapter: ModelVersion, actor) -> Job:
    """Check that `adapter` is a ready LoRA version on a full-precision base and queue the merge job."""
    require_team_member(actor=actor, model=adapter.model)
    if not adapter.is_sealed:
        raise Conflict(f"{adapter} is a draft; only a ready LoRA version can be merged.")
    if adapter.kind != ModelVersion.Kind.LORA:
        raise Unprocessable(f"{adapter} is a {adapter.kind} version, not a LoRA adapter; only LoRA versions "
                            "are merged into their base.")
    base = adapter_base(adapter)
    if base is None:
        raise Unprocessable(f"{adapter} records no base version (no adapted_from parent); it cannot be merged.")
    if base.quantization or base.kind == ModelVersion.Kind.QUANTIZED:
        method = (base.quantization or {}).get("method", "quantized")
        raise Unprocessable(
            f"{adapter} was trained on {base}, which is quantized ({method}). Merging into a 4-/8-bit base would "
            "round the adapter's update onto the base's grid and lose its precision; serve the base with the "
            "adapter instead (vllm serve --enable-lora), or train the adapter on the full-precision version.")
    if not base.is_sealed:
        raise Conflict(f"The base {base} is not ready.")
    return create_job(kind=Job.Kind.MERGE, params={"adapter": adapter.number, "base": base.number},
                      source_version=adapter, actor=actor)
