"""Alarm-driven rollback: an Alertmanager alert or a health report about an alias rolls it back, through the same
governed rollback ops would do (governance.services.roll_back: audit events, the signed rollback report), when
the alias's policy says `auto_rollback`. Every alarm is recorded with what was done about it and why; the same
firing alert (fingerprint and start time) delivered again is recognised and rolls back nothing more."""
import hashlib
import json
import math
import re
from dataclasses import dataclass
from datetime import datetime

from django.db import IntegrityError, transaction

from foundation.audit import append_event
from foundation.errors import DomainError, PermissionDenied
from foundation.roles import OPS, has_role
from governance.models import Alias, AliasChange
from governance.services import effective_policy, roll_back
from integrations.models import Alarm
from registry.models import RegisteredModel


@dataclass(frozen=True)
class Outcome:
    action: str  # rolled_back | ignored
    reason: str
    change: AliasChange | None = None
    alarm: Alarm | None = None


def _require_ops(actor) -> None:
    if not has_role(actor, OPS):
        raise PermissionDenied("Alarms are accepted from an ops account only (its API token).")


def alert_fingerprint(alert: dict) -> str:
    """Alertmanager's fingerprint, or (older senders) a digest of the sorted labels."""
    if alert.get("fingerprint"):
        return str(alert["fingerprint"])
    labels = json.dumps(alert.get("labels") or {}, sort_keys=True)
    return hashlib.sha256(labels.encode()).hexdigest()[:16]


def _alert_reason(alert: dict) -> str:
    labels, annotations = alert.get("labels") or {}, alert.get("annotations") or {}
    notes = "; ".join(f"{key}: {value}" for key, value in sorted(annotations.items()))
    reason = f"Alertmanager alert {labels.get('alertname', '(unnamed)')} firing since {alert.get('startsAt', '?')}"
    return f"{reason}. {notes}" if notes else f"{reason}."


def receive_alertmanager(*, payload: dict, actor) -> list[Outcome]:
    """Act on each alert of one Alertmanager webhook notification; one outcome per alert, in order."""
    _require_ops(actor)
    return [_receive_alert(alert, actor) for alert in payload["alerts"]]


def _receive_alert(alert: dict, actor) -> Outcome:
    labels = alert.get("labels") or {}
    model_name, alias = labels.get("model", ""), labels.get("alias", "")
    if len(model_name) > 100 or len(alias) > 64:  # longer than any model or alias name: it names none
        model_name = alias = ""
    status = alert.get("status", "firing")
    record = {"source": Alarm.Source.ALERTMANAGER, "fingerprint": alert_fingerprint(alert),
              "starts_at": str(alert.get("startsAt", "")), "status": status,
              "name": labels.get("alertname", "")[:200],
              "model_name": model_name, "alias": alias,
              "details": {"labels": labels, "annotations": alert.get("annotations") or {},
                          "endsAt": alert.get("endsAt"), "generatorURL": alert.get("generatorURL")}}
    if status != "firing":
        return _record(record, actor, ignored=f"The alert is {status}; only firing alerts roll back.")
    try:
        with transaction.atomic():
            # The alarm row is unique per (fingerprint, startsAt) of a firing alert: a repeated delivery, even a
            # concurrent one, fails here and rolls nothing back.
            if not model_name or not alias:
                return _record(record, actor, ignored="The alert has no `model` and `alias` labels; it names no "
                                                      "alias.")
            return _decide(record, actor, reason=_alert_reason(alert), started=_parse_time(record["starts_at"]))
    except IntegrityError:
        first = (Alarm.objects.filter(source=Alarm.Source.ALERTMANAGER, status="firing",
                                      fingerprint=record["fingerprint"], starts_at=record["starts_at"]).first())
        return Outcome("ignored", f"This alert (fingerprint {record['fingerprint']}, started {record['starts_at']}) "
                                  f"was already handled as alarm {first.pk if first else '?'}: "
                                  f"{first.action if first else 'recorded'}.", alarm=first)


def report_health(*, model: RegisteredModel, alias: str, error_rate: float, baseline_error_rate: float | None,
                  window: str, actor) -> Outcome:
    """A team's health report: roll back when the error rate rose over its baseline by more than the policy's
    max_error_increase (relative: 0.05 means 5 % above the baseline) and the policy allows auto-rollback."""
    _require_ops(actor)
    policy = effective_policy(model, alias)
    limit = policy["max_error_increase"]
    record = {"source": Alarm.Source.HEALTH, "status": "firing", "name": f"health report over {window}",
              "model_name": model.name, "alias": alias,
              "details": {"error_rate": error_rate, "baseline_error_rate": baseline_error_rate, "window": window,
                          "max_error_increase": limit}}
    if baseline_error_rate is None:
        baseline_error_rate = _last_healthy_rate(model.name, alias)
        record["details"]["baseline_error_rate"] = baseline_error_rate
        record["details"]["baseline_from"] = "the last report within the limit"
    if baseline_error_rate is None:
        record["status"] = "unknown"
        return _record(record, actor, ignored="No baseline: send baseline_error_rate (no earlier report for this "
                                              "alias stayed within the limit).")
    if baseline_error_rate > 0:
        increase = (error_rate - baseline_error_rate) / baseline_error_rate
    else:
        increase = math.inf if error_rate > 0 else 0.0
    record["details"]["increase"] = None if math.isinf(increase) else increase
    shown = "from zero" if math.isinf(increase) else f"{increase:+.1%}"
    summary = (f"Error rate {error_rate:.4g} over {window} against a baseline of {baseline_error_rate:.4g} "
               f"({shown}; the policy allows {limit:+.1%})")
    if increase <= limit:
        record["status"] = "ok"
        return _record(record, actor, ignored=f"{summary}: within the limit.")
    with transaction.atomic():
        return _decide(record, actor, reason=f"Health report: {summary}.")


def _last_healthy_rate(model_name: str, alias: str) -> float | None:
    last = (Alarm.objects.filter(source=Alarm.Source.HEALTH, model_name=model_name, alias=alias, status="ok")
            .order_by("-id").first())
    return last.details.get("error_rate") if last else None


def _parse_time(value: str) -> datetime | None:
    """An RFC 3339 time as Alertmanager writes it (nanoseconds allowed); None when it is not one."""
    match = re.fullmatch(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?(Z|[+-]\d\d:\d\d)", value or "")
    if not match:
        return None
    whole, fraction, zone = match.groups()
    try:
        return datetime.fromisoformat(f"{whole}{(fraction or '')[:7]}{'+00:00' if zone == 'Z' else zone}")
    except ValueError:
        return None


def _decide(record: dict, actor, *, reason: str, started: datetime | None = None) -> Outcome:
    """Roll the alias back when its policy allows it; record the alarm either way (inside the caller's atomic)."""
    model = RegisteredModel.objects.filter(name=record["model_name"]).first()
    if model is None:
        return _record(record, actor, ignored=f"No model named {record['model_name']!r}.")
    if not effective_policy(model, record["alias"])["auto_rollback"]:
        return _record(record, actor, ignored=f"The policy of {model.name}@{record['alias']} does not allow "
                                              "automatic rollback (auto_rollback is off); a person must decide.")
    alias = Alias.objects.filter(model=model, name=record["alias"]).select_related("version").first()
    if started and alias and alias.since and alias.since > started:
        # The alert began before the alias last moved: it is evidence against the version that was live then,
        # not the current one (e.g. a second alert about the version an earlier alarm already rolled back).
        return _record(record, actor, ignored=f"{model.name}@{alias.name} moved to v{alias.version.number} at "
                                              f"{alias.since.isoformat()}, after this alert started; the alert "
                                              "concerns the version before it, so nothing was rolled back.")
    alarm = _record(record, actor, ignored="rolling back").alarm
    try:
        with transaction.atomic():
            change = roll_back(model=model, alias=record["alias"], reason=reason, to_version_number=None, actor=actor)
    except DomainError as refusal:
        alarm.action, alarm.reason = Alarm.Action.IGNORED, f"Rollback refused: {refusal.message}"
        alarm.save(update_fields=["action", "reason"])
        return Outcome("ignored", alarm.reason, alarm=alarm)
    alarm.action, alarm.alias_change = Alarm.Action.ROLLED_BACK, change
    alarm.reason = f"{reason} Rolled back from v{change.from_version.number} to v{change.to_version.number}."
    alarm.save(update_fields=["action", "alias_change", "reason"])
    append_event(actor=actor, action="alarm.acted", object_type="alarm", object_id=alarm.pk,
                 model_name=model.name, after={"action": alarm.action, "alias_change": change.pk})
    return Outcome("rolled_back", alarm.reason, change=change, alarm=alarm)


@transaction.atomic
def _record(record: dict, actor, *, ignored: str) -> Outcome:
    alarm = Alarm.objects.create(**record, action=Alarm.Action.IGNORED, reason=ignored, received_by=actor)
    append_event(actor=actor, action="alarm.received", object_type="alarm", object_id=alarm.pk,
                 model_name=record["model_name"],
                 after={"source": alarm.source, "status": alarm.status, "name": alarm.name, "alias": alarm.alias,
                        "fingerprint": alarm.fingerprint, "starts_at": alarm.starts_at, "action": alarm.action,
                        "reason": ignored})
    return Outcome("ignored", ignored, alarm=alarm)
