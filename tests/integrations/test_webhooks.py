"""Webhook subscriptions (superusers), their SSRF guard, encrypted secrets, events derived from what happened, and
one delivery attempt against a real receiver started by the test (signed; retried after a 503; redirects not
followed). The Celery task and the worker are exercised in tests/e2e/test_integrations.py."""
import base64
import hashlib
import hmac
import json

import pytest

from integrations import webhooks
from integrations.encryption import decrypt_secret
from integrations.models import WebhookDelivery, WebhookSubscription
from registry import services as registry_services
from tests.conftest import client_for
from tests.governance.conftest import register_version
from tests.integrations.conftest import WebhookReceiver

pytestmark = pytest.mark.django_db

SECRET = "whsec-test-" + "k" * 24


def verify(secret: str, request: dict) -> dict:
    """What a receiver does: recompute the signature over "<delivery>.<timestamp>.<body>" and compare."""
    headers = request["headers"]
    signed = f"{headers['X-Registry-Delivery']}.{headers['X-Registry-Timestamp']}.".encode() + request["body"]
    expected = "v1," + base64.b64encode(hmac.new(secret.encode(), signed, hashlib.sha256).digest()).decode()
    assert hmac.compare_digest(expected, headers["X-Registry-Signature"])
    return json.loads(request["body"])


@pytest.fixture
def allow_private(settings):
    settings.WEBHOOK_ALLOW_PRIVATE_NETWORKS = True
    settings.WEBHOOK_RETRY_BACKOFF_SECONDS = 1
    return settings


def subscribe(user, url, events=("version.sealed",), **extra):
    return client_for(user).post("/api/v1/webhooks/", {"url": url, "events": list(events), **extra}, format="json")


def test_superuser_subscribes_and_the_secret_is_stored_encrypted(superuser, allow_private):
    response = subscribe(superuser, "http://127.0.0.1:9/hooks", secret=SECRET)
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["events"] == ["version.sealed"] and body["active"] and "secret" not in body
    row = WebhookSubscription.objects.get(pk=body["id"])
    assert SECRET not in row.secret_encrypted and decrypt_secret(row.secret_encrypted) == SECRET
    listed = client_for(superuser).get("/api/v1/webhooks/").json()
    assert [s["id"] for s in listed] == [body["id"]] and "secret" not in listed[0]


def test_a_generated_secret_is_shown_once(superuser, allow_private):
    body = subscribe(superuser, "http://127.0.0.1:9/hooks").json()
    assert len(body["secret"]) >= 32
    assert "secret" not in client_for(superuser).get(f"/api/v1/webhooks/{body['id']}").json()


@pytest.mark.parametrize("url", ["http://127.0.0.1:8000/hooks", "http://localhost/hooks", "http://10.1.2.3/hooks",
                                 "http://192.168.0.10/", "http://169.254.169.254/latest/meta-data/",
                                 "http://[::1]:8080/", "http://100.64.0.1/"])
def test_private_loopback_and_link_local_destinations_are_refused(superuser, url):
    response = subscribe(superuser, url, secret=SECRET)
    assert response.status_code == 400
    assert response.json()["field"] == "url" and "WEBHOOK_ALLOW_PRIVATE_NETWORKS" in response.json()["detail"]
    assert not WebhookSubscription.objects.exists()


def test_bad_subscriptions_are_400s_naming_the_field(superuser, allow_private):
    for payload, field in (({"url": "ftp://example.com/x", "events": ["version.sealed"]}, "url"),
                           ({"url": "http://user:pw@127.0.0.1/x", "events": ["version.sealed"]}, "url"),
                           ({"url": "http://127.0.0.1/x", "events": ["version.deleted"]}, "events"),
                           ({"url": "http://127.0.0.1/x", "events": []}, "events"),
                           ({"url": "http://127.0.0.1/x", "events": ["job.failed"], "secret": "short"}, "secret"),
                           ({"url": "http://does-not-resolve.invalid/x", "events": ["job.failed"]}, "url")):
        response = client_for(superuser).post("/api/v1/webhooks/", payload, format="json")
        assert response.status_code == 400 and response.json()["field"] == field, (payload, response.json())
    assert not WebhookSubscription.objects.exists()


def test_only_superusers_manage_webhooks(engineer, ops_user, anonymous_api, allow_private):
    assert anonymous_api.get("/api/v1/webhooks/").status_code == 401
    for user in (engineer, ops_user):
        assert subscribe(user, "http://127.0.0.1:9/hooks", secret=SECRET).status_code == 403
        assert client_for(user).get("/api/v1/webhooks/").status_code == 403
    assert not WebhookSubscription.objects.exists()


def test_a_sealed_version_becomes_an_event_for_subscribers(superuser, engineer, tiny_model_dir, allow_private,
                                                           django_capture_on_commit_callbacks):
    wanted = subscribe(superuser, "http://127.0.0.1:9/a", events=["version.sealed", "job.failed"],
                       secret=SECRET).json()
    subscribe(superuser, "http://127.0.0.1:9/b", events=["change_request.opened"], secret=SECRET)
    model = registry_services.create_model(name="credit-llm", description="", actor=engineer)
    with django_capture_on_commit_callbacks(execute=True):
        version = register_version(model, tiny_model_dir, engineer)
    delivery = WebhookDelivery.objects.get()
    assert delivery.subscription_id == wanted["id"] and delivery.event_type == "version.sealed"
    payload = json.loads(delivery.body)
    assert payload["type"] == "version.sealed" and payload["id"] == str(delivery.event_id)
    assert payload["object"]["model"] == "credit-llm" and payload["object"]["number"] == version.number
    assert payload["object"]["status"] == "ready" and payload["object"]["manifest_sha256"]
    assert payload["links"]["self"].endswith(f"/api/v1/models/credit-llm/versions/{version.number}/")
    log = client_for(superuser).get(f"/api/v1/webhooks/{wanted['id']}/deliveries").json()
    assert [(d["type"], d["status"], d["attempts"]) for d in log] == [("version.sealed", "pending", 0)]


def _delivery(subscription_id: int) -> WebhookDelivery:
    return WebhookDelivery.objects.create(subscription_id=subscription_id, event_id="6d1f6f2e-0c0b-4b9e-8f5e-5b1a"
                                          "9d7c3e21", event_type="version.sealed",
                                          body=json.dumps({"id": "6d1f6f2e-0c0b-4b9e-8f5e-5b1a9d7c3e21"}))


def test_an_attempt_is_signed_and_a_503_is_tried_again_with_the_same_ids(superuser, allow_private):
    with WebhookReceiver(answers=[503, 200]) as receiver:
        subscription = subscribe(superuser, receiver.url, secret=SECRET).json()
        delivery = _delivery(subscription["id"])
        assert webhooks.attempt_delivery(delivery_id=delivery.pk) == 1  # back-off before the second attempt
        delivery.refresh_from_db()
        assert (delivery.status, delivery.attempts, delivery.response_code) == ("retrying", 1, 503)
        assert webhooks.attempt_delivery(delivery_id=delivery.pk) is None
        assert webhooks.attempt_delivery(delivery_id=delivery.pk) is None  # delivered: a redelivery sends nothing
    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts, delivery.response_code) == ("succeeded", 2, 200)
    assert len(receiver.requests) == 2
    first, second = receiver.requests
    for request in (first, second):
        assert request["path"] == "/hooks/registry"
        assert request["headers"]["X-Registry-Event"] == "version.sealed"
        assert verify(SECRET, request)["id"] == str(delivery.event_id)
    assert first["headers"]["X-Registry-Delivery"] == second["headers"]["X-Registry-Delivery"] == str(
        delivery.delivery_id)


def test_redirects_are_not_followed_and_4xx_is_final(superuser, allow_private):
    with WebhookReceiver(answers=[302]) as receiver:
        delivery = _delivery(subscribe(superuser, receiver.url, secret=SECRET).json()["id"])
        assert webhooks.attempt_delivery(delivery_id=delivery.pk) is None
    delivery.refresh_from_db()
    assert delivery.status == "failed" and "redirects are not followed" in delivery.last_error
    assert len(receiver.requests) == 1


def test_back_off_doubles_up_to_the_cap(settings):
    settings.WEBHOOK_RETRY_BACKOFF_SECONDS, settings.WEBHOOK_RETRY_BACKOFF_MAX_SECONDS = 10, 60
    assert [webhooks.backoff_seconds(n) for n in (1, 2, 3, 4, 5)] == [10, 20, 40, 60, 60]
    assert webhooks.backoff_seconds(1, retry_after=30) == 30


def test_a_destination_that_turned_private_is_not_called(superuser, settings):
    settings.WEBHOOK_ALLOW_PRIVATE_NETWORKS = True
    with WebhookReceiver() as receiver:
        delivery = _delivery(subscribe(superuser, receiver.url, secret=SECRET).json()["id"])
        settings.WEBHOOK_ALLOW_PRIVATE_NETWORKS = False
        assert webhooks.attempt_delivery(delivery_id=delivery.pk) is not None
    delivery.refresh_from_db()
    assert delivery.status == "retrying" and "private" in delivery.last_error and receiver.requests == []


def test_governance_steps_become_events_in_api_shape(superuser, engineer, engineer_api, versions, approver,
                                                     second_approver, evaluation_dataset, ops_user, allow_private,
                                                     django_capture_on_commit_callbacks):
    from tests.governance.conftest import make_analysis
    from tests.integrations.conftest import deploy

    types = ["change_request.opened", "change_request.approved", "change_request.deployed",
             "change_request.rejected", "change_request.blocked", "alias.rolled_back", "job.succeeded",
             "analysis.finished"]
    subscription = subscribe(superuser, "http://127.0.0.1:9/gov", events=types, secret=SECRET).json()
    with django_capture_on_commit_callbacks(execute=True):
        make_analysis(reference=versions[0], candidate=versions[1], dataset=evaluation_dataset, actor=engineer,
                      kl_mean=0.5)  # fails the kl_mean gate: the second request is blocked
        first = deploy(engineer_api, (approver, second_approver), "credit-llm", 1)
        blocked = engineer_api.post("/api/v1/change-requests/", {"model": "credit-llm", "alias": "production",
                                                                 "version": 2, "justification": "cheaper"},
                                    format="json").json()
        assert blocked["status"] == "blocked"
        make_analysis(reference=versions[0], candidate=versions[2], dataset=evaluation_dataset, actor=engineer)
        deploy(engineer_api, (approver, second_approver), "credit-llm", 3)
        client_for(ops_user).post("/api/v1/models/credit-llm/aliases/production/rollback",
                                  {"reason": "latency regression"}, format="json")
    sent = [json.loads(d.body) for d in WebhookDelivery.objects.filter(subscription_id=subscription["id"])
            .order_by("id")]
    assert [p["type"] for p in sent] == [
        "change_request.opened", "change_request.approved", "change_request.approved", "change_request.deployed",
        "change_request.opened", "change_request.blocked",
        "change_request.opened", "change_request.approved", "change_request.approved", "change_request.deployed",
        "alias.rolled_back",
        # The rollback put the alias back on v1, so the open request 2 was gated again against v1: blocked again.
        "change_request.blocked"]
    deployed = sent[3]
    assert deployed["object"]["id"] == first and deployed["object"]["status"] == "deployed"
    assert deployed["links"]["self"].endswith(f"/api/v1/change-requests/{first}/")
    assert sent[5]["object"]["id"] == blocked["id"] and "kl_mean" in sent[5]["object"]["status_reason"]
    rolled_back = sent[-2]["object"]
    assert (rolled_back["version"], rolled_back["previous"]) == (1, 3)
    assert rolled_back["change"]["reason"] == "latency regression" and rolled_back["change"]["actor"] == "oscar"
    assert len({p["id"] for p in sent}) == len(sent)


def test_finished_jobs_and_analyses_become_events(superuser, engineer, versions, evaluation_dataset, allow_private,
                                                  django_capture_on_commit_callbacks):
    from tests.governance.conftest import make_analysis
    from workers import services as worker_services
    from workers.models import Evaluation, Job

    subscription = subscribe(superuser, "http://127.0.0.1:9/jobs", secret=SECRET,
                             events=["job.succeeded", "job.failed", "analysis.finished", "evaluation.finished"]).json()
    analysis = make_analysis(reference=versions[0], candidate=versions[1], dataset=evaluation_dataset, actor=engineer)
    Job.objects.filter(pk=analysis.job_id).update(status=Job.Status.RUNNING)
    failing = Job.objects.create(kind=Job.Kind.QUANTIZE, status=Job.Status.RUNNING, created_by=engineer,
                                 source_version=versions[0])
    evaluation_job = Job.objects.create(kind="evaluation", status=Job.Status.RUNNING, created_by=engineer,
                                        source_version=versions[1])
    evaluation = Evaluation.objects.create(candidate=versions[1], dataset=evaluation_dataset, task_type="generation",
                                           job=evaluation_job, created_by=engineer,
                                           result={"metrics": {"exact_match": {"value": 0.5, "stderr": 0.1}}})
    with django_capture_on_commit_callbacks(execute=True):
        worker_services.finish_job(job_id=analysis.job_id, result={"analysis": analysis.pk})
        worker_services.fail_job(job_id=failing.pk, error="out of memory")
        worker_services.finish_job(job_id=evaluation_job.pk, result={"evaluation": evaluation.pk})
    sent = {json.loads(d.body)["type"]: json.loads(d.body)
            for d in WebhookDelivery.objects.filter(subscription_id=subscription["id"]).order_by("-id")}
    assert set(sent) == {"job.succeeded", "analysis.finished", "job.failed", "evaluation.finished"}
    assert sent["evaluation.finished"]["object"]["id"] == evaluation.pk
    assert sent["evaluation.finished"]["object"]["metrics"]["exact_match"]["value"] == 0.5
    assert sent["evaluation.finished"]["links"]["self"].endswith(f"/api/v1/evaluations/{evaluation.pk}")
    assert sent["analysis.finished"]["object"]["id"] == analysis.pk
    assert sent["analysis.finished"]["object"]["kl"]["mean"] == analysis.result["kl"]["mean"]
    assert sent["job.failed"]["object"]["error"] == "out of memory"
    assert sent["job.failed"]["links"]["self"].endswith(f"/api/v1/jobs/{failing.pk}")
