"""End to end: webhooks delivered by a real Celery worker to a receiver the test starts (signed, retried after a
503, a dead receiver failing on the worker and never in the request), an Alertmanager alert posted to gunicorn
rolling an alias back once with its signed rollback report, and /metrics scraped from gunicorn."""
import base64
import hashlib
import hmac
import json
import socket
import time

import pytest
import requests
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families
from rest_framework.authtoken.models import Token

from governance import services as governance_services
from integrations import webhooks
from registry import services as registry_services
from registry.models import ModelVersion
from tests.conftest import client_for, make_user
from tests.e2e.conftest import ConfiguredWebServer, ConfiguredWorker, _purge_test_queue
from tests.integrations.conftest import WebhookReceiver
from tests.reports import factories

SECRET = "whsec-e2e-" + "q" * 30
METRICS_TOKEN = "metrics-e2e-" + "m" * 30
# Receivers in these tests listen on 127.0.0.1, which deliveries refuse unless this is on.
OVERRIDES = {"WEBHOOK_ALLOW_PRIVATE_NETWORKS": True, "WEBHOOK_RETRY_BACKOFF_SECONDS": 1, "WEBHOOK_MAX_ATTEMPTS": 3,
             "METRICS_TOKEN": METRICS_TOKEN}


@pytest.fixture
def integration_worker(committed_db, tmp_path, unique):
    _purge_test_queue()
    worker = ConfiguredWorker(tmp_path / "worker.log", application_name=f"integrations-worker-{unique}",
                              settings_overrides=OVERRIDES)
    yield worker
    worker.stop()


@pytest.fixture
def integration_web(committed_db, tmp_path, unique, monkeypatch):
    """gunicorn with the integrations' settings, keeping its metrics in a multiprocess directory."""
    metrics_dir = tmp_path / "prometheus"
    metrics_dir.mkdir()
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(metrics_dir))
    server = ConfiguredWebServer(tmp_path / "web.log", application_name=f"integrations-web-{unique}",
                                 settings_overrides=OVERRIDES)
    server.start()
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR")
    yield server
    server.stop()


def http(base_url: str, user):
    session = requests.Session()
    session.headers["Authorization"] = f"Token {Token.objects.get_or_create(user=user)[0].key}"
    session.base = base_url
    return session


def verify(secret: str, request: dict) -> dict:
    headers = request["headers"]
    signed = f"{headers['X-Registry-Delivery']}.{headers['X-Registry-Timestamp']}.".encode() + request["body"]
    expected = "v1," + base64.b64encode(hmac.new(secret.encode(), signed, hashlib.sha256).digest()).decode()
    assert hmac.compare_digest(expected, headers["X-Registry-Signature"]), headers
    assert abs(time.time() - int(headers["X-Registry-Timestamp"])) < 600
    return json.loads(request["body"])


def seal_through_http(session, model: str) -> dict:
    if session.get(f"{session.base}/api/v1/models/{model}/").status_code == 404:
        assert session.post(f"{session.base}/api/v1/models/", json={"name": model, "description": "e2e"}).ok
    number = session.post(f"{session.base}/api/v1/models/{model}/versions/", json={"description": ""}).json()["number"]
    for path, data in (("config.json", json.dumps({"model_type": "llama"}).encode()),
                       ("model.safetensors", factories.weights_bytes(3))):
        uploaded = session.put(f"{session.base}/api/v1/models/{model}/versions/{number}/files/{path}", data=data,
                               headers={"Content-Type": "application/octet-stream"})
        assert uploaded.status_code == 201, uploaded.text
    sealed = session.post(f"{session.base}/api/v1/models/{model}/versions/{number}/seal")
    assert sealed.status_code == 200, sealed.text
    return sealed.json()


def wait_until(condition, *, timeout: float = 90, what: str = "the condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError(f"{what} did not happen within {timeout} s")


def test_a_sealed_version_is_delivered_signed_and_retried_after_a_503(integration_worker, integration_web,
                                                                     e2e_users, unique):
    integration_worker.start()
    superuser = make_user(f"sam-{unique}", superuser=True)
    admin, engineer = http(integration_web.base_url, superuser), http(integration_web.base_url, e2e_users["engineer"])
    with WebhookReceiver(answers=[503, 200]) as receiver:
        created = admin.post(f"{admin.base}/api/v1/webhooks/",
                             json={"url": receiver.url, "events": ["version.sealed"], "secret": SECRET})
        assert created.status_code == 201, created.text
        sealed = seal_through_http(engineer, f"hooked-{unique}")
        wait_until(lambda: len(receiver.requests) >= 2, what="two delivery attempts")
    first, second = receiver.requests[:2]
    payload = verify(SECRET, second)
    assert verify(SECRET, first) == payload
    assert payload["type"] == "version.sealed" and second["headers"]["X-Registry-Event"] == "version.sealed"
    assert payload["object"]["model"] == f"hooked-{unique}" and payload["object"]["number"] == sealed["number"]
    assert payload["object"]["manifest_sha256"] == sealed["manifest_sha256"]
    assert first["headers"]["X-Registry-Delivery"] == second["headers"]["X-Registry-Delivery"]
    log = wait_until(lambda: [d for d in admin.get(f"{admin.base}/api/v1/webhooks/{created.json()['id']}/deliveries")
                              .json() if d["status"] == "succeeded"], what="the delivery log saying succeeded")
    assert (log[0]["attempts"], log[0]["response_code"], log[0]["event"]) == (2, 200, payload["id"])
    print("\nreceived delivery:", json.dumps({"headers": {k: v for k, v in second["headers"].items()
                                                          if k.startswith("X-Registry") or k == "Content-Type"},
                                              "body": json.loads(second["body"])}, indent=2))


def test_a_dead_receiver_fails_on_the_worker_not_in_the_request(integration_worker, integration_web, e2e_users,
                                                              unique):
    superuser = make_user(f"sam-{unique}", superuser=True)
    admin, engineer = http(integration_web.base_url, superuser), http(integration_web.base_url, e2e_users["engineer"])
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        dead_url = f"http://127.0.0.1:{probe.getsockname()[1]}/hooks"
    created = admin.post(f"{admin.base}/api/v1/webhooks/", json={"url": dead_url, "events": ["version.sealed"],
                                                                  "secret": SECRET}).json()
    deliveries = f"{admin.base}/api/v1/webhooks/{created['id']}/deliveries"
    # No worker runs yet: the seal answers while the receiver is unreachable, and nothing was attempted in it.
    seal_through_http(engineer, f"dead-hook-{unique}")
    [pending] = admin.get(deliveries).json()
    assert (pending["status"], pending["attempts"]) == ("pending", 0)
    integration_worker.start()
    [failed] = wait_until(lambda: [d for d in admin.get(deliveries).json() if d["status"] == "failed"],
                          what="the worker giving the delivery up")
    assert failed["attempts"] == 3 and failed["response_code"] is None
    assert "connection failed" in failed["error"]


def test_an_alertmanager_alert_rolls_back_once_with_a_signed_report_and_webhooks(integration_worker, integration_web,
                                                                                 e2e_users, unique, settings):
    settings.WEBHOOK_ALLOW_PRIVATE_NETWORKS = True  # this process subscribes the receiver through the service
    integration_worker.start()
    engineer, ops, regulator = e2e_users["engineer"], e2e_users["ops"], e2e_users["regulator"]
    superuser = make_user(f"sam-{unique}", superuser=True)
    name = f"alarmed-{unique}"
    model = registry_services.create_model(name=name, description="Credit memos.", actor=engineer)
    v1 = factories.sealed_upload(model, engineer, seed=1)
    approvers = [e2e_users["approver"], e2e_users["approver2"]]

    def deploy(number: int) -> None:
        request_id = client_for(engineer).post("/api/v1/change-requests/", {
            "model": name, "alias": "production", "version": number, "justification": f"v{number}"},
            format="json").json()["id"]
        for approver in approvers:
            assert client_for(approver).post(f"/api/v1/change-requests/{request_id}/decisions",
                                             {"decision": "approve"}, format="json").status_code == 200

    deploy(v1.number)
    v2 = factories.derived_version(v1, engineer, kind=ModelVersion.Kind.QUANTIZED,
                                   metadata=factories.QUANTIZATION_METADATA)
    evaluation = factories.dataset(engineer, name=f"eval-{unique}", purpose="evaluation",
                                   records=[{"text": "The borrower is current on all payments."}] * 3)
    factories.analysis(reference=v1, candidate=v2, dataset=evaluation, actor=engineer,
                       result=factories.synthetic_analysis_result(blocks=4))
    deploy(v2.number)
    governance_services.set_policy(model=model, alias="production", actor=superuser, values={"auto_rollback": True})

    started = timezone.now().strftime("%Y-%m-%dT%H:%M:%S.%f") + "123Z"  # after the deployments, as Alertmanager
    alert = {"version": "4", "status": "firing", "receiver": "llm-registry",
             "alerts": [{"status": "firing", "fingerprint": f"fp{unique}", "startsAt": started,
                         "labels": {"alertname": "TopKShiftHigh", "model": name, "alias": "production"},
                         "annotations": {"summary": "top-k overlap fell to 0.71"}}]}
    bearer = {"Authorization": f"Bearer {Token.objects.get_or_create(user=ops)[0].key}"}
    with WebhookReceiver() as receiver:
        webhooks.create_subscription(url=receiver.url, events=["alias.rolled_back", "report.final"], secret=SECRET,
                                     actor=superuser)
        answered = requests.post(f"{integration_web.base_url}/api/v1/alerts/alertmanager", json=alert, headers=bearer)
        assert answered.status_code == 200, answered.text
        assert answered.json()["action"] == "rolled_back" and answered.json()["change"]["version"] == v1.number
        again = requests.post(f"{integration_web.base_url}/api/v1/alerts/alertmanager", json=alert, headers=bearer)
        assert again.json()["action"] == "ignored" and "already handled" in again.json()["reason"]

        regulator_api = client_for(regulator)
        [rollback] = wait_until(lambda: [r for r in regulator_api.get("/api/v1/reports/",
                                                                      {"model": name, "kind": "rollback"}).json()
                                         if r["status"] == "final"], timeout=180, what="the rollback report")
        verification = regulator_api.get(f"/api/v1/reports/{rollback['id']}/verification").json()
        assert verification["verified"] is True and ops.username in json.dumps(verification)

        def received(kind):
            return [verify(SECRET, r) for r in receiver.requests if r["headers"]["X-Registry-Event"] == kind]

        [rolled_back] = wait_until(lambda: received("alias.rolled_back"), what="the alias.rolled_back webhook")
        final = wait_until(lambda: [p for p in received("report.final") if p["object"]["id"] == rollback["id"]],
                           what="the report.final webhook of the rollback report")
    assert rolled_back["object"]["change"]["actor"] == ops.username
    assert "TopKShiftHigh" in rolled_back["object"]["change"]["reason"]
    assert final[0]["object"]["kind"] == "rollback" and final[0]["object"]["sha256"] == rollback["sha256"]
    history = client_for(ops).get(f"/api/v1/models/{name}/aliases/production/history").json()
    assert [change["kind"] for change in history].count("rollback") == 1

    refused = requests.get(f"{integration_web.base_url}/metrics")
    assert refused.status_code == 403 and refused.json()["error"] == "forbidden"
    scraped = requests.get(f"{integration_web.base_url}/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
    assert scraped.status_code == 200
    samples = {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
               for family in text_string_to_metric_families(scraped.text) for sample in family.samples}
    assert samples[("registry_http_request_duration_seconds_count",
                    (("method", "POST"), ("status", "200"), ("view", "alerts-alertmanager")))] == 2
    assert samples[("registry_rollbacks_total", (("alias", "production"), ("model", name)))] == 1
    assert samples[("registry_alarms_total", (("action", "rolled_back"), ("source", "alertmanager")))] >= 1
    assert samples[("registry_report_signing_seconds_count", ())] >= 1
    assert ("registry_audit_chain_ok", ()) in samples
