"""Faults survived, with real processes: a worker SIGKILLed mid-analysis and mid-report, the database connection
of the web process and of a worker terminated mid-transaction, Redis restarted with jobs queued, the S3 server
restarted mid-download.

"Mid-transaction" is made deterministic, not lucky: the test holds a lock the process under test needs next (the
audit trail's append lock, which every service takes last, after its changes; or the job's row), sees that
process's session wait for it in pg_stat_activity, and only then injects the fault.
"""
import concurrent.futures
import contextlib
import io
import os
import random
import re
import shutil
import signal
import time

import psycopg
import pytest
import requests
from django.db import connection
from pypdf import PdfReader
from rest_framework.authtoken.models import Token

from foundation import audit, storage
from foundation.models import AuditEvent
from governance import services as governance
from governance.models import Alias, AliasChange, ChangeRequest, Decision
from registry import services as registry_services
from registry.models import ModelVersion
from reports import pki, signing
from reports.models import Report
from scripts.s3server import server_status, start_server, stop_server
from tests.conftest import client_for, register_sealed_version, upload_directory
from tests.e2e.conftest import (ConfiguredWebServer, ConfiguredWorker, _purge_test_queue,
                                database_sessions, terminate_database_sessions, wait_for_job)
from tests.e2e.test_reports import report_pki  # noqa: F401  (fixture: a PKI for this process and the worker)
from tests.reports import factories
from workers import services as workers_services
from workers.models import Analysis, Job
from workers.pipelines.tiny_model import SAMPLE_TEXTS
from workers.queues import RUN_JOB_TASK

pytestmark = pytest.mark.e2e

# A killed worker's message comes back after the visibility timeout, found by kombu's sweep of unacknowledged
# messages, which runs every unacked_restore_interval x unacked_restore_throttle seconds (10 x 10 by default):
# a short timeout and a sweep every second, so that a redelivery takes seconds, not minutes.
QUICK_REDELIVERY = {"CELERY_BROKER_TRANSPORT_OPTIONS": {
    "visibility_timeout": 8, "unacked_restore_interval": 1, "unacked_restore_throttle": 1}}


def wait_until(condition, *, timeout: float, what: str, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"{what}: not within {timeout} s")


class HeldLock:
    """A transaction of the test's own, on its own connection, that takes a lock and holds it until released."""

    def __init__(self):
        settings_dict = connection.settings_dict
        self._connection = psycopg.connect(
            host=settings_dict["HOST"] or "127.0.0.1", port=settings_dict["PORT"] or 5432,
            user=settings_dict["USER"] or "postgres", password=settings_dict["PASSWORD"] or None,
            dbname=settings_dict["NAME"], application_name="fault-test-lock-holder")

    def take(self, sql: str, params: list) -> "HeldLock":
        self._connection.execute(sql, params)  # psycopg opens a transaction: the lock lasts until rollback
        return self

    def release(self) -> None:
        if not self._connection.closed:
            self._connection.rollback()
            self._connection.close()


@contextlib.contextmanager
def held(sql: str, params: list, *, holder: HeldLock | None = None):
    holder = holder or HeldLock()  # a holder connected beforehand takes its lock without connecting first
    try:
        yield holder.take(sql, params)
    finally:
        holder.release()


def audit_appends_held():
    """Every service appends its audit event last, in its own transaction: holding the append lock stops a service
    after its changes are made and before they commit."""
    return held("SELECT pg_advisory_xact_lock(%s)", [audit._APPEND_LOCK_ID])


def session_waiting_for_a_lock(application_name: str) -> int | None:
    waiting = [session["pid"] for session in database_sessions(application_name)
               if session["wait_event_type"] == "Lock"]
    return waiting[0] if waiting else None


def advisory_lock_held(namespace: int, key: int) -> bool:
    with connection.cursor() as cursor:
        cursor.execute("SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted AND "
                       "objsubid = 2 AND classid = %s AND objid = %s)", [namespace, key])
        return cursor.fetchone()[0]


def draft_version(api, model: str, directory) -> None:
    """Model `model` with version 1 uploaded from `directory` and not yet sealed."""
    assert api.post("/api/v1/models/", {"name": model, "description": ""}, format="json").status_code == 201
    assert api.post(f"/api/v1/models/{model}/versions/", {}, format="json").status_code == 201
    upload_directory(api, model, 1, directory)


def token_header(user) -> dict:
    return {"Authorization": f"Token {Token.objects.get_or_create(user=user)[0].key}"}


# --- 1. a worker SIGKILLed mid-analysis -------------------------------------------------------------------------


def test_worker_killed_mid_analysis_records_one_result_after_redelivery(e2e_users, unique, tiny_model_dir, tmp_path):
    engineer = e2e_users["engineer"]
    api = client_for(engineer)
    model = f"kill-analysis-{unique}"
    register_sealed_version(api, model, tiny_model_dir)
    # About 10,000 tokens: seconds of scoring, long enough to be killed in the middle of.
    dataset = factories.dataset(engineer, name=f"eval-{unique}", purpose="evaluation",
                                records=[{"text": text} for text in SAMPLE_TEXTS * 12])
    _purge_test_queue()
    started = api.post(f"/api/v1/models/{model}/versions/1/analyses",
                       {"dataset": dataset.pk, "reference": 1, "max_tokens": 12000}, format="json")
    assert started.status_code == 202, started.content
    job_id, analysis_id = started.json()["job"], started.json()["analysis"]
    worker = ConfiguredWorker(tmp_path / "worker.log", application_name=f"fault-worker-{unique}",
                              settings_overrides=QUICK_REDELIVERY)
    try:
        worker.start()
        wait_until(lambda: Job.objects.filter(pk=job_id, status="running", progress__gte=10).exists(), timeout=90,
                   what="the analysis scoring tokens")
        worker.kill()
        assert Analysis.objects.get(pk=analysis_id).result is None, "the analysis ended before the worker was killed"
        worker.start()  # the unacknowledged message comes back once the visibility timeout has passed
        job = wait_for_job(api, job_id, timeout=120)
    finally:
        worker.stop()
    assert job["status"] == "succeeded", job["error"]
    assert Job.objects.get(pk=job_id).attempts == 2
    analysis = Analysis.objects.get(pk=analysis_id)
    assert Analysis.objects.filter(job_id=job_id).count() == 1 and analysis.result["tokens"] > 5000
    assert AuditEvent.objects.filter(action="analysis.completed", object_id=str(analysis_id)).count() == 1
    assert AuditEvent.objects.filter(action="job.succeeded", object_id=str(job_id)).count() == 1


# --- 2. a worker SIGKILLed mid-report ---------------------------------------------------------------------------


def _deploy(model, version, engineer, approver, alias="staging"):
    request = governance.open_change_request(model=model, alias=alias, version_number=version.number,
                                             justification=f"Deploy v{version.number}.", actor=engineer)
    assert request.status == "pending", request.status
    assert factories.approve(request, approver).status == "deployed"


def _signed_signature_fields(pdf: bytes) -> list[str]:
    fields = PdfReader(io.BytesIO(pdf)).get_fields() or {}
    return sorted(name for name, field in fields.items() if field.get("/FT") == "/Sig" and field.get("/V"))


def test_worker_killed_mid_rollback_report_leaves_one_final_report_after_redelivery(report_pki, e2e_users,  # noqa: F811
                                                                                    unique, tmp_path):
    engineer, approver, ops = e2e_users["engineer"], e2e_users["approver"], e2e_users["ops"]
    model = registry_services.create_model(name=f"kill-report-{unique}", description="Credit memos.", actor=engineer)
    v1 = factories.sealed_upload(model, engineer, seed=1)
    _deploy(model, v1, engineer, approver)
    v2 = factories.derived_version(v1, engineer, kind=ModelVersion.Kind.QUANTIZED,
                                   metadata=factories.QUANTIZATION_METADATA)
    evaluation = factories.dataset(engineer, name=f"eval-{unique}", purpose="evaluation",
                                   records=[{"text": "The borrower is current on all payments."}] * 3)
    factories.analysis(reference=v1, candidate=v2, dataset=evaluation, actor=engineer,
                       result=factories.synthetic_analysis_result(blocks=4))
    _deploy(model, v2, engineer, approver)
    _purge_test_queue()  # the two deployments' own report tasks are not what this test is about
    worker = ConfiguredWorker(tmp_path / "worker.log", application_name=f"fault-worker-{unique}",
                              settings_overrides=QUICK_REDELIVERY)
    try:
        worker.start()
        change = governance.roll_back(model=model, alias="staging", reason="Latency regression on live traffic.",
                                      to_version_number=None, actor=ops)
        # produce_rollback_report renders, certifies, signs and stores inside one transaction holding this lock.
        wait_until(lambda: advisory_lock_held(0x7202, change.pk), timeout=60, what="the rollback report rendering")
        worker.kill()
        assert not Report.objects.filter(alias_change=change).exists()  # its transaction died with the worker

        worker.start()
        report = wait_until(lambda: Report.objects.filter(alias_change=change, status="final").first(),
                            timeout=120, interval=0.3, what="the final rollback report after redelivery")
    finally:
        worker.stop()
    assert Report.objects.filter(kind="rollback", alias_change=change).count() == 1
    assert AuditEvent.objects.filter(action="alias.rollback", model_name=model.name).count() == 1
    pdf = storage.read_bytes(report.object_key, version_id=report.storage_version_id)
    signed = _signed_signature_fields(pdf)
    assert len(signed) == len(set(signed)) == 2, signed  # the organisation's certification and the ops user's
    verdict = signing.verify_pdf(pdf, trusted_root_pem=pki.root_pem())
    assert verdict["intact"] and verdict["valid"] and verdict["trusted"], verdict
    assert [s["field"] for s in verdict["signatures"]].count("ops") == 1
    assert len(verdict["signatures"]) == 2 and verdict["signatures"][0]["certification"]


# --- 3. the database connection lost mid-request and mid-job ----------------------------------------------------


@pytest.fixture
def fault_web(committed_db, tmp_path, unique):
    """gunicorn with one thread (so one database session, reused between requests) and a name to find it by."""
    server = ConfiguredWebServer(tmp_path / "web.log", application_name=f"fault-web-{unique}", threads=1)
    server.start()
    yield server
    server.stop()


def _post_in_background(url: str, *, headers: dict, json: dict | None = None):
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    future = pool.submit(requests.post, url, json=json, headers=headers, timeout=120)
    pool.shutdown(wait=False)
    return future


def _terminate_when_waiting(application_name: str) -> None:
    pid = wait_until(lambda: session_waiting_for_a_lock(application_name), timeout=60,
                     what=f"a session of {application_name} waiting inside its transaction")
    terminate_database_sessions([pid])


def _assert_unavailable(response) -> None:
    assert response.status_code == 503, response.content
    assert response.json()["error"] == "unavailable" and "Retry" in response.json()["detail"]
    assert response.headers["Retry-After"]


def test_connection_lost_mid_decision_is_a_retryable_503_and_the_retry_deploys(fault_web, e2e_users, unique):
    engineer, approver = e2e_users["engineer"], e2e_users["approver"]
    model = registry_services.create_model(name=f"db-decide-{unique}", description="", actor=engineer)
    v1 = factories.sealed_upload(model, engineer, seed=1)
    request = governance.open_change_request(model=model, alias="staging", version_number=v1.number,
                                             justification="First deployment.", actor=engineer)
    url = f"{fault_web.base_url}/api/v1/change-requests/{request.pk}/decisions"
    body = {"decision": "approve", "comment": "gates pass"}
    events_before = AuditEvent.objects.count()

    with audit_appends_held():
        pending = _post_in_background(url, json=body, headers=token_header(approver))
        # decide() has inserted the decision and is about to append its audit event when its session dies.
        _terminate_when_waiting(fault_web.application_name)
    _assert_unavailable(pending.result())
    assert not Decision.objects.filter(change_request=request).exists()
    assert ChangeRequest.objects.get(pk=request.pk).status == "pending"
    assert not AliasChange.objects.filter(alias__model=model).exists()
    assert not Alias.objects.filter(model=model, version__isnull=False).exists()
    assert AuditEvent.objects.count() == events_before and audit.verify_chain().ok

    # Between requests: the web process's idle session is terminated too; the retry's health check (CONN_HEALTH_CHECKS)
    # finds it dead before the request uses it, and the request runs on a fresh connection.
    assert requests.get(f"{fault_web.base_url}/api/v1/change-requests/{request.pk}/",
                        headers=token_header(approver), timeout=30).status_code == 200
    idle = [session["pid"] for session in database_sessions(fault_web.application_name)]
    assert idle
    terminate_database_sessions(idle)
    retried = requests.post(url, json=body, headers=token_header(approver), timeout=60)
    assert retried.status_code == 200, retried.content
    assert retried.json()["status"] == "deployed"
    assert Decision.objects.filter(change_request=request).count() == 1
    assert AliasChange.objects.filter(alias__model=model).count() == 1
    assert audit.verify_chain().ok
    assert not {session["pid"] for session in database_sessions(fault_web.application_name)} & set(idle)


def test_connection_lost_mid_seal_is_a_retryable_503_and_the_retry_seals(fault_web, e2e_users, unique,
                                                                         tiny_model_dir):
    engineer = e2e_users["engineer"]
    api = client_for(engineer)
    model = f"db-seal-{unique}"
    draft_version(api, model, tiny_model_dir)
    url = f"{fault_web.base_url}/api/v1/models/{model}/versions/1/seal"

    with audit_appends_held():
        pending = _post_in_background(url, headers=token_header(engineer))
        # seal_version has read the headers, stored the tensors and set status ready, all uncommitted.
        _terminate_when_waiting(fault_web.application_name)
    _assert_unavailable(pending.result())
    version = ModelVersion.objects.get(model__name=model, number=1)
    assert version.status == "draft" and not version.manifest_sha256
    assert all(not f.tensors for f in version.files.all())
    assert not AuditEvent.objects.filter(action="version.sealed", object_id=str(version.pk)).exists()

    retried = requests.post(url, headers=token_header(engineer), timeout=60)
    assert retried.status_code == 200, retried.content
    version.refresh_from_db()
    assert version.status == "ready" and version.manifest_sha256
    assert AuditEvent.objects.filter(action="version.sealed", object_id=str(version.pk)).count() == 1
    assert audit.verify_chain().ok


def test_worker_connection_lost_mid_job_retries_and_registers_one_version(e2e_users, unique, tiny_model_dir,
                                                                          tmp_path):
    engineer = e2e_users["engineer"]
    api = client_for(engineer)
    model = f"db-job-{unique}"
    register_sealed_version(api, model, tiny_model_dir)
    _purge_test_queue()
    job_id = api.post(f"/api/v1/models/{model}/versions/1/quantize", {"method": "int8"}, format="json").json()["job"]
    worker = ConfiguredWorker(tmp_path / "worker.log", application_name=f"fault-worker-{unique}")
    try:
        # Attempt 1 loses its connection inside a transaction: register_derived_version has uploaded the files and
        # inserted the version, its files and lineage, and waits to append its audit event.
        with audit_appends_held():  # taken before the worker starts, so the job cannot get past it
            worker.start()
            _terminate_when_waiting(worker.application_name)
            assert not ModelVersion.objects.filter(source_job_id=job_id).exists()
        # Attempt 2 loses it outside any transaction: its next progress report waits for the job's row.
        wait_until(lambda: Job.objects.filter(pk=job_id, attempts=2).exists(), timeout=60, what="the retry")
        with held("SELECT 1 FROM workers_job WHERE id = %s FOR UPDATE", [job_id]):
            _terminate_when_waiting(worker.application_name)
        job = wait_for_job(api, job_id, timeout=120)
    finally:
        worker.stop()
    assert job["status"] == "succeeded", job["error"]
    assert Job.objects.get(pk=job_id).attempts == 3
    assert worker.log().count("lost its database connection") == 2
    assert ModelVersion.objects.filter(source_job_id=job_id).count() == 1
    assert ModelVersion.objects.filter(model__name=model).count() == 2
    assert audit.verify_chain().ok


# --- 4. Redis restarted with jobs queued: the reconciler sends them again ----------------------------------------


def _queued_messages(redis_server) -> int:
    from django.conf import settings

    prefix = settings.CELERY_BROKER_TRANSPORT_OPTIONS.get("global_keyprefix", "")
    return redis_server.client().llen(f"{prefix}cpu")


def _send(broker_url: str, task: str, args: list) -> None:
    from celery import current_app

    with current_app.connection_for_write(broker_url) as broker:
        current_app.send_task(task, args=args, queue="cpu", connection=broker)


def test_jobs_whose_messages_redis_lost_are_sent_again_by_the_reconciler_and_run_once(
        private_redis, e2e_users, unique, tiny_model_dir, tmp_path):
    engineer = e2e_users["engineer"]
    model = f"redis-{unique}"
    register_sealed_version(client_for(engineer), model, tiny_model_dir)
    web = ConfiguredWebServer(tmp_path / "web.log", application_name=f"fault-web-{unique}",
                              broker_url=private_redis.url)
    web.start()
    worker = ConfiguredWorker(tmp_path / "worker.log", application_name=f"fault-worker-{unique}",
                              broker_url=private_redis.url, settings_overrides={"JOB_RECONCILE_AFTER_SECONDS": 1})

    def quantize(method: str):
        return requests.post(f"{web.base_url}/api/v1/models/{model}/versions/1/quantize", json={"method": method},
                             headers=token_header(engineer), timeout=120)

    try:
        jobs = []
        for method in ("int8", "nf4"):  # two jobs queued, then lost with Redis's memory
            response = quantize(method)
            assert response.status_code == 202, response.content
            jobs.append(response.json()["job"])
        assert _queued_messages(private_redis) == 2
        private_redis.kill()
        while_down = quantize("int8")  # and one whose message is never sent: the broker is down at commit
        [never_sent] = Job.objects.filter(source_version__model__name=model).exclude(pk__in=jobs).values_list(
            "pk", flat=True)
        jobs.append(never_sent)
        private_redis.start()  # same port, nothing kept: the queue is gone, the rows still say queued
        assert _queued_messages(private_redis) == 0
        # Jobs that earlier tests left queued (their messages went with the queue those tests purged) would be
        # sent too: they are not this test's subject.
        for leftover in Job.objects.filter(status="queued").exclude(pk__in=jobs):
            workers_services.cancel_job(job=leftover, actor=leftover.created_by)

        worker.start()
        time.sleep(2)
        assert set(Job.objects.filter(pk__in=jobs).values_list("status", flat=True)) == {"queued"}
        _send(private_redis.url, "workers.tasks.reconcile_queued_jobs", [])  # what beat sends
        finished = [wait_for_job(client_for(engineer), job_id, timeout=120) for job_id in jobs]
        assert [job["status"] for job in finished] == ["succeeded"] * 3, finished
        # Duplicates are harmless: for jobs already finished, for a job that does not exist here.
        _send(private_redis.url, "workers.tasks.reconcile_queued_jobs", [])
        _send(private_redis.url, RUN_JOB_TASK, [jobs[0]])
        missing = Job.objects.order_by("-pk").values_list("pk", flat=True).first() + 10_000
        _send(private_redis.url, RUN_JOB_TASK, [missing])
        wait_until(lambda: f"job {missing} does not exist" in worker.log(), timeout=30,
                   what="the worker's warning about the unknown job")
    finally:
        worker.stop()
        web.stop()
    log = worker.log()
    assert ("re-enqueued 3 job(s) still queued after 1 s (their message may be lost): "
            f"{', '.join(str(job_id) for job_id in jobs)}") in log
    assert re.search(rf"WARNING/\S+\] job {missing} does not exist in this database", log)
    assert f"job {jobs[0]} is already succeeded" in log
    for job_id in jobs:
        assert Job.objects.get(pk=job_id).attempts == 1  # never claimed twice
        assert ModelVersion.objects.filter(source_job_id=job_id).count() == 1
    if while_down.status_code == 500:
        pytest.xfail("the job created while the broker was down was recorded and ran, but its request answered "
                     "500 'nothing was changed' (so a client would create it again): workers.queues.enqueue_job "
                     "must catch the broker's error, log it and leave the job to the reconciler")
    assert while_down.status_code == 202, while_down.content


# --- 5. the S3 server restarted mid-download --------------------------------------------------------------------


@pytest.fixture
def private_s3(tmp_path, settings):
    """A SeaweedFS of this test's own (the suite's is shared by every test and every run on the machine)."""
    directory = tmp_path / "s3"
    server = start_server(directory)
    settings.S3_ENDPOINT, settings.S3_ACCESS_KEY, settings.S3_SECRET_KEY = (
        server["endpoint"], server["access_key"], server["secret_key"])
    yield server | {"directory": directory}
    _kill_s3(directory)  # whichever process the test left running
    stop_server(directory)  # no longer running: this removes its sockets and pid file
    shutil.rmtree(directory, ignore_errors=True)  # hundreds of MB of volumes


def _kill_s3(directory) -> None:
    """SIGKILL the server's process group, as a crash would."""
    pid = server_status(directory)["pid"]
    if pid:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)


def _download_in_progress(workdir, minimum: int):
    """A file of the source version being written (storage.download_to's `.partial`, hashed as it arrives)."""
    parts = [path for path in workdir.glob("job-*/source/*.partial") if path.stat().st_size >= minimum]
    return bool(parts)


def test_s3_restarted_mid_download_the_job_retries_and_succeeds(private_s3, e2e_users, unique, tiny_model_dir,
                                                                  tmp_path):
    engineer = e2e_users["engineer"]
    api = client_for(engineer)
    model = f"s3-restart-{unique}"
    # The tiny model plus a 128 MiB file: a download that takes long enough (~0.3 s) to be interrupted.
    draft_version(api, model, tiny_model_dir)
    padding = tmp_path / "padding.dat"
    with open(padding, "wb") as handle:
        generator = random.Random(0)
        for _ in range(16):
            handle.write(generator.randbytes(8 * 1024 * 1024))
    with open(padding, "rb") as stream:
        registry_services.upload_version_file(
            version=ModelVersion.objects.get(model__name=model, number=1), path="padding.dat", stream=stream,
            content_length=padding.stat().st_size, expected_sha256=None, actor=engineer)
    padding.unlink()
    assert api.post(f"/api/v1/models/{model}/versions/1/seal").status_code == 200

    _purge_test_queue()
    workdir = tmp_path / "work"
    worker = ConfiguredWorker(tmp_path / "worker.log", application_name=f"fault-worker-{unique}", settings_overrides={
        "S3_ENDPOINT": private_s3["endpoint"], "S3_ACCESS_KEY": private_s3["access_key"],
        "S3_SECRET_KEY": private_s3["secret_key"], "WORK_DIR": str(workdir)})
    try:
        worker.start()
        job_id = api.post(f"/api/v1/models/{model}/versions/1/quantize", {"method": "int8"},
                          format="json").json()["job"]
        holder = HeldLock()
        wait_until(lambda: _download_in_progress(workdir, 1024 * 1024), timeout=60, interval=0.01,
                   what="the download of the source version under way")
        # Hold the job's row (the download does not touch it): the failed attempt records "retrying", and so
        # schedules its retry, only once S3 is back; no retry can be spent while the server is still starting.
        with held("SELECT 1 FROM workers_job WHERE id = %s FOR UPDATE", [job_id], holder=holder):
            _kill_s3(private_s3["directory"])
            wait_until(lambda: session_waiting_for_a_lock(worker.application_name), timeout=60,
                       what="the failed attempt recording its outcome")
            restarted = start_server(private_s3["directory"])
            assert restarted["endpoint"] == private_s3["endpoint"]
        job = wait_for_job(api, job_id, timeout=120)
    finally:
        worker.stop()
    assert job["status"] == "succeeded", job["error"]
    assert Job.objects.get(pk=job_id).attempts == 2
    assert "StorageUnavailable" in worker.log() and "Retry in" in worker.log()
    derived = ModelVersion.objects.get(source_job_id=job_id)
    assert derived.files.filter(path="model.safetensors").exists()
    assert not derived.files.filter(path="padding.dat").exists()
    for version_file in derived.files.all():  # the restarted server holds every byte the row points at
        assert len(storage.read_bytes(version_file.object_key, version_id=version_file.storage_version_id)) \
            == version_file.size

