"""/metrics: refused (403 JSON) unless the scraper holds METRICS_TOKEN or comes from an allowed network; the
exposition names request latency by view, jobs, queues, change requests, gates, deployments, rollbacks, reports
and the audit chain."""
from datetime import timedelta

import pytest
from django.test import Client
from django.utils import timezone

from integrations import broker
from tests.conftest import client_for
from workers.models import Job

pytestmark = pytest.mark.django_db

TOKEN = "scrape-token-" + "s" * 24


@pytest.fixture
def metrics_settings(settings):
    settings.METRICS_TOKEN = TOKEN
    settings.METRICS_ALLOWED_NETWORKS = ["10.20.0.0/16"]
    return settings


def sample(text: str, name: str, **labels) -> float | None:
    """The value of one sample in an exposition, or None."""
    wanted = ",".join(f'{key}="{value}"' for key, value in labels.items())
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        series, _, value = line.rpartition(" ")
        if series == (f"{name}{{{wanted}}}" if labels else name):
            return float(value)
        if labels and series.startswith(f"{name}{{") and all(f'{k}="{v}"' in series for k, v in labels.items()):
            return float(value)
    return None


def test_scrape_without_token_or_allowed_address_is_a_403_json(metrics_settings, ops_user):
    for client in (Client(), Client(HTTP_AUTHORIZATION="Bearer wrong-token"), client_for(ops_user)):
        response = client.get("/metrics")
        assert response.status_code == 403
        assert response.json()["error"] == "forbidden" and "METRICS_TOKEN" in response.json()["detail"]


def test_scrape_with_nothing_configured_is_refused(settings):
    settings.METRICS_TOKEN, settings.METRICS_ALLOWED_NETWORKS = "", []
    assert Client().get("/metrics").status_code == 403
    assert Client(HTTP_AUTHORIZATION="Bearer ").get("/metrics").status_code == 403


def test_scrape_with_the_token_or_from_an_allowed_network(metrics_settings):
    assert Client(HTTP_AUTHORIZATION=f"Bearer {TOKEN}").get("/metrics").status_code == 200
    allowed = Client(REMOTE_ADDR="10.20.3.4").get("/metrics")
    assert allowed.status_code == 200 and allowed["Content-Type"].startswith("text/plain")
    assert Client(REMOTE_ADDR="10.21.0.1").get("/metrics").status_code == 403


def test_exposition_names_the_registry_state(metrics_settings, deployed_twice, ops_user, engineer_api):
    started = timezone.now() - timedelta(minutes=5)
    Job.objects.update(started_at=started, finished_at=started + timedelta(seconds=90))
    engineer_api.get("/api/v1/models/")
    assert client_for(ops_user).post("/api/v1/models/credit-llm/aliases/production/rollback",
                                     {"reason": "latency"}, format="json").status_code == 200
    text = Client(HTTP_AUTHORIZATION=f"Bearer {TOKEN}").get("/metrics").content.decode()
    assert sample(text, "registry_http_request_duration_seconds_count", view="model-list", method="GET",
                  status="200") >= 1
    assert sample(text, "registry_deployments_total", model="credit-llm", alias="production") == 2
    assert sample(text, "registry_rollbacks_total", model="credit-llm", alias="production") == 1
    assert sample(text, "registry_change_requests", status="deployed") == 2
    assert sample(text, "registry_change_requests", status="pending") == 0
    # The second deployment was gated by an analysis: its gates count as passed.
    assert sample(text, "registry_gate_verdicts", gate="kl_mean", verdict="passed") == 1
    assert sample(text, "registry_jobs", kind="analysis", status="succeeded") == 1
    assert sample(text, "registry_queue_depth", queue="cpu") is not None
    assert sample(text, "registry_audit_chain_ok") == 1
    assert sample(text, "registry_audit_chain_events") > 0
    assert "registry_report_signing_seconds_bucket" in text
    assert sample(text, "registry_job_duration_seconds_bucket", kind="analysis", status="succeeded", le="60.0") == 0
    assert sample(text, "registry_job_duration_seconds_bucket", kind="analysis", status="succeeded", le="300.0") == 1
    assert sample(text, "registry_job_duration_seconds_sum", kind="analysis", status="succeeded") == 90
    assert sample(text, "registry_metrics_part_up", part="queues") == 1


def test_an_unreachable_broker_leaves_the_rest_of_the_scrape(metrics_settings, monkeypatch):
    def broker_down():
        import redis
        raise redis.ConnectionError("refused")

    monkeypatch.setattr(broker, "queue_depths", broker_down)
    response = Client(HTTP_AUTHORIZATION=f"Bearer {TOKEN}").get("/metrics")
    assert response.status_code == 200
    text = response.content.decode()
    assert sample(text, "registry_metrics_part_up", part="queues") == 0
    assert sample(text, "registry_metrics_part_up", part="jobs") == 1
    assert "registry_queue_depth" not in text.replace("# HELP registry_queue_depth", "")


def test_every_metric_the_grafana_dashboard_queries_is_exposed(metrics_settings, deployed_twice, ops_user):
    import json
    import re
    from pathlib import Path

    from foundation.anchoring import anchor_chain_head

    client_for(ops_user).post("/api/v1/models/credit-llm/aliases/production/health",
                              {"error_rate": 0.1, "baseline_error_rate": 0.1, "window": "5m"}, format="json")
    started = timezone.now() - timedelta(minutes=5)
    Job.objects.update(started_at=started, finished_at=started + timedelta(seconds=90))
    client_for(ops_user).post("/api/v1/models/credit-llm/aliases/production/rollback", {"reason": "x"}, format="json")
    anchor_chain_head()
    text = Client(HTTP_AUTHORIZATION=f"Bearer {TOKEN}").get("/metrics").content.decode()
    dashboard_file = Path(__file__).resolve().parents[2] / "integrations" / "grafana-dashboard.json"
    dashboard = json.loads(dashboard_file.read_text())
    queried = {name for panel in dashboard["panels"] for target in panel["targets"]
               for name in re.findall(r"registry_[a-z_]+", target["expr"])}
    assert len(queried) >= 14
    missing = sorted(name for name in queried if f"\n{name}" not in text and f"\n{name}{{" not in text)
    assert missing == [], missing
