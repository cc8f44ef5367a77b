"""Everything a report states, gathered from the database in one place, as plain dictionaries.

The renderer turns these into a PDF and never queries anything itself, so what a report says is decided here
and tested here. Times are timezone-aware datetimes; numbers stay numbers (the template formats them).
"""
from django.conf import settings
from django.utils import timezone

from foundation.models import AuditEvent
from foundation.roles import ALL_ROLES, user_roles
from governance import selectors as governance_selectors
from governance.models import AliasChange, ChangeRequest
from registry import selectors
from registry.models import Dataset, LineageEdge, ModelVersion
from reports import pki
from reports.quantization_facts import calibrated_quantization_facts, is_calibrated
from workers.models import Analysis, Evaluation

# The order and wording of the distribution statistics in the KL and delta-p tables (API.md, analyses).
DISTRIBUTION_STATISTICS = (
    ("mean", "mean"),
    ("mean_uncertainty", "± standard error of the mean"),
    ("min", "minimum"),
    ("p0_1", "0.1th percentile"),
    ("p1", "1st percentile"),
    ("p5", "5th percentile"),
    ("p10", "10th percentile"),
    ("median", "median"),
    ("p90", "90th percentile"),
    ("p95", "95th percentile"),
    ("p99", "99th percentile"),
    ("p99_9", "99.9th percentile"),
    ("max", "maximum"),
)
# How the task metrics of an evaluation are named in the report, in this order (workers.pipelines.evaluation).
TASK_METRICS = (
    ("accuracy", "accuracy"),
    ("acc", "accuracy (lm-eval acc)"),
    ("acc_norm", "length-normalised accuracy (acc_norm)"),
    ("macro_f1", "macro-F1"),
    ("exact_match", "exact match"),
    ("token_f1", "token F1"),
)
TASK_TYPES = {"multiple_choice": "multiple choice", "classification": "classification",
              "generation": "generation (greedy decoding)"}
# Metrics that are proportions: their deltas are stated in percentage points.
PROPORTIONS = frozenset(name for name, _ in TASK_METRICS)
# How many modules the "most sensitive layers" table lists; the appendix lists them all.
SENSITIVE_LAYERS = 12

MATERIALITY_RULE = (
    "A change is material unless it is a quantization of the version currently in service whose measured "
    "behaviour stays within every gate of the alias's policy. First deployments, retraining (LoRA updates), "
    "replacements by versions not derived from the one in service, and deployments with a failed gate "
    "(override) are material."
)


def change_impact_facts(request: ChangeRequest, *, signature_fields: list[dict]) -> dict:
    """What a change-impact report states about `request` at its current round; `signature_fields` are the
    slots ({field, kind, label, hint}) that the approvers and the final issue stamp will sign."""
    to_version = _version_with_files(request.to_version)
    from_version = _version_with_files(request.from_version) if request.from_version else None
    analysis = request.analysis if request.analysis_id and request.analysis.result is not None else None
    evaluation = request.evaluation if request.evaluation_id and request.evaluation.result is not None else None
    return {
        "kind": "change_impact",
        **_common_facts(),
        "model": _model_facts(request.model),
        "change_request": {
            "id": request.pk,
            "alias": request.alias,
            "status": request.status,
            "round": request.round,
            "justification": request.justification,
            "requested_by": person(request.requested_by),
            "created_at": request.created_at,
            "expires_at": request.expires_at,
            "required_approvals": request.required_approvals,
            "override": request.override,
            "status_reason": request.status_reason,
        },
        "from_version": from_version,
        "to_version": to_version,
        "change": change_facts(request.to_version),
        "datasets": dataset_facts(request.to_version, analysis, evaluation),
        "analysis": analysis_facts(analysis) if analysis else None,
        "evaluation": evaluation_facts(evaluation) if evaluation else None,
        "task_gates_expected": bool(request.eval_dataset_id) or any(
            (request.policy_snapshot or {}).get(field) is not None
            for field in ("accuracy_drop_max", "f1_relative_min")),
        "gates": [dict(gate) for gate in request.gates],
        "policy": dict(request.policy_snapshot),
        "materiality": materiality(request),
        "lineage": lineage_facts(request.to_version),
        "signature_fields": signature_fields,
        "rollback_target": _version_summary(request.from_version) if request.from_version else None,
    }


def rollback_facts(change: AliasChange, *, signature_fields: list[dict]) -> dict:
    """What a rollback report states: who moved the alias back, when, why, between which versions, and the gates
    under which the restored version was approved."""
    alias = change.alias
    return {
        "kind": "rollback",
        **_common_facts(),
        "model": _model_facts(alias.model),
        "rollback": {
            "id": change.pk,
            "alias": alias.name,
            "actor": person(change.actor),
            "at": change.created_at,
            "reason": change.reason,
        },
        "from_version": _version_with_files(change.from_version) if change.from_version else None,
        "to_version": _version_with_files(change.to_version),
        "restored": _deployment_facts(alias.model_id, alias.name, change.to_version),
        "removed": _deployment_facts(alias.model_id, alias.name, change.from_version) if change.from_version else None,
        "signature_fields": signature_fields,
    }


def audit_head() -> dict | None:
    """The newest event of the audit chain: its sequence number and hash."""
    head = AuditEvent.objects.order_by("-sequence").values("sequence", "hash", "occurred_at").first()
    return dict(head) if head else None


def person(user) -> dict:
    """A user as reports name them: full name when known, user name, e-mail, product roles."""
    roles = [role for role in ALL_ROLES if role in user_roles(user)]
    if user.is_superuser:
        roles.append("superuser")
    return {"id": user.pk, "name": user.get_full_name() or user.username, "username": user.username,
            "email": user.email, "roles": roles}


def materiality(request: ChangeRequest) -> dict:
    """Whether the change is material under MATERIALITY_RULE, with the reasons that decide it."""
    to_version = request.to_version
    reasons = []
    if request.from_version is None:
        reasons.append(f"first deployment of {request.model.name} to {request.alias}")
    else:
        parents = set(to_version.parent_edges.filter(parent_version__isnull=False)
                      .values_list("parent_version_id", flat=True))
        if to_version.kind == ModelVersion.Kind.LORA:
            reasons.append("the weights were retrained on new data (LoRA update)")
        elif to_version.kind == ModelVersion.Kind.UPLOAD:
            reasons.append(f"v{to_version.number} is a new upload, not derived from v{request.from_version.number}")
        elif request.from_version_id not in parents:
            reasons.append(f"v{to_version.number} is not derived from the version in service "
                           f"(v{request.from_version.number})")
    failed = [gate["name"] for gate in request.gates if not gate.get("passed")]
    if failed:
        reasons.append(f"gates failed: {', '.join(failed)}" + (" (deployed only under the policy's override)"
                                                                 if request.override else ""))
    return {"material": bool(reasons), "reasons": reasons, "rule": MATERIALITY_RULE}


def lineage_facts(version: ModelVersion) -> dict:
    """The version's lineage (registry.selectors.lineage) with a readable label on every node and edge."""
    graph = selectors.lineage(version)
    for node in graph["nodes"]:
        if node["type"] == "dataset":
            node["label"] = f"dataset {node['name']} ({node['purpose']})"
        else:
            node["label"] = f"{node['model']} v{node['number']} ({node['kind']})"
            node["current"] = node["model"] == version.model.name and node["number"] == version.number
    labels = {node["id"]: node["label"] for node in graph["nodes"]}
    for edge in graph["edges"]:
        edge["parent_label"], edge["child_label"] = labels[edge["parent"]], labels[edge["child"]]
    return graph


def change_facts(version: ModelVersion) -> dict:
    """How the new version was made: quantization or LoRA settings as key/value rows, and the training curve; a
    calibrated quantization (GPTQ, AWQ) as its own structured account instead of rows."""
    if version.kind == ModelVersion.Kind.QUANTIZED and is_calibrated(version.quantization):
        return {"kind": "quantized", "title": "Quantization", "rows": [], "curve": None,
                "calibrated": calibrated_quantization_facts(dict(version.quantization))}
    if version.kind == ModelVersion.Kind.QUANTIZED and version.quantization:
        quantization = dict(version.quantization)
        return {"kind": "quantized", "title": "Quantization", "rows": sorted(flatten(quantization)), "curve": None}
    if version.kind == ModelVersion.Kind.LORA and version.lora:
        lora = dict(version.lora)
        curve = lora.pop("curve", None) or []
        return {"kind": "lora", "title": "LoRA training", "rows": sorted(flatten(lora)), "curve": curve}
    return {"kind": version.kind, "title": "Upload", "rows": [], "curve": None}


def dataset_facts(version: ModelVersion, analysis: Analysis | None,
                  evaluation: Evaluation | None = None) -> list[dict]:
    """Datasets the change depends on: training and calibration data from the lineage, the evaluation data."""
    rows = []
    edges = (LineageEdge.objects.filter(child=version, parent_dataset__isnull=False)
             .select_related("parent_dataset").order_by("pk"))
    for edge in edges:
        rows.append(_dataset_row(edge.parent_dataset, use=edge.relation.replace("_", " ")))
    if analysis is not None:
        rows.append(_dataset_row(analysis.dataset, use="evaluated on (gates)"))
    if evaluation is not None:
        rows.append(_dataset_row(evaluation.dataset, use="task performance (task gates)"))
    return rows


def evaluation_facts(evaluation: Evaluation) -> dict:
    """A task evaluation as the report states it: each metric for reference and candidate with its standard error,
    the change in points (relative F1 as a ratio), the per-class table and the confusion matrices."""
    result = evaluation.result
    reference = result.get("reference") or {}
    reference_metrics = reference.get("metrics") or {}
    deltas = result.get("deltas") or {}
    rows = []
    for name, label in TASK_METRICS:
        metric = result["metrics"].get(name)
        if metric is None:
            continue
        delta = deltas.get(name) or {}
        rows.append({
            "name": name, "label": label,
            "candidate": metric["value"], "candidate_stderr": metric.get("stderr"),
            "reference": (reference_metrics.get(name) or {}).get("value"),
            "reference_stderr": (reference_metrics.get(name) or {}).get("stderr"),
            "delta": delta.get("delta"), "delta_stderr": delta.get("stderr"),
            "delta_unit": "points" if name in PROPORTIONS else "",
            "f1_relative": delta.get("f1_relative"), "f1_relative_stderr": delta.get("f1_relative_stderr"),
        })
    reference_classes = reference.get("per_class") or {}
    classes = result.get("per_class") or {}
    # The stored JSON (jsonb) keeps no key order: the labels come in the confusion matrix's (sorted) order.
    labels = (result.get("confusion") or {}).get("labels") or sorted(classes)
    per_class = [
        {"label": label, "support": classes[label].get("support"),
         **{name: (classes[label].get(name) or {}).get("value") for name in ("precision", "recall", "f1")},
         "reference_f1": ((reference_classes.get(label) or {}).get("f1") or {}).get("value")}
        for label in labels if label in classes
    ]
    return {
        "id": evaluation.pk,
        "task_type": evaluation.task_type,
        "task_label": TASK_TYPES.get(evaluation.task_type, evaluation.task_type),
        "candidate": evaluation.candidate.number,
        "reference": evaluation.reference.number if evaluation.reference_id else None,
        "dataset": {"id": evaluation.dataset_id, "name": evaluation.dataset.name},
        "samples": result.get("samples"),
        "seconds": result.get("seconds"),
        "harness": result.get("harness") or {},
        "params": dict(evaluation.params),
        "metric_rows": rows,
        "per_class": per_class,
        "confusion": result.get("confusion"),
        "reference_confusion": reference.get("confusion"),
        "created_at": evaluation.created_at,
    }


def analysis_facts(analysis: Analysis) -> dict:
    result = analysis.result
    layers = list(result.get("layers") or [])
    ranked = sorted(layers, key=lambda layer: -(layer.get("relative_error") or 0.0))
    return {
        "id": analysis.pk,
        "reference": analysis.reference.number,
        "candidate": analysis.candidate.number,
        "params": dict(analysis.params),
        "result": result,
        "distribution_rows": [
            {"key": key, "label": label, "kl": result["kl"].get(key), "delta_p": result["delta_p"].get(key)}
            for key, label in DISTRIBUTION_STATISTICS
        ],
        "sensitive_layers": ranked[:SENSITIVE_LAYERS],
        "layers": layers,
        "created_at": analysis.created_at,
    }


def flatten(document: dict, prefix: str = "") -> list[tuple[str, object]]:
    """Nested settings as (dotted key, value) rows; lists of scalars stay one row."""
    rows = []
    for key, value in document.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            rows.extend(flatten(value, prefix=f"{name}."))
        elif isinstance(value, list) and value and all(isinstance(item, dict) for item in value):
            for index, item in enumerate(value):
                rows.extend(flatten(item, prefix=f"{name}[{index}]."))
        else:
            rows.append((name, value))
    return rows


def _common_facts() -> dict:
    return {
        "organisation": settings.REPORT_ORGANISATION,
        "issued_at": timezone.now(),
        "audit_head": audit_head(),
        "verification": pki.root_summary(),
    }


def _model_facts(model) -> dict:
    return {"name": model.name, "description": model.description, "created_at": model.created_at,
            "created_by": person(model.created_by)}


def _version_summary(version: ModelVersion) -> dict:
    return {"number": version.number, "kind": version.kind, "manifest_sha256": version.manifest_sha256,
            "description": version.description}


def _version_with_files(version: ModelVersion) -> dict:
    version = (ModelVersion.objects.select_related("model", "created_by")
               .prefetch_related("files", "parent_edges__parent_version", "parent_edges__parent_dataset")
               .get(pk=version.pk))
    return {
        **_version_summary(version),
        "status": version.status,
        "created_by": person(version.created_by),
        "created_at": version.created_at,
        "sealed_at": version.sealed_at,
        "files": [{"path": f.path, "size": f.size, "sha256": f.sha256, "storage_version_id": f.storage_version_id}
                  for f in version.files.all()],
        "parents": [
            {"relation": edge.relation.replace("_", " "),
             "parent": (f"v{edge.parent_version.number}" if edge.parent_version
                        else f"dataset {edge.parent_dataset.name}")}
            for edge in version.parent_edges.all()
        ],
    }


def _dataset_row(dataset: Dataset, *, use: str) -> dict:
    counts = {kind: count for kind, count in ((dataset.pii or {}).get("counts") or {}).items() if count}
    return {"id": dataset.pk, "name": dataset.name, "purpose": dataset.purpose, "use": use,
            "sha256": dataset.sha256, "records": dataset.records, "size": dataset.size,
            "storage_version_id": dataset.storage_version_id,
            "pii_status": dataset.pii_status, "pii_counts": counts, "pii_exception": dataset.pii_exception,
            "redaction_lineage": _redaction_lineage(dataset)}


def _redaction_lineage(dataset: Dataset) -> list[dict]:
    """The datasets this one was redacted from, nearest first, with how each step redacted."""
    chain = []
    while dataset.redacted_from_id:
        original = dataset.redacted_from
        chain.append({"id": original.pk, "name": original.name, "sha256": original.sha256,
                      "pii_status": original.pii_status, "strategy": (dataset.redaction or {}).get("strategy")})
        dataset = original
    return chain


def _deployment_facts(model_id: int, alias: str, version: ModelVersion) -> dict:
    """The approved change request that deployed `version` to the alias: its gates, approvals and report."""
    request = governance_selectors.deployed_change_request(model_id=model_id, alias=alias, version=version)
    if request is None:
        return {"version": version.number, "change_request": None, "gates": [], "approvals": [], "report": None}
    approvals = [
        {"name": person(decision.decided_by)["name"], "decision": decision.decision, "at": decision.created_at,
         "comment": decision.comment}
        for decision in request.decisions.filter(round=request.round).select_related("decided_by")
    ]
    report = request.reports.filter(status="final").order_by("-finalised_at").first()
    return {
        "version": version.number,
        "change_request": request.pk,
        "deployed_at": request.deployed_at,
        "gates": [dict(gate) for gate in request.gates],
        "override": request.override,
        "approvals": approvals,
        "report": {"id": report.pk, "sha256": report.sha256} if report else None,
    }
