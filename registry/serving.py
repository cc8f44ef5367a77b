"""How to serve a version with vLLM or SGLang once downloaded: the commands the version page and API show.

Torch-free (the web process builds it). Each directory is where `llmreg pull` puts the version; the commands
follow the version's kind:
- upload, merged, calibrated but written dequantized: plain full-precision weights;
- bitsandbytes (nf4/fp4/int8): vLLM's bitsandbytes loader reads the pre-quantized checkpoint;
- GPTQ or AWQ packed (compressed-tensors): both engines detect the format from config.json's quantization_config;
- LoRA: the base is served with the adapter mounted beside it (the engine applies it per request).
"""

from __future__ import annotations

from registry.models import LineageEdge, ModelVersion

BITSANDBYTES_METHODS = frozenset({"nf4", "fp4", "int8"})
VLLM_DEFAULT_MAX_LORA_RANK = 16


def version_directory(version: ModelVersion) -> str:
    return f"./{version.model.name}-v{version.number}"


def _pull(version: ModelVersion) -> str:
    return f"llmreg pull {version.model.name} {version.number} {version_directory(version)}"


def _weights(version: ModelVersion) -> tuple[list[str], list[str], str]:
    """(vLLM flags, SGLang flags, a note) for serving version's own weights."""
    quantization = version.quantization or {}
    method = quantization.get("method")
    if version.kind == ModelVersion.Kind.QUANTIZED and method in BITSANDBYTES_METHODS:
        return (["--quantization", "bitsandbytes"], ["--quantization", "bitsandbytes"],
                f"bitsandbytes {method} checkpoint: the engines load it with their bitsandbytes loader.")
    if quantization.get("format") == "pack-quantized":
        return ([], [], f"{method.upper()} {quantization.get('bits')}-bit compressed-tensors pack-quantized "
                        "checkpoint: both engines detect it from config.json's quantization_config "
                        "(the same as --quantization compressed-tensors).")
    if method:
        return ([], [], f"{method.upper()} weights stored dequantized in full precision: served as a plain "
                        "checkpoint, without a memory saving.")
    return [], [], "Full-precision checkpoint."


def _base_of(version: ModelVersion) -> ModelVersion | None:
    for edge in version.parent_edges.all():
        if edge.relation == LineageEdge.Relation.ADAPTED_FROM and edge.parent_version_id:
            return edge.parent_version
    return None


def serving_commands(version: ModelVersion) -> dict | None:
    """{engine, download, command, sglang, note} for a ready version; None for a draft (nothing to serve yet)."""
    if version.status != ModelVersion.Status.READY:
        return None
    if version.kind == ModelVersion.Kind.LORA:
        base = _base_of(version)
        if base is None:
            return None
        vllm_flags, sglang_flags, note = _weights(base)
        name = f"{version.model.name}-v{version.number}"
        adapter = f"{name}={version_directory(version)}"
        rank = ((version.lora or {}).get("settings") or {}).get("r")
        rank_flags = (["--max-lora-rank", str(rank)] if isinstance(rank, int) and rank > VLLM_DEFAULT_MAX_LORA_RANK
                      else [])
        return {
            "engine": "vllm",
            "download": [_pull(base), _pull(version)],
            "command": " ".join(["vllm", "serve", version_directory(base), *vllm_flags, "--enable-lora",
                                 "--lora-modules", adapter, *rank_flags]),
            "sglang": " ".join(["python", "-m", "sglang.launch_server", "--model-path", version_directory(base),
                                *sglang_flags, "--enable-lora", "--lora-paths", adapter]),
            "note": f"LoRA adapter on {base.model.name} v{base.number} ({note.rstrip('.')}); request it with "
                    f"\"model\": \"{name}\".",
        }
    vllm_flags, sglang_flags, note = _weights(version)
    return {
        "engine": "vllm",
        "download": [_pull(version)],
        "command": " ".join(["vllm", "serve", version_directory(version), *vllm_flags]),
        "sglang": " ".join(["python", "-m", "sglang.launch_server", "--model-path", version_directory(version),
                            *sglang_flags]),
        "note": note,
    }
