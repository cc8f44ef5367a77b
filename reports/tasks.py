"""Celery tasks: thin. They take ids and call the plain functions in reports.services, which are idempotent."""
import smtplib

from celery import shared_task

from foundation.errors import StorageUnavailable
from reports import services

# Rendering and signing are deterministic: only an unreachable object store is worth trying again.
_RETRY = {"autoretry_for": (StorageUnavailable,), "retry_backoff": 5, "retry_backoff_max": 120, "max_retries": 6}


@shared_task(acks_late=True, reject_on_worker_lost=True, ignore_result=True, **_RETRY)
def update_change_impact_report(change_request_id: int) -> None:
    report = services.update_change_impact_report(change_request_id=change_request_id)
    if report is not None and report.is_final:
        deliver_report.apply_async(args=[report.pk], queue="cpu")


@shared_task(acks_late=True, reject_on_worker_lost=True, ignore_result=True, **_RETRY)
def produce_rollback_report(alias_change_id: int) -> None:
    report = services.produce_rollback_report(alias_change_id=alias_change_id)
    if report is not None:
        deliver_report.apply_async(args=[report.pk], queue="cpu")


@shared_task(acks_late=True, reject_on_worker_lost=True, ignore_result=True, autoretry_for=(
    StorageUnavailable, smtplib.SMTPException, ConnectionError), retry_backoff=30, retry_backoff_max=600,
    max_retries=8)
def deliver_report(report_id: int) -> None:
    services.deliver_report(report_id=report_id)
