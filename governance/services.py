"""Change requests, decisions, deployments and rollbacks: one transaction each, rows locked, audit written inside.

Separation of duties lives here, not in views: the requester and the author of the candidate version never
decide; one decision per person per round (also a database constraint); a deployment moves the alias in the
same transaction as the decision that reached the quorum.
"""
from datetime import timedelta

from django.db import IntegrityError, transaction
from django.utils import timezone

from foundation.announcements import announce_on_commit
from foundation.audit import append_event
from foundation.errors import Conflict, InvalidInput, NotFound, PermissionDenied, Unprocessable
from foundation.roles import APPROVER, ML_ENGINEER, OPS, has_role
from foundation.tasks import anchor_audit_head
from governance import signals
from governance.models import (
    DEFAULT_ACCURACY_DROP_MAX,
    DEFAULT_GATES,
    GATE_THRESHOLD_FIELDS,
    GATES,
    TASK_GATE_MEASURES,
    Alias,
    AliasChange,
    ChangeRequest,
    Decision,
    Policy,
)
from registry.models import Dataset, ModelVersion, RegisteredModel
from registry.selectors import newest_evaluation_dataset
from registry.teams import require_team_member
from workers.models import Analysis, Evaluation, QuantizationSweep
from workers.services import evaluation_task_type, start_analysis, start_evaluation
from workers.sweep_services import record_sweep_gates

POLICY_FIELDS = ("required_approvals", *GATE_THRESHOLD_FIELDS, "allow_override", "expiry_days", "auto_rollback",
                 "max_error_increase")
# What gating (_apply_gates, _gate_or_queue) may change on a change request, and what moving its alias changes.
_GATED_FIELDS = ["policy_snapshot", "required_approvals", "override", "analysis", "evaluation", "gates", "status",
                 "status_reason"]
_REGATED_FIELDS = [*_GATED_FIELDS, "from_version", "round", "dataset"]


# Which metric of an evaluation each task gate reads, per task type (workers.pipelines.evaluation).
ACCURACY_METRIC = {"classification": "accuracy", "multiple_choice": "acc", "generation": "exact_match"}
F1_METRIC = {"classification": "macro_f1", "generation": "token_f1"}


def default_policy(alias: str) -> dict:
    return {"required_approvals": 2 if alias == "production" else 1, **DEFAULT_GATES, "allow_override": False,
            "expiry_days": 7, "auto_rollback": False, "max_error_increase": 0.05, "eval_dataset": None}


def effective_policy(model: RegisteredModel, alias: str) -> dict:
    policy = Policy.objects.filter(model=model, alias=alias).first()
    if policy is None:
        return default_policy(alias)
    return {**{field: getattr(policy, field) for field in POLICY_FIELDS}, "eval_dataset": policy.eval_dataset_id}


def _check_eval_dataset(dataset_id) -> Dataset | None:
    """The labelled set task gates are measured on: it must exist and pose a task (or a clear 4xx)."""
    if dataset_id is None:
        return None
    dataset = Dataset.objects.filter(pk=dataset_id).first()
    if dataset is None:
        raise NotFound(f"No dataset with id {dataset_id}.", field="eval_dataset")
    try:
        evaluation_task_type(dataset)
    except (InvalidInput, Unprocessable) as error:
        error.field = "eval_dataset"
        raise
    return dataset


@transaction.atomic
def set_policy(*, model: RegisteredModel, alias: str, values: dict, actor) -> dict:
    """Replace the policy of one alias (superusers only)."""
    if not actor.is_superuser:
        raise PermissionDenied("Only superusers may change a deployment policy.")
    before = effective_policy(model, alias)
    merged = {**before, **values}
    if merged["required_approvals"] < 1:
        raise InvalidInput("required_approvals must be at least 1.", field="required_approvals")
    eval_dataset = _check_eval_dataset(merged["eval_dataset"])
    fields = {field: merged[field] for field in POLICY_FIELDS}
    policy, _ = Policy.objects.select_for_update(no_key=True).get_or_create(
        model=model, alias=alias, defaults={**fields, "eval_dataset": eval_dataset, "updated_by": actor})
    for field in POLICY_FIELDS:
        setattr(policy, field, merged[field])
    policy.eval_dataset = eval_dataset
    policy.updated_by = actor
    policy.save(update_fields=[*POLICY_FIELDS, "eval_dataset", "updated_by", "updated_at"])
    append_event(actor=actor, action="policy.updated", object_type="policy", object_id=policy.pk,
                 model_name=model.name, before=before, after=merged | {"alias": alias})
    return merged


def measured_values(result: dict) -> dict:
    """Each gate's measure, from an analysis result (None when it was not measured)."""
    flips = result.get("flips") or {}
    return {"kl_mean": result["kl"]["mean"], "kl_p99": result["kl"]["p99"], "same_top1": result["top1_agreement"],
            "ppl_ratio": result["ppl_ratio"], "flip_rate": flips.get("rate")}


def task_measures(evaluation_result: dict | None, *, missing: str) -> dict:
    """The task gates' measures from an evaluation with a reference: {measure: {value, stderr, metric} or {value:
    None, note}}. accuracy_drop is reference minus candidate accuracy in points (what was lost); f1_relative is
    candidate F1 / reference F1. `missing` is the note when there is no evaluation to read."""
    if evaluation_result is None:
        return {measure: {"value": None, "note": missing} for measure in ("accuracy_drop", "f1_relative")}
    task_type = evaluation_result["task_type"]
    deltas = evaluation_result.get("deltas") or {}
    measures = {}
    accuracy_metric = ACCURACY_METRIC[task_type]
    accuracy = deltas.get(accuracy_metric)
    if accuracy is None:
        measures["accuracy_drop"] = {"value": None, "note": "not measured: the evaluation compared no reference"}
    else:
        measures["accuracy_drop"] = {"value": -accuracy["delta"] + 0.0, "stderr": accuracy["stderr"],
                                     "metric": accuracy_metric,
                                     "note": f"{accuracy_metric}: reference minus candidate, in points"}
    f1_metric = F1_METRIC.get(task_type)
    f1 = deltas.get(f1_metric) if f1_metric else None
    if f1_metric is None:
        measures["f1_relative"] = {"value": None, "note": "not measured: a multiple-choice set has no F1; use a "
                                   "classification ({text, label}) or generation ({prompt, answer}) set"}
    elif f1 is None or f1.get("f1_relative") is None:
        measures["f1_relative"] = {"value": None, "note": "not measured: the reference's F1 is 0 or unknown"}
    else:
        measures["f1_relative"] = {"value": f1["f1_relative"], "stderr": f1.get("f1_relative_stderr"),
                                   "metric": f1_metric, "note": f"candidate {f1_metric} / reference {f1_metric}"}
    return measures


def compute_gates(result: dict, policy: dict, *, evaluation_result: dict | None = None,
                  evaluation_missing: str = "not measured: no evaluation dataset was named (eval_dataset of the "
                                            "change request or of the policy)") -> list[dict]:
    """Gate rows {name, threshold, value, passed[, stderr, metric, note]} for every threshold the policy sets.
    A gate that could not be measured fails (closed), with the reason in its note."""
    measured = measured_values(result)
    tasks = task_measures(evaluation_result, missing=evaluation_missing)
    gates = []
    for gate in GATES:
        threshold = policy.get(gate.threshold_field)
        if threshold is None:
            continue
        task = tasks.get(gate.measure)
        value = task["value"] if task else measured[gate.measure]
        if value is None:
            note = task["note"] if task else ("not measured: use a multiple-choice evaluation dataset"
                                              if gate.measure == "flip_rate" else "not measured")
            gates.append({"name": gate.measure, "threshold": threshold, "value": None, "passed": False, "note": note})
            continue
        passed = value <= threshold if gate.bound == "max" else value >= threshold
        row = {"name": gate.measure, "threshold": threshold, "value": value, "passed": bool(passed)}
        if task:
            row.update(stderr=task["stderr"], metric=task["metric"], note=task["note"])
        gates.append(row)
    return gates


def sweep_policy(model: RegisteredModel, alias: str) -> dict:
    """The thresholds a quantization sweep gates its rows with: the alias's policy (the default gates without an
    alias), less the task gates, which need a labelled evaluation that a sweep does not run; those are listed as
    deferred (the change request for the recommended version measures them)."""
    policy = effective_policy(model, alias) if alias else default_policy("")
    task_fields = {gate.threshold_field for gate in GATES if gate.measure in TASK_GATE_MEASURES}
    return {"alias": alias or None, "source": f"policy of {model.name}@{alias}" if alias else "default gates",
            "thresholds": {field: policy[field] for field in GATE_THRESHOLD_FIELDS if field not in task_fields},
            "deferred": sorted(field for field in task_fields if policy[field] is not None)}


def gate_quantization_sweep_row(*, sweep_id: int, index: int) -> None:
    """Gate one measured row of a quantization sweep with compute_gates (as change requests are gated), inside the
    transaction that recorded it."""
    sweep = QuantizationSweep.objects.select_related("source__model").get(pk=sweep_id)
    row = next(row for row in sweep.rows if row["index"] == index)
    if row.get("error") or row.get("analysis") is None:
        return
    policy = sweep.policy or sweep_policy(sweep.source.model, sweep.alias)
    result = Analysis.objects.get(pk=row["analysis"]).result
    record_sweep_gates(sweep_id=sweep.pk, index=index, policy=policy,
                       gates=compute_gates(result, policy["thresholds"]))


def _gating_policy(request: ChangeRequest) -> dict:
    """The alias's policy, with the default accuracy gate when the request is evaluated and the policy has none."""
    policy = effective_policy(request.model, request.alias)
    if request.eval_dataset_id and policy["accuracy_drop_max"] is None:
        policy["accuracy_drop_max"] = DEFAULT_ACCURACY_DROP_MAX
    return policy


def _snapshot(request: ChangeRequest) -> dict:
    return {"status": request.status, "from_version": request.from_version.number if request.from_version else None,
            "to_version": request.to_version.number, "required_approvals": request.required_approvals,
            "override": request.override, "round": request.round, "gates": request.gates}


def _apply_gates(request: ChangeRequest, analysis: Analysis | None, evaluation: Evaluation | None = None) -> None:
    """Set status, gates and quorum from the analysis and the evaluation (or none, for a first deployment)."""
    policy = _gating_policy(request)
    request.policy_snapshot = policy
    request.required_approvals = policy["required_approvals"]
    request.override = False
    request.analysis = analysis
    request.evaluation = evaluation
    request.gates = (compute_gates(analysis.result, policy,
                                   evaluation_result=evaluation.result if evaluation else None)
                     if analysis else [])
    if all(gate["passed"] for gate in request.gates):
        request.status, request.status_reason = ChangeRequest.Status.PENDING, ""
    elif policy["allow_override"]:
        # A failed gate may be overridden only with one more approval than usual and a written justification.
        request.status, request.override = ChangeRequest.Status.PENDING, True
        request.required_approvals += 1
        request.status_reason = "A gate failed; the policy allows an override with one extra approval."
    else:
        failed = ", ".join(g["name"] for g in request.gates if not g["passed"])
        request.status, request.status_reason = ChangeRequest.Status.BLOCKED, f"Gates failed: {failed}."


def _find_analysis(reference: ModelVersion, candidate: ModelVersion) -> Analysis | None:
    return (Analysis.objects.filter(reference=reference, candidate=candidate, result__isnull=False)
            .order_by("-created_at").first())


def _pending_analysis(reference: ModelVersion, candidate: ModelVersion) -> Analysis | None:
    return (Analysis.objects.filter(reference=reference, candidate=candidate, result__isnull=True,
                                    job__status__in=["queued", "running"]).order_by("-created_at").first())


def _find_evaluation(reference: ModelVersion, candidate: ModelVersion, dataset: Dataset) -> Evaluation | None:
    """A finished evaluation of candidate against reference on the whole labelled set (limited runs never gate)."""
    return (Evaluation.objects.filter(reference=reference, candidate=candidate, dataset=dataset, limit__isnull=True,
                                      result__isnull=False).order_by("-created_at").first())


def _pending_evaluation(reference: ModelVersion, candidate: ModelVersion, dataset: Dataset) -> Evaluation | None:
    return (Evaluation.objects.filter(reference=reference, candidate=candidate, dataset=dataset, limit__isnull=True,
                                      result__isnull=True, job__status__in=["queued", "running"])
            .order_by("-created_at").first())


def _evaluation_dataset(dataset_id) -> Dataset:
    if dataset_id is not None:
        dataset = Dataset.objects.filter(pk=dataset_id).first()
        if dataset is None:
            raise NotFound(f"No dataset with id {dataset_id}.")
        return dataset
    dataset = newest_evaluation_dataset()
    if dataset is None:
        raise Unprocessable("Gates need an analysis, and no evaluation dataset is registered; register one "
                            "(POST /api/v1/datasets/ with purpose=evaluation) or name one in `dataset`.")
    return dataset


def _gate_or_queue(request: ChangeRequest, actor) -> None:
    """Compute gates now if the analysis (and the evaluation, when the request has a labelled set) exist; otherwise
    queue what is missing and wait in `analysing` (or `stale`)."""
    if request.from_version is None:
        _apply_gates(request, None)
        return
    reference, candidate = request.from_version, request.to_version
    analysis = (_find_analysis(reference, candidate) or _pending_analysis(reference, candidate)
                or start_analysis(candidate=candidate, reference=reference, dataset=request.dataset, actor=actor))
    evaluation = None
    if request.eval_dataset_id:
        dataset = request.eval_dataset
        evaluation = (_find_evaluation(reference, candidate, dataset) or _pending_evaluation(reference, candidate,
                                                                                             dataset)
                      or start_evaluation(candidate=candidate, reference=reference, dataset=dataset, actor=actor))
    if _measured(analysis, evaluation):
        _apply_gates(request, analysis, evaluation)
        return
    request.analysis, request.evaluation = analysis, evaluation
    request.gates = []
    if request.status != ChangeRequest.Status.STALE:
        request.status = ChangeRequest.Status.ANALYSING


def _measured(analysis: Analysis, evaluation: Evaluation | None) -> bool:
    return analysis.result is not None and (evaluation is None or evaluation.result is not None)


def open_change_request(*, model: RegisteredModel, alias: str, version_number: int, justification: str,
                        dataset_id=None, eval_dataset_id=None, actor) -> ChangeRequest:
    """Ask to point `alias` at a sealed version; gates come from an analysis against the alias's current version
    and, with a labelled set (`eval_dataset_id` or the policy's), from a task evaluation against it."""
    if not has_role(actor, ML_ENGINEER):
        raise PermissionDenied("Opening a change request needs the ml_engineer role.")
    require_team_member(actor=actor, model=model)
    if not (justification or "").strip():
        raise InvalidInput("Give a justification for the change.", field="justification")
    with transaction.atomic():
        to_version = ModelVersion.objects.filter(model=model, number=version_number).first()
        if to_version is None:
            raise NotFound(f"Model {model.name!r} has no version {version_number}.")
        if not to_version.is_sealed:
            raise Conflict(f"{to_version} is a draft; only sealed versions can be deployed.")
        alias_row, _ = Alias.objects.get_or_create(model=model, name=alias)
        if alias_row.version_id == to_version.pk:
            raise Conflict(f"{model.name}@{alias} already points at v{to_version.number}.")
        policy = effective_policy(model, alias)
        request = ChangeRequest(
            model=model, alias=alias, from_version=alias_row.version, to_version=to_version,
            justification=justification.strip(), requested_by=actor, status=ChangeRequest.Status.ANALYSING,
            required_approvals=policy["required_approvals"],
            expires_at=timezone.now() + timedelta(days=policy["expiry_days"]),
        )
        if request.from_version is not None:
            request.dataset = _evaluation_dataset(dataset_id)
            request.eval_dataset = _check_eval_dataset(eval_dataset_id if eval_dataset_id is not None
                                                       else policy["eval_dataset"])
        _gate_or_queue(request, actor)
        request.save(force_insert=True)
        append_event(actor=actor, action="change_request.opened", object_type="change_request",
                     object_id=request.pk, model_name=model.name,
                     after=_snapshot(request) | {"alias": alias, "justification": request.justification})
        if request.status == ChangeRequest.Status.PENDING:
            _announce_gated(request)
    return request


@transaction.atomic
def analysis_completed(*, analysis_id: int) -> None:
    """Requests waiting for this analysis get their gates (once their evaluation, if any, is done too)."""
    _gate_waiting(analysis_id=analysis_id)


@transaction.atomic
def evaluation_completed(*, evaluation_id: int) -> None:
    """Requests waiting for this evaluation get their gates (once their analysis is done too)."""
    _gate_waiting(evaluation_id=evaluation_id)


def _gate_waiting(**waits_on) -> None:
    for request in (ChangeRequest.objects.select_for_update(of=("self",), no_key=True)
                    .select_related("model", "from_version", "to_version")
                    .filter(**waits_on, status__in=[ChangeRequest.Status.ANALYSING, ChangeRequest.Status.STALE])):
        analysis = Analysis.objects.get(pk=request.analysis_id)
        evaluation = Evaluation.objects.get(pk=request.evaluation_id) if request.evaluation_id else None
        if not _measured(analysis, evaluation):
            continue  # the other half is still running; its announcement gates the request
        before = _snapshot(request)
        _apply_gates(request, analysis, evaluation)
        request.save(update_fields=_GATED_FIELDS)
        append_event(actor=None, action="change_request.gated", object_type="change_request", object_id=request.pk,
                     model_name=request.model.name, before=before, after=_snapshot(request))
        if request.status == ChangeRequest.Status.PENDING:
            _announce_gated(request)


@transaction.atomic
def analysis_failed(*, analysis_id: int, error: str) -> None:
    _block_waiting(f"The analysis failed: {error}", analysis_id=analysis_id)


@transaction.atomic
def evaluation_failed(*, evaluation_id: int, error: str) -> None:
    """Task gates that cannot be measured fail closed: requests waiting for this evaluation are blocked."""
    _block_waiting(f"The task evaluation failed, so the accuracy and F1 gates cannot be measured: {error}",
                   evaluation_id=evaluation_id)


def _block_waiting(reason: str, **waits_on) -> None:
    for request in ChangeRequest.objects.select_for_update(of=("self",), no_key=True).select_related(
            "model").filter(**waits_on, status__in=[ChangeRequest.Status.ANALYSING, ChangeRequest.Status.STALE]):
        before = _snapshot(request)
        request.status = ChangeRequest.Status.BLOCKED
        request.status_reason = reason
        request.save(update_fields=["status", "status_reason"])
        append_event(actor=None, action="change_request.blocked", object_type="change_request",
                     object_id=request.pk, model_name=request.model.name, before=before, after=_snapshot(request))


@transaction.atomic
def withdraw_change_request(*, change_request: ChangeRequest, reason: str, actor) -> ChangeRequest:
    """The requester takes back a change request that is still open; it takes no more decisions."""
    request = (ChangeRequest.objects.select_for_update(of=("self",), no_key=True).select_related("model")
               .get(pk=change_request.pk))
    if actor.pk != request.requested_by_id:
        raise PermissionDenied("Only the engineer who opened a change request may withdraw it.")
    if request.status not in ChangeRequest.OPEN:
        raise Conflict(f"Change request {request.pk} is {request.status}; only open requests can be withdrawn.")
    before = _snapshot(request)
    request.status = ChangeRequest.Status.WITHDRAWN
    request.status_reason = (reason or "").strip() or "Withdrawn by the requester."
    request.save(update_fields=["status", "status_reason"])
    append_event(actor=actor, action="change_request.withdrawn", object_type="change_request", object_id=request.pk,
                 model_name=request.model.name, before=before, after=_snapshot(request) | {"reason": reason or ""})
    return request


def _expire_if_due(request_id: int) -> None:
    with transaction.atomic():
        request = (ChangeRequest.objects.select_for_update(of=("self",), no_key=True).select_related("model")
                   .get(pk=request_id))
        if request.status in ChangeRequest.OPEN and request.expires_at <= timezone.now():
            before = _snapshot(request)
            request.status = ChangeRequest.Status.EXPIRED
            request.save(update_fields=["status"])
            append_event(actor=None, action="change_request.expired", object_type="change_request",
                         object_id=request.pk, model_name=request.model.name, before=before,
                         after=_snapshot(request))


def decide(*, change_request: ChangeRequest, actor, decision: str, comment: str) -> ChangeRequest:
    """Record an approval or rejection; at quorum the alias moves in this same transaction."""
    if decision not in Decision.Verdict.values:
        raise InvalidInput("decision must be 'approve' or 'reject'.", field="decision")
    if not has_role(actor, APPROVER):
        raise PermissionDenied("Deciding a change request needs the approver role.")
    _expire_if_due(change_request.pk)
    with transaction.atomic():
        request = (ChangeRequest.objects.select_for_update(of=("self",), no_key=True)
                   .select_related("model", "to_version", "from_version").get(pk=change_request.pk))
        if actor.pk == request.requested_by_id:
            raise PermissionDenied("You opened this change request; someone else must decide it (four eyes).")
        if actor.pk == request.to_version.created_by_id:
            raise PermissionDenied("You created the candidate version; someone else must decide it (four eyes).")
        if request.status != ChangeRequest.Status.PENDING:
            raise Conflict(f"Change request {request.pk} is {request.status}; only pending requests take decisions.")
        if request.decisions.filter(decided_by=actor, round=request.round).exists():
            raise Conflict("You have already decided this change request.")
        before = _snapshot(request)
        try:
            with transaction.atomic():
                Decision.objects.create(change_request=request, decided_by=actor, decision=decision,
                                        comment=comment or "", round=request.round)
        except IntegrityError:
            raise Conflict("You have already decided this change request.") from None
        verdict = "approved" if decision == Decision.Verdict.APPROVE else "rejected"
        append_event(actor=actor, action=f"change_request.{verdict}", object_type="change_request",
                     object_id=request.pk, model_name=request.model.name, after={"comment": comment or "",
                                                                               "round": request.round})
        if decision == Decision.Verdict.REJECT:
            request.status = ChangeRequest.Status.REJECTED
            request.save(update_fields=["status"])
        elif request.decisions.filter(round=request.round, decision="approve").count() >= request.required_approvals:
            _deploy(request, actor)
        else:
            _announce_approval(request, actor)
        append_event(actor=actor, action="change_request.updated", object_type="change_request",
                     object_id=request.pk, model_name=request.model.name, before=before, after=_snapshot(request))
    return request


def _deploy(request: ChangeRequest, actor) -> None:
    alias = Alias.objects.select_for_update(no_key=True).get(model=request.model, name=request.alias)
    if alias.version_id != (request.from_version.pk if request.from_version else None):
        # The alias moved since the gates were computed (should have been marked stale): never deploy blind.
        raise Conflict("The alias moved since this request was gated; it is being re-analysed.")
    _move_alias(alias, to_version=request.to_version, kind=AliasChange.Kind.DEPLOY, actor=actor,
                reason=request.justification, change_request=request,
                deploy_stack=[*alias.deploy_stack, request.to_version.number])
    request.status = ChangeRequest.Status.DEPLOYED
    request.deployed_at = timezone.now()
    request.save(update_fields=["status", "deployed_at"])
    _mark_others_stale(alias, exclude=request.pk, actor=actor)
    _announce_deployment(request, actor)


def _move_alias(alias: Alias, *, to_version: ModelVersion, kind: str, actor, reason: str,
                change_request: ChangeRequest | None, deploy_stack: list[int]) -> AliasChange:
    """Point the alias at `to_version`, remembering `deploy_stack` (the deployed versions a rollback returns
    through); the audit event comes last, so the chain's lock is held only until the commit."""
    from_version = alias.version
    alias.version = to_version
    alias.since = timezone.now()
    alias.deploy_stack = deploy_stack
    alias.save(update_fields=["version", "since", "deploy_stack"])
    change = AliasChange.objects.create(alias=alias, kind=kind, from_version=from_version, to_version=to_version,
                                        change_request=change_request, actor=actor, reason=reason)
    # Production moved: anchor the audit chain's new head in object-locked storage (asynchronously).
    transaction.on_commit(_anchor_audit_head_later)
    append_event(actor=actor, action=f"alias.{kind}", object_type="alias", object_id=alias.pk,
                 model_name=alias.model.name,
                 before={"alias": alias.name, "version": from_version.number if from_version else None},
                 after={"alias": alias.name, "version": to_version.number, "reason": reason,
                        "change_request": change_request.pk if change_request else None})
    return change


def _open_requests_for_update(alias: Alias, *, exclude: int | None) -> list[ChangeRequest]:
    """The alias's other open change requests, locked: they are re-gated once the alias has moved."""
    return list(ChangeRequest.objects.select_for_update(of=("self",), no_key=True)
                .select_related("model", "to_version")
                .filter(model=alias.model, alias=alias.name, status__in=ChangeRequest.OPEN).exclude(pk=exclude))


def _mark_others_stale(alias: Alias, *, exclude: int | None, actor, others: list[ChangeRequest] | None = None) -> None:
    """Pending requests for an alias that just moved were gated against the old version: re-gate them.
    `others`: those requests, read (and locked) by the caller before it took the audit chain's lock."""
    if others is None:
        others = _open_requests_for_update(alias, exclude=exclude)
    for request in others:
        before = _snapshot(request)
        request.status = ChangeRequest.Status.STALE
        request.status_reason = f"The alias moved to v{alias.version.number}; gates are being recomputed."
        request.from_version = alias.version
        request.round += 1
        if request.to_version_id == alias.version_id:
            request.status_reason = "The alias already points at this version."
            request.save(update_fields=_REGATED_FIELDS)
            continue
        if request.dataset is None:
            request.dataset = newest_evaluation_dataset()
        if request.dataset is not None:
            _gate_or_queue(request, actor)
        request.save(update_fields=_REGATED_FIELDS)
        append_event(actor=actor, action="change_request.stale", object_type="change_request",
                     object_id=request.pk, model_name=request.model.name, before=before, after=_snapshot(request))
        if request.status == ChangeRequest.Status.PENDING:
            _announce_gated(request)


_ROLLBACK_TARGET = (
    f"SELECT v.*, EXISTS(SELECT 1 FROM {ChangeRequest._meta.db_table} c WHERE c.model_id = %s AND c.alias = %s "
    "AND c.to_version_id = v.id AND c.status = %s) AS was_deployed, "
    f"EXISTS(SELECT 1 FROM {ChangeRequest._meta.db_table} o WHERE o.model_id = %s AND o.alias = %s "
    "AND o.status = ANY(%s)) AS has_open_requests "
    f"FROM {ModelVersion._meta.db_table} v WHERE v.model_id = %s AND v.number = %s")


def roll_back(*, model: RegisteredModel, alias: str, reason: str, to_version_number: int | None, actor) -> AliasChange:
    """Point the alias back at the previously deployed version, or at a named one deployed there before."""
    if not has_role(actor, OPS):
        raise PermissionDenied("Rolling back needs the ops role.")
    if not (reason or "").strip():
        raise InvalidInput("Give a reason for the rollback.", field="reason")
    with transaction.atomic():
        alias_row = Alias.objects.select_for_update(of=("self",), no_key=True).select_related(
            "model", "version").filter(
            model=model, name=alias).first()
        if alias_row is None or alias_row.version is None:
            raise Conflict(f"{model.name}@{alias} has never been deployed; there is nothing to roll back.")
        stack = list(alias_row.deploy_stack)
        if to_version_number is None:
            if len(stack) < 2:
                raise Conflict(f"{model.name}@{alias} has no earlier deployed version to return to.")
            stack.pop()
            target_number = stack[-1]
        else:
            target_number = to_version_number
            if target_number == alias_row.version.number:
                raise Conflict(f"{model.name}@{alias} already points at v{target_number}.")
        # The target, whether an approved change request ever deployed it here, and whether the alias has open
        # requests to re-gate: one plain statement (compiling it through the ORM cost more than running it).
        target = next(iter(ModelVersion.objects.raw(_ROLLBACK_TARGET, [
            model.pk, alias, ChangeRequest.Status.DEPLOYED, model.pk, alias, list(ChangeRequest.OPEN), model.pk,
            target_number])), None)
        if to_version_number is not None:
            if target is None or not target.was_deployed:
                raise Unprocessable(f"v{target_number} was never deployed to {model.name}@{alias} through an "
                                    "approved change request; a rollback can only return to such a version.",
                                    field="to_version")
            while stack and stack[-1] != target_number:
                stack.pop()
            if not stack:
                stack = [target_number]
        # Read before the move: the move's audit event takes the chain's lock, held until the commit. The alias's
        # row lock, taken above, keeps new requests for it from opening meanwhile.
        others = _open_requests_for_update(alias_row, exclude=None) if target and target.has_open_requests else []
        change = _move_alias(alias_row, to_version=target, kind=AliasChange.Kind.ROLLBACK, actor=actor,
                             reason=reason.strip(), change_request=None, deploy_stack=stack)
        _mark_others_stale(alias_row, exclude=None, actor=actor, others=others)
        _announce_rollback(change, actor)
    return change


def compare_adapter_with_production(*, version: ModelVersion) -> Analysis | None:
    """A new LoRA adapter on a model in production is analysed against production straight away, so a change
    request for it finds its gates ready (the newest evaluation dataset is used), and evaluated on the production
    policy's labelled set when it names one."""
    if version.kind != ModelVersion.Kind.LORA:
        return None
    production = Alias.objects.filter(model=version.model, name="production", version__isnull=False).first()
    dataset = newest_evaluation_dataset()
    if production is None or dataset is None:
        return None
    eval_dataset_id = effective_policy(version.model, "production")["eval_dataset"]
    if eval_dataset_id and not version.evaluations.filter(reference=production.version, dataset_id=eval_dataset_id,
                                                          limit__isnull=True).exists():
        # The task gates' evaluation too, on the policy's labelled set.
        start_evaluation(candidate=version, reference=production.version,
                         dataset=Dataset.objects.get(pk=eval_dataset_id), actor=version.created_by)
    if version.analyses_as_candidate.filter(reference=production.version).exists():
        return None
    return start_analysis(candidate=version, reference=production.version, dataset=dataset,
                          actor=version.created_by)


def expire_due_change_requests() -> int:
    """Mark every open request past its expiry date as expired; returns how many."""
    due = list(ChangeRequest.objects.filter(status__in=ChangeRequest.OPEN, expires_at__lte=timezone.now())
               .values_list("pk", flat=True))
    for request_id in due:
        _expire_if_due(request_id)
    return len(due)


def _anchor_audit_head_later() -> None:
    anchor_audit_head.apply_async(queue="cpu")


# Reports (signed PDFs) are made by whoever listens to these announcements (the reports app), after the
# transaction commits, so governance never waits for rendering and knows nothing of reports.
def _announce_gated(request: ChangeRequest) -> None:
    announce_on_commit(signals.change_request_gated, change_request_id=request.pk)


def _announce_approval(request: ChangeRequest, actor) -> None:
    announce_on_commit(signals.approval_recorded, change_request_id=request.pk, approver_id=actor.pk)


def _announce_deployment(request: ChangeRequest, actor) -> None:
    announce_on_commit(signals.change_request_deployed, change_request_id=request.pk, approver_id=actor.pk)


def _announce_rollback(change: AliasChange, actor) -> None:
    announce_on_commit(signals.alias_rolled_back, alias_change_id=change.pk, actor_id=actor.pk)
