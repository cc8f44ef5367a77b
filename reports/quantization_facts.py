"""What the change-impact report states about a calibrated quantization (GPTQ, AWQ): the settings, the calibration
data, the modules quantized and kept with the reason for each, the per-module quantization loss, and for
sensitivity-guided mixed precision the earlier analysis's error of every layer it kept out of quantization.

Read from `ModelVersion.quantization` as workers.executors.execute_calibrated_quantize records it; bitsandbytes
quantizations are not calibrated and keep their plain settings table. Numbers stay numbers (the template formats).
"""
import ast
import statistics

from workers.models import Analysis
from workers.pipelines.calibrated.spec import CALIBRATED_METHODS, DEFAULT_SKIP_MODULES

# The loss table lists every module when there are at most ALL_MODULES_UP_TO, else the LOSS_ROWS worst.
LOSS_ROWS = 20
ALL_MODULES_UP_TO = 30
SHORT_DIGEST = 16  # hex characters of a SHA-256 shown in tables; the full digest is printed beside them


def is_calibrated(quantization: dict | None) -> bool:
    return bool(quantization) and quantization.get("method") in CALIBRATED_METHODS


def calibrated_quantization_facts(quantization: dict) -> dict:
    """The report's quantization section for a GPTQ or AWQ version (see the module docstring)."""
    settings = quantization.get("settings") or {}
    calibration = quantization.get("calibration") or {}
    method = quantization["method"]
    size_before, size_after = quantization.get("size_before_bytes"), quantization.get("size_after_bytes")
    packed = quantization.get("packed_size_bytes")
    keep = quantization.get("keep_sensitive") or None
    kept = [{"name": item["name"], "reason": item["reason"], "reason_text": _kept_reason(item["reason"], keep)}
            for item in quantization.get("kept_modules") or []]
    return {
        "method": method,
        "method_label": method.upper(),
        "implementation": (quantization.get("library_versions") or {}).get(method),
        "bits": quantization.get("bits", settings.get("bits")),
        "group_size": quantization.get("group_size", settings.get("group_size")),
        "damping": quantization.get("damping", settings.get("damping")),
        "uses_damping": method == "gptq",
        "sym": quantization.get("sym", settings.get("sym")),
        "desc_act": quantization.get("desc_act", settings.get("desc_act")),
        "uses_desc_act": method == "gptq",
        "max_length": calibration.get("max_length", settings.get("max_length")),
        "modules_pattern": settings.get("modules"),
        "skip_patterns": [_pattern_label(pattern) for pattern in settings.get("skip_modules") or []],
        "format": quantization.get("format"),
        "format_note": quantization.get("format_note"),
        "awq_scales": quantization.get("awq_scales"),
        "dtype": quantization.get("dtype"),
        "calibration": {
            "dataset_id": calibration.get("dataset", (quantization.get("calibration_dataset") or {}).get("id")),
            "name": calibration.get("name"),
            "sha256": calibration.get("sha256") or (quantization.get("calibration_dataset") or {}).get("sha256"),
            "sha256_short": (calibration.get("sha256") or "")[:SHORT_DIGEST],
            "records": calibration.get("records"),
            "samples": calibration.get("samples"),
            "samples_requested": settings.get("calibration_samples"),
            "tokens": calibration.get("tokens"),
        },
        "library_versions": sorted((name, version) for name, version in
                                   (quantization.get("library_versions") or {}).items() if name != method),
        "device": quantization.get("device"),
        "wall_seconds": quantization.get("wall_seconds"),
        "peak_rss_bytes": quantization.get("peak_rss_bytes"),
        "peak_gpu_bytes": quantization.get("peak_gpu_bytes"),
        "size_before_bytes": size_before,
        "size_after_bytes": size_after,
        "size_ratio": size_after / size_before if size_before and size_after is not None else None,
        "packed_size_bytes": packed,
        "packed_ratio": packed / size_before if size_before and packed is not None else None,
        "quantized_count": len(quantization.get("quantized_modules") or []),
        "kept": kept,
        "loss": loss_facts(quantization),
        "keep_sensitive": keep_sensitive_facts(keep, kept) if keep else None,
    }


def loss_facts(quantization: dict) -> dict:
    """The per-module quantization loss, worst first: the rows shown, how many there are, and their spread."""
    losses = {name: loss for name, loss in (quantization.get("module_loss") or {}).items() if loss is not None}
    alphas = quantization.get("awq_alpha") or {}
    folded_into = quantization.get("awq_folded_into") or {}
    ranked = sorted(losses.items(), key=lambda item: (-item[1], item[0]))
    shown = ranked if len(ranked) <= ALL_MODULES_UP_TO else ranked[:LOSS_ROWS]
    values = [loss for _, loss in ranked]
    return {
        "definition": quantization.get("loss_definition"),
        "total": len(ranked),
        "all_shown": len(shown) == len(ranked),
        "rows": [{"rank": index, "name": name, "loss": loss, "alpha": alphas.get(name),
                  "folded_into": folded_into.get(name)}
                 for index, (name, loss) in enumerate(shown, start=1)],
        "has_alpha": bool(alphas),
        "has_folded_into": bool(folded_into),
        "mean": statistics.fmean(values) if values else None,
        "median": statistics.median(values) if values else None,
        "max": values[0] if values else None,
    }


def keep_sensitive_facts(keep: dict, kept: list[dict]) -> dict:
    """The analysis keep_sensitive named, the rule, and each layer it selected with its error in that analysis
    (looked up in the analysis's stored layers; the error recorded at request time if the analysis is gone)."""
    analysis = (Analysis.objects.select_related("reference", "candidate").filter(pk=keep.get("analysis")).first()
                if isinstance(keep.get("analysis"), int) else None)
    layers = [layer for layer in ((analysis.result or {}).get("layers") or [] if analysis else [])
              if layer.get("relative_error") is not None]
    ranked = sorted(layers, key=lambda layer: layer["relative_error"], reverse=True)
    position = {layer["name"]: (rank, layer) for rank, layer in enumerate(ranked, start=1)}
    kept_reasons = {item["name"]: item["reason"] for item in kept}
    recorded = {item["name"]: item.get("relative_error") for item in keep.get("modules") or []}
    selected = list(recorded) or list(keep.get("kept") or [])
    rows = []
    for name in selected:
        rank, layer = position.get(name, (None, {}))
        reason = kept_reasons.get(name)
        rows.append({
            "name": name, "rank": rank,
            "relative_error": layer.get("relative_error", recorded.get(name)),
            "relative_error_propagated": layer.get("relative_error_propagated"),
            "sqnr_db": layer.get("sqnr_db"),
            "outcome": ("kept in full precision" if reason == "keep_sensitive"
                        else f"kept already ({_kept_reason(reason, keep)})" if reason
                        else "not among the modules chosen for quantization"),
        })
    rows.sort(key=lambda row: (row["rank"] is None, row["rank"] or 0, row["name"]))
    chosen = {row["name"] for row in rows}
    first_quantized = next((layer for layer in ranked if layer["name"] not in chosen), None)
    return {
        "analysis": keep.get("analysis"),
        "found": analysis is not None,
        "reference": analysis.reference.number if analysis else None,
        "candidate": analysis.candidate.number if analysis else None,
        "created_at": analysis.created_at if analysis else None,
        "top_n": keep.get("top_n"),
        "max_relative_error": keep.get("max_relative_error"),
        "reason": keep.get("reason"),
        "layers_measured": len(ranked),
        "rows": rows,
        "kept_count": sum(1 for row in rows if kept_reasons.get(row["name"]) == "keep_sensitive"),
        "first_quantized": ({"name": first_quantized["name"], "relative_error": first_quantized["relative_error"],
                             "rank": position[first_quantized["name"]][0]} if first_quantized else None),
    }


def _kept_reason(reason: str | None, keep: dict | None) -> str:
    if reason == "keep_sensitive":
        return f"keep_sensitive: {keep['reason']}" if keep and keep.get("reason") else "keep_sensitive"
    if reason and reason.startswith("skip_modules "):
        try:  # the pipeline records the pattern as its repr (backslashes doubled)
            pattern = ast.literal_eval(reason[len("skip_modules "):])
        except (ValueError, SyntaxError):
            pattern = reason[len("skip_modules "):]
        if pattern == DEFAULT_SKIP_MODULES:
            return "default skip list (embeddings, norms, output head stay in full precision)"
        return f"matches skip_modules pattern {pattern}"
    return reason or "—"


def _pattern_label(pattern: str) -> str:
    return f"{pattern} (the default: embeddings, norms, output head)" if pattern == DEFAULT_SKIP_MODULES else pattern
