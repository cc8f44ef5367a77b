"""How a version reads on its admin page: its quantization or LoRA settings as labelled rows with units, the
training curve and the lineage drawn as the change-impact report draws them, with a link for every node."""
from django.urls import reverse

from governance import selectors as governance_selectors
from registry.models import ModelVersion
from reports.facts import lineage_facts
from reports.templatetags.report_format import num
from workers import charts

BYTE_UNITS = ("bytes", "KiB", "MiB", "GiB", "TiB")


def byte_size(size) -> str:
    """1536 -> '1.5 KiB (1,536 bytes)'; sizes below 1 KiB stay in bytes."""
    if size is None:
        return "—"
    value, unit = float(size), 0
    while value >= 1024 and unit < len(BYTE_UNITS) - 1:
        value, unit = value / 1024, unit + 1
    return f"{int(size):,} bytes" if unit == 0 else f"{value:.3g} {BYTE_UNITS[unit]} ({int(size):,} bytes)"


def seconds(value) -> str:
    return "—" if value is None else f"{float(value):.3g} s"


def _listing(values) -> str:
    return ", ".join(str(v) for v in values) if values else "none"


def _yes_no(value) -> str:
    return "—" if value is None else ("yes" if value else "no")


def quantization_rows(record: dict) -> list[tuple[str, str]]:
    """(label, value) rows of a quantized version's settings, sizes and libraries."""
    record = record or {}
    settings = record.get("settings") or {}
    method = record.get("method") or settings.get("method")
    before, after = record.get("size_before_bytes"), record.get("size_after_bytes")
    ratio = record.get("size_ratio") or (after / before if before and after else None)
    if method in ("gptq", "awq"):
        rows = _calibrated_rows(record, method)
    else:
        rows = [
            ("Method", {"nf4": "NF4 (4-bit NormalFloat)", "fp4": "FP4 (4-bit float)", "int8": "INT8 (8-bit)"}
             .get(method, method or "—")),
            ("Bits", {"nf4": "4", "fp4": "4", "int8": "8"}.get(method, "—")),
            ("Compute dtype", settings.get("compute_dtype") or "—"),
            ("Double quantization", _yes_no(settings.get("double_quant"))),
        ]
    rows += [
        ("Skipped modules (full precision)",
         _listing(record.get("skipped_modules") or settings.get("skip_modules"))),
        ("Quantized modules", f"{len(record.get('quantized_modules') or []):,}"),
        ("Weights before", byte_size(before)),
        ("Weights after", byte_size(after)),
        ("Size ratio", "—" if ratio is None else f"{ratio:.3f} ({(1 - ratio) * 100:.1f}% smaller)"),
        ("Device", record.get("device") or "—"),
        ("Wall time", seconds(record.get("wall_seconds"))),
    ]
    return rows + library_rows(record)


def _calibrated_rows(record: dict, method: str) -> list[tuple[str, str]]:
    """GPTQ and AWQ settings, the calibration they ran on and how the result is stored."""
    group_size = record.get("group_size")
    calibration = record.get("calibration") or {}
    dataset = record.get("calibration_dataset") or {}
    rows = [
        ("Method", f"{method.upper()} (calibrated)"),
        ("Bits", num(record.get("bits"))),
        ("Group size", "per output channel" if group_size == -1 else num(group_size)),
        ("Symmetric grid", _yes_no(record.get("sym"))),
    ]
    if method == "gptq":
        rows += [("Act-order (desc_act)", _yes_no(record.get("desc_act"))), ("Damping", num(record.get("damping")))]
    rows += [
        ("Calibration dataset", f"{calibration.get('name') or '—'} (id {dataset.get('id', '—')}), SHA-256 "
                                f"{(dataset.get('sha256') or '—')[:16]}…"),
        ("Calibration samples / tokens", f"{num(calibration.get('samples'))} / {num(calibration.get('tokens'))}"),
        ("Stored as", record.get("format") or "—"),
    ]
    return rows


def library_rows(record: dict) -> list[tuple[str, str]]:
    return [(f"{library} version", str(version)) for library, version in (record.get("library_versions") or {}).items()]


def lora_rows(record: dict) -> list[tuple[str, str]]:
    """(label, value) rows of a LoRA version's training settings and outcome."""
    record = record or {}
    settings = record.get("settings") or {}
    rows = [
        ("Rank r", num(settings.get("r"))),
        ("Alpha", num(settings.get("alpha"))),
        ("Dropout", num(settings.get("dropout"))),
        ("Target modules", _listing(settings.get("target_modules"))),
        ("Steps", num(settings.get("steps"))),
        ("Learning rate", num(settings.get("learning_rate"))),
        ("Batch size × accumulation",
         f"{settings.get('batch_size', '—')} × {settings.get('gradient_accumulation', 1)}"),
        ("Max sequence length", f"{settings.get('max_length', '—')} tokens"),
        ("Optimizer", f"{settings.get('optimizer', '—')}, {settings.get('lr_schedule', '—')} schedule"),
        ("Seed", str(settings.get("seed", "—"))),
        ("QLoRA (quantized base)", _yes_no(settings.get("qlora"))),
        ("Trainable parameters", num(record.get("trainable_parameters"))),
        ("Training / evaluation records", f"{num(record.get('train_records'))} / {num(record.get('eval_records'))}"),
        ("Evaluation loss before", num(record.get("eval_loss_before"))),
        ("Evaluation loss after", num(record.get("eval_loss_after"))),
        ("Training time", seconds(record.get("training_seconds"))),
        ("Device", record.get("device") or "—"),
    ]
    return rows + library_rows(record)


def training_curve_chart(record: dict) -> str | None:
    """The LoRA training curve as an inline PNG (data URI), or None without a curve."""
    curve = (record or {}).get("curve") or []
    return charts.as_data_uri(charts.training_curve(curve)) if curve else None


def training_curve_rows(record: dict) -> list[dict]:
    return [{"step": point.get("step"), "loss": num(point.get("loss")), "eval_loss": num(point.get("eval_loss"))}
            for point in (record or {}).get("curve") or []]


def _node_url(node: dict, versions_by_key: dict) -> str | None:
    if node["type"] == "dataset":
        return reverse("admin:registry_dataset_change", args=[node["dataset"]])
    version = versions_by_key.get((node["model"], node["number"]))
    return reverse("admin:registry_modelversion_change", args=[version.pk]) if version else None


def lineage_view(version: ModelVersion) -> dict:
    """The lineage picture (the report's drawing) and its edges with a link on both ends."""
    graph = lineage_facts(version)
    keys = {(node["model"], node["number"]) for node in graph["nodes"] if node["type"] == "version"}
    versions = {(v.model.name, v.number): v for v in ModelVersion.objects.select_related("model")
                .filter(model__name__in={model for model, _ in keys})}
    links = {node["id"]: {"label": node["label"], "url": _node_url(node, versions)} for node in graph["nodes"]}
    picture_nodes = [{"id": node["id"], "label": node["label"],
                      "kind": "dataset" if node["type"] == "dataset" else
                      ("current" if node.get("current") else "version")} for node in graph["nodes"]]
    picture = charts.lineage_graph(picture_nodes, graph["edges"]) if graph["edges"] else None
    return {
        "picture": charts.as_data_uri(picture) if picture else None,
        "edges": [{"parent": links[edge["parent"]], "child": links[edge["child"]],
                   "relation": edge["relation"].replace("_", " ")} for edge in graph["edges"]],
    }


def version_aliases(version: ModelVersion) -> list:
    """The aliases of its model that point at this version now."""
    return list(governance_selectors.aliases_of(version.model).filter(version=version))
