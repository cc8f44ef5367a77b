"""The Prometheus exposition at /metrics: who may scrape it, and what it says.

Two sources, so the numbers are right however many gunicorn and Celery processes run:
- request latency is measured in each web process (integrations.request_metrics); with PROMETHEUS_MULTIPROC_DIR
  the processes' files are added up here;
- everything about jobs, queues, change requests, gates, deployments, rollbacks, reports, webhooks, alarms and
  the audit chain is read from the database (and the broker) at scrape time, so it is the same whichever
  process answers and survives restarts.
"""
import ipaddress
import logging
import os
from datetime import timedelta
from functools import lru_cache

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import connection
from django.db.models import Count, DurationField, ExpressionWrapper, F, Q, Sum
from django.utils import timezone
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from governance.models import AliasChange, ChangeRequest
from reports.models import Report
from workers.models import Job

logger = logging.getLogger(__name__)

JOB_DURATION_BUCKETS = (1, 5, 15, 60, 300, 900, 3600, 4 * 3600, 12 * 3600, 24 * 3600)
REPORT_SECONDS_BUCKETS = (0.5, 1, 2, 5, 10, 30, 60, 300)


# --- access ------------------------------------------------------------------------------------------------------

@lru_cache(maxsize=8)
def _networks(configured: tuple[str, ...]):
    try:
        return tuple(ipaddress.ip_network(network, strict=False) for network in configured)
    except ValueError as error:
        raise ImproperlyConfigured(f"METRICS_ALLOWED_NETWORKS: {error}") from None


def may_scrape(request) -> bool:
    """A bearer token equal to METRICS_TOKEN, or a peer address inside METRICS_ALLOWED_NETWORKS."""
    import hmac

    token = settings.METRICS_TOKEN
    header = request.META.get("HTTP_AUTHORIZATION", "")
    scheme, _, presented = header.partition(" ")
    if token and scheme.lower() == "bearer" and hmac.compare_digest(presented.strip().encode(), token.encode()):
        return True
    try:
        peer = ipaddress.ip_address(request.META.get("REMOTE_ADDR", ""))
    except ValueError:
        return False
    return any(peer in network for network in _networks(tuple(settings.METRICS_ALLOWED_NETWORKS)))


# --- exposition --------------------------------------------------------------------------------------------------

def exposition() -> bytes:
    """The whole text exposition: this deployment's process metrics, then the database's."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        processes = CollectorRegistry()
        multiprocess.MultiProcessCollector(processes)
    else:
        processes = REGISTRY
    facts = CollectorRegistry(auto_describe=False)
    facts.register(RegistryCollector())
    return generate_latest(processes) + generate_latest(facts)


class RegistryCollector:
    """Reads the registry's state at scrape time. A part that fails (the broker is down) is left out and counted
    in registry_metrics_part_up, so the rest of the scrape still answers."""

    def collect(self):
        part_up = GaugeMetricFamily("registry_metrics_part_up", "1 when this part of the metrics could be read.",
                                    labels=["part"])
        for name, part in (("jobs", _jobs), ("queues", _queues), ("governance", _governance),
                           ("reports", _reports), ("webhooks", _webhooks), ("alarms", _alarms), ("audit", _audit)):
            try:
                families = list(part())
            except Exception:  # noqa: BLE001 - one unreadable part must not empty the whole scrape
                logger.exception("metrics part %s could not be read", name)
                part_up.add_metric([name], 0)
                continue
            part_up.add_metric([name], 1)
            yield from families
        yield part_up


def _jobs():

    jobs = GaugeMetricFamily("registry_jobs", "Jobs by kind and status.", labels=["kind", "status"])
    for row in Job.objects.values("kind", "status").annotate(n=Count("id")).order_by():
        jobs.add_metric([row["kind"], row["status"]], row["n"])
    yield jobs
    finished = (Job.objects.filter(status__in=[Job.Status.SUCCEEDED, Job.Status.FAILED], started_at__isnull=False,
                                   finished_at__isnull=False)
                .annotate(duration=ExpressionWrapper(F("finished_at") - F("started_at"), output_field=DurationField())))
    duration = HistogramMetricFamily("registry_job_duration_seconds",
                                     "Run time of finished jobs (started to finished), by kind and status.",
                                     labels=["kind", "status"])
    aggregates = {f"le_{i}": Count("id", filter=Q(duration__lte=timedelta(seconds=bound)))
                  for i, bound in enumerate(JOB_DURATION_BUCKETS)}
    rows = finished.values("kind", "status").annotate(n=Count("id"), total=Sum("duration"), **aggregates).order_by()
    for row in rows:
        buckets = [(str(float(bound)), row[f"le_{i}"]) for i, bound in enumerate(JOB_DURATION_BUCKETS)]
        buckets.append(("+Inf", row["n"]))
        duration.add_metric([row["kind"], row["status"]], buckets,
                            (row["total"] or timedelta()).total_seconds())
    yield duration


def _queues():
    from integrations.broker import queue_depths

    depth = GaugeMetricFamily("registry_queue_depth", "Messages waiting in each Celery queue.", labels=["queue"])
    for queue, waiting in queue_depths().items():
        depth.add_metric([queue], waiting)
    yield depth


def _governance():

    requests = GaugeMetricFamily("registry_change_requests", "Change requests by status.", labels=["status"])
    counts = dict(ChangeRequest.objects.values_list("status").annotate(n=Count("id")).order_by())
    for status in ChangeRequest.Status.values:
        requests.add_metric([status], counts.get(status, 0))
    yield requests
    gates = GaugeMetricFamily("registry_gate_verdicts", "Gate results on change requests, by gate and verdict.",
                              labels=["gate", "verdict"])
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT gate->>'name', COALESCE((gate->>'passed')::boolean, false), count(*) "
            f"FROM {ChangeRequest._meta.db_table}, jsonb_array_elements(gates) AS gate "
            "WHERE jsonb_typeof(gates) = 'array' GROUP BY 1, 2")
        for name, passed, n in cursor.fetchall():
            gates.add_metric([name or "", "passed" if passed else "failed"], n)
    yield gates
    for kind, name, text in ((AliasChange.Kind.DEPLOY, "registry_deployments", "Alias deployments"),
                             (AliasChange.Kind.ROLLBACK, "registry_rollbacks", "Alias rollbacks")):
        family = CounterMetricFamily(name, f"{text}, by model and alias.", labels=["model", "alias"])
        for row in (AliasChange.objects.filter(kind=kind).values("alias__model__name", "alias__name")
                    .annotate(n=Count("id")).order_by()):
            family.add_metric([row["alias__model__name"], row["alias__name"]], row["n"])
        yield family


def _reports():

    reports = GaugeMetricFamily("registry_reports", "Reports by kind and status.", labels=["kind", "status"])
    for row in Report.objects.values("kind", "status").annotate(n=Count("id")).order_by():
        reports.add_metric([row["kind"], row["status"]], row["n"])
    yield reports
    # A rollback report is created, rendered, signed and stored in one transaction: created -> finalised is the
    # time rendering and signing took.
    produced = (Report.objects.filter(kind=Report.Kind.ROLLBACK, status=Report.Status.FINAL,
                                      finalised_at__isnull=False)
                .annotate(duration=ExpressionWrapper(F("finalised_at") - F("created_at"),
                                                     output_field=DurationField())))
    aggregates = {f"le_{i}": Count("id", filter=Q(duration__lte=timedelta(seconds=bound)))
                  for i, bound in enumerate(REPORT_SECONDS_BUCKETS)}
    row = produced.aggregate(n=Count("id"), total=Sum("duration"), **aggregates)
    signing = HistogramMetricFamily("registry_report_signing_seconds",
                                    "Time to render, sign and store a rollback report.")
    buckets = [(str(float(bound)), row[f"le_{i}"]) for i, bound in enumerate(REPORT_SECONDS_BUCKETS)]
    signing.add_metric([], [*buckets, ("+Inf", row["n"])], (row["total"] or timedelta()).total_seconds())
    yield signing


def _webhooks():
    from integrations.models import WebhookDelivery

    deliveries = GaugeMetricFamily("registry_webhook_deliveries", "Webhook deliveries by status.",
                                   labels=["status"])
    counts = dict(WebhookDelivery.objects.values_list("status").annotate(n=Count("id")).order_by())
    for status in WebhookDelivery.Status.values:
        deliveries.add_metric([status], counts.get(status, 0))
    yield deliveries


def _alarms():
    from integrations.models import Alarm

    alarms = CounterMetricFamily("registry_alarms", "Alarms received, by source and what was done.",
                                 labels=["source", "action"])
    for row in Alarm.objects.values("source", "action").annotate(n=Count("id")).order_by():
        alarms.add_metric([row["source"], row["action"]], row["n"])
    yield alarms


def _audit():
    from integrations.audit_checks import recent_audit_check

    check = recent_audit_check(max_age_seconds=settings.METRICS_AUDIT_VERIFY_SECONDS)
    yield GaugeMetricFamily("registry_audit_chain_ok", "1 when the audit chain verified against its newest anchor.",
                            value=1 if check.ok else 0)
    yield GaugeMetricFamily("registry_audit_chain_events", "Events in the audit chain at the last verification.",
                            value=check.events)
    yield GaugeMetricFamily("registry_audit_last_verification_timestamp_seconds",
                            "When the audit chain was last verified (Unix time).", value=check.checked_at.timestamp())
    if check.anchor_at is not None:
        yield GaugeMetricFamily("registry_audit_last_anchor_age_seconds",
                                "Age of the newest audit anchor (the anchored head event's time).",
                                value=(timezone.now() - check.anchor_at).total_seconds())
