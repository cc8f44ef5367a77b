"""Quantization sweeps: several quantizations of one version, each analysed against it on one evaluation dataset,
gated by an alias's policy, with the smallest passing candidate recommended.

Every candidate is checked at request time by the checks the quantize endpoint runs (services.check_quantization,
services.check_calibrated_quantization), so a refused sweep leaves nothing behind. The sweep's job then runs each
candidate as a quantize job and an analysis job of their own (never queued: the sweep's worker runs them), so each
quantized version has its lineage and each analysis its page, like those started one by one.

Gates are governance's: each recorded row is announced (signals.quantization_sweep_row_recorded) and governance
computes its gates with the function that gates change requests, writing them back through record_sweep_gates.
Workers never import governance (the layers run foundation <- registry <- workers <- governance).
"""
import re
import socket

from django.db import transaction
from django.utils import timezone

from foundation.audit import append_event
from foundation.errors import DomainError, InvalidInput
from registry.selectors import get_dataset
from registry.teams import require_team_member
from workers import services, signals
from workers.models import Analysis, Job, QuantizationSweep
from workers.pipelines.calibrated.spec import CALIBRATED_METHODS

MAX_CANDIDATES = 8
ALIAS_PATTERN = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")


def describe(settings: dict) -> str:
    """A candidate's settings in a few words, for progress messages and the admin table."""
    method = settings["method"]
    if "bits" in settings:
        return f"{method} {settings['bits']}-bit g{settings['group_size']}"
    return f"{method} {settings.get('compute_dtype', '')}".strip()


def _checked_candidate(*, source, settings: dict, actor) -> dict:
    """One candidate's quantize job params, checked exactly as POST .../quantize checks them."""
    settings = dict(settings)
    if settings.get("method") in CALIBRATED_METHODS:
        calibration_dataset = get_dataset(settings.pop("calibration_dataset", None))
        return services.check_calibrated_quantization(version=source, calibration_dataset=calibration_dataset,
                                                      settings=settings, actor=actor)
    return services.check_quantization(version=source, actor=actor, **settings)


def request_quantization_sweep(*, source, candidates: list[dict], dataset, alias: str = "",
                               max_tokens: int = 4096, top_k: int = 5, actor) -> QuantizationSweep:
    """Check every candidate, the dataset and the alias, then queue one job that runs the whole sweep."""
    require_team_member(actor=actor, model=source.model)
    services.require_quantizable(version=source, actor=actor)
    if not 1 <= len(candidates) <= MAX_CANDIDATES:
        raise InvalidInput(f"Name 1 to {MAX_CANDIDATES} candidates; got {len(candidates)}.", field="candidates")
    if alias and not ALIAS_PATTERN.match(alias):
        raise InvalidInput(f"alias {alias!r} is no alias name: lowercase letters, digits, '.', '_' or '-'.",
                           field="alias")
    checked = []
    for index, settings in enumerate(candidates):
        try:
            params = _checked_candidate(source=source, settings=settings, actor=actor)
        except DomainError as error:
            field = f"candidates[{index}]" + (f".{error.field}" if error.field else "")
            raise type(error)(f"Candidate {index}: {error.message}", field=field) from None
        if params in checked:
            raise InvalidInput(f"Candidate {index} repeats candidate {checked.index(params)}; list each settings "
                               "once.", field=f"candidates[{index}]")
        checked.append(params)
    analysis = services.check_analysis_inputs(dataset=dataset, max_tokens=max_tokens, top_k=top_k)
    params = {"candidates": checked, "dataset": dataset.pk, "alias": alias, "analysis": analysis}
    with transaction.atomic():
        job = services.create_job(kind=Job.Kind.QUANTIZATION_SWEEP, params=params, source_version=source,
                                  actor=actor)
        sweep = QuantizationSweep.objects.create(source=source, dataset=dataset, alias=alias,
                                                 params={"candidates": checked, "analysis": analysis}, job=job,
                                                 created_by=actor)
        append_event(actor=actor, action="quantization_sweep.requested", object_type="quantization_sweep",
                     object_id=sweep.pk, model_name=source.model.name,
                     after={"source": source.number, "dataset": dataset.pk, "alias": alias, "params": sweep.params})
        return sweep


def _inline_job(*, sweep: QuantizationSweep, kind: str, params: dict, source_version, message: str) -> Job:
    """A job row the sweep's worker runs itself (never queued); it holds the job's lock while it runs it, so the
    reconciler does not send it to another worker."""
    job = Job.objects.create(kind=kind, status=Job.Status.RUNNING, params=params, source_version=source_version,
                             created_by=sweep.created_by, message=message, started_at=timezone.now(),
                             worker=socket.gethostname()[:200], attempts=1)
    append_event(actor=sweep.created_by, action="job.created", object_type="job", object_id=job.pk,
                 model_name=sweep.source.model.name,
                 after={"kind": kind, "params": params, "source_version": source_version.number,
                        "quantization_sweep": sweep.pk})
    return job


@transaction.atomic
def sweep_quantize_job(*, sweep_id: int, index: int) -> Job:
    """The quantize job of candidate `index` (created once; a retried sweep finds it)."""
    sweep = QuantizationSweep.objects.select_for_update(no_key=True).select_related("source__model").get(pk=sweep_id)
    cell = sweep.cells.get(str(index), {})
    if "quantize_job" in cell:
        return Job.objects.select_related("source_version__model", "created_by").get(pk=cell["quantize_job"])
    job = _inline_job(sweep=sweep, kind=Job.Kind.QUANTIZE, params=sweep.params["candidates"][index],
                      source_version=sweep.source, message=f"Run by quantization sweep {sweep.pk}")
    sweep.cells = {**sweep.cells, str(index): {"quantize_job": job.pk}}
    sweep.save(update_fields=["cells"])
    return job


@transaction.atomic
def sweep_analysis(*, sweep_id: int, index: int, candidate) -> Analysis:
    """The analysis of candidate `index`'s version against the source (created once; a retried sweep finds it)."""
    sweep = QuantizationSweep.objects.select_for_update(no_key=True).select_related("source__model").get(pk=sweep_id)
    cell = sweep.cells.get(str(index), {})
    if "analysis" in cell:
        return Analysis.objects.select_related("job").get(pk=cell["analysis"])
    params = sweep.params["analysis"]
    job = _inline_job(sweep=sweep, kind=Job.Kind.ANALYSIS, params=params, source_version=candidate,
                      message=f"Run by quantization sweep {sweep.pk}")
    analysis = Analysis.objects.create(reference=sweep.source, candidate=candidate, dataset=sweep.dataset,
                                       params=params, job=job, created_by=sweep.created_by)
    append_event(actor=sweep.created_by, action="analysis.requested", object_type="analysis", object_id=analysis.pk,
                 model_name=candidate.model.name,
                 after={"reference": sweep.source.number, "candidate": candidate.number, "dataset": sweep.dataset_id,
                        "params": params, "quantization_sweep": sweep.pk})
    sweep.cells = {**sweep.cells, str(index): {**cell, "analysis": analysis.pk}}
    sweep.save(update_fields=["cells"])
    return analysis


@transaction.atomic
def record_sweep_row(*, sweep_id: int, row: dict) -> None:
    """One candidate done (measured, or failed with its error): its row of the table, announced so governance
    gates it in this transaction."""
    sweep = QuantizationSweep.objects.select_for_update(no_key=True).get(pk=sweep_id)
    if any(existing["index"] == row["index"] for existing in sweep.rows):
        return
    sweep.rows = sorted([*sweep.rows, row], key=lambda existing: existing["index"])
    sweep.save(update_fields=["rows"])
    signals.quantization_sweep_row_recorded.send(sender=QuantizationSweep, sweep_id=sweep.pk, index=row["index"])


@transaction.atomic
def record_sweep_gates(*, sweep_id: int, index: int, policy: dict, gates: list[dict]) -> None:
    """Governance's verdicts on one row, and the policy they were computed with (kept from the first row on, so
    every row of a sweep is judged by the same thresholds)."""
    sweep = QuantizationSweep.objects.select_for_update(no_key=True).get(pk=sweep_id)
    sweep.policy = sweep.policy or policy
    sweep.rows = [{**row, "gates": gates} if row["index"] == index else row for row in sweep.rows]
    sweep.save(update_fields=["policy", "rows"])


def passes_every_gate(row: dict) -> bool:
    """A measured row whose gates were computed and all passed (a row governance never gated does not pass)."""
    return not row.get("error") and row.get("gates") is not None and all(gate["passed"] for gate in row["gates"])


def recommended_row(rows: list[dict]) -> dict | None:
    """The smallest candidate (size ratio, then mean KL) that passes every gate, or None."""
    passing = [row for row in rows if passes_every_gate(row) and row.get("size_ratio") is not None]
    return min(passing, key=lambda row: (row["size_ratio"], row["kl_mean"]), default=None)


@transaction.atomic
def finish_quantization_sweep(*, sweep_id: int) -> int | None:
    """Record the recommended candidate's version number (None when no candidate passes every gate)."""
    sweep = QuantizationSweep.objects.select_for_update(no_key=True).select_related("source__model").get(pk=sweep_id)
    best = recommended_row(sweep.rows)
    sweep.recommended = best["version"] if best else None
    sweep.save(update_fields=["recommended"])
    append_event(actor=None, action="quantization_sweep.completed", object_type="quantization_sweep",
                 object_id=sweep.pk, model_name=sweep.source.model.name,
                 after={"rows": len(sweep.rows), "failed": sum(1 for row in sweep.rows if row.get("error")),
                        "recommended": sweep.recommended})
    return sweep.recommended
