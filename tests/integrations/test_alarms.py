"""Alarm-driven rollback: Alertmanager's firing alerts and health reports roll an alias back through the governed
rollback when its policy allows it, once per alert; everything else is recorded and ignored."""
import pytest
from django.utils import timezone
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from foundation.models import AuditEvent
from governance.models import Alias, AliasChange
from integrations.models import Alarm
from tests.conftest import client_for
from tests.integrations.conftest import set_auto_rollback

pytestmark = pytest.mark.django_db

ALERTS = "/api/v1/alerts/alertmanager"
HEALTH = "/api/v1/models/credit-llm/aliases/production/health"


def now_rfc3339() -> str:
    """Now, as Alertmanager writes times (nanoseconds)."""
    return timezone.now().strftime("%Y-%m-%dT%H:%M:%S.%f") + "123Z"


def alertmanager_payload(*, status="firing", labels=None, fingerprint="3f1c2a9d8e7b6a50", starts_at=None):
    """What Alertmanager (webhook_configs, version 4) posts for one alert group."""
    starts_at = starts_at or now_rfc3339()
    labels = {"alertname": "ModelErrorRateHigh", "model": "credit-llm", "alias": "production", "severity": "page",
              **(labels or {})}
    return {
        "version": "4", "groupKey": '{}:{alertname="ModelErrorRateHigh"}', "truncatedAlerts": 0, "status": status,
        "receiver": "llm-registry", "groupLabels": {"alertname": "ModelErrorRateHigh"}, "commonLabels": labels,
        "commonAnnotations": {}, "externalURL": "http://alertmanager.example:9093",
        "alerts": [{"status": status, "labels": labels,
                    "annotations": {"summary": "5xx rate above 2 %", "runbook": "https://wiki.example/rollback"},
                    "startsAt": starts_at, "endsAt": "0001-01-01T00:00:00Z",
                    "generatorURL": "http://prometheus.example:9090/graph", "fingerprint": fingerprint}],
    }


def bearer_client(user) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {Token.objects.get_or_create(user=user)[0].key}")
    return client


def production_version() -> int:
    return Alias.objects.get(model__name="credit-llm", name="production").version.number


def test_firing_alert_rolls_back_an_alias_whose_policy_allows_it(deployed_twice, credit_model, superuser, ops_user):
    set_auto_rollback(credit_model, "production", superuser)
    started = now_rfc3339()
    response = bearer_client(ops_user).post(ALERTS, alertmanager_payload(starts_at=started), format="json")
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["action"] == "rolled_back"
    assert body["change"]["version"] == 1 and body["change"]["previous"] == 2
    assert "ModelErrorRateHigh" in body["reason"] and started in body["reason"]
    assert production_version() == 1
    change = AliasChange.objects.get(kind="rollback")
    assert change.actor == ops_user
    assert "ModelErrorRateHigh" in change.reason and "5xx rate above 2 %" in change.reason
    assert started in change.reason
    rollback_event = AuditEvent.objects.get(action="alias.rollback")
    assert rollback_event.actor_name == "oscar" and "ModelErrorRateHigh" in rollback_event.after["reason"]
    assert AuditEvent.objects.filter(action="alarm.acted").count() == 1


def test_the_same_alert_delivered_twice_rolls_back_once(deployed_twice, credit_model, superuser, ops_user):
    set_auto_rollback(credit_model, "production", superuser)
    api = bearer_client(ops_user)
    alert = alertmanager_payload()
    assert api.post(ALERTS, alert, format="json").json()["action"] == "rolled_back"
    again = api.post(ALERTS, alert, format="json")
    assert again.status_code == 200
    assert again.json()["action"] == "ignored" and "already handled" in again.json()["reason"]
    assert AliasChange.objects.filter(kind="rollback").count() == 1
    assert production_version() == 1
    # A new firing of the alert (a new start time, on the version now live) is a new alarm.
    later = api.post(ALERTS, alertmanager_payload(), format="json").json()
    assert later["action"] == "ignored" and "no earlier deployed version" in later["reason"]


def test_an_alert_that_started_before_the_alias_moved_rolls_nothing_back(deployed_twice, credit_model, superuser,
                                                                        ops_user, engineer_api, approver,
                                                                        second_approver, versions, engineer,
                                                                        evaluation_dataset):
    from tests.governance.conftest import make_analysis
    from tests.integrations.conftest import deploy

    make_analysis(reference=versions[1], candidate=versions[2], dataset=evaluation_dataset, actor=engineer)
    deploy(engineer_api, (approver, second_approver), "credit-llm", 3)
    set_auto_rollback(credit_model, "production", superuser)
    api = bearer_client(ops_user)
    first, second = alertmanager_payload(fingerprint="aaaa"), alertmanager_payload(fingerprint="bbbb")
    # Two alerts about v3 arrive together: the first rolls back to v2, the second is about v3 and stops there.
    both = {**first, "alerts": first["alerts"] + second["alerts"]}
    body = api.post(ALERTS, both, format="json").json()
    assert body["action"] == "rolled_back" and body["change"]["version"] == 2
    assert [alert["action"] for alert in body["alerts"]] == ["rolled_back", "ignored"]
    assert "after this alert started" in body["alerts"][1]["reason"]
    assert production_version() == 2
    # An alert that started before the last deployment is about an older version.
    stale = api.post(ALERTS, alertmanager_payload(fingerprint="cccc", starts_at="2020-01-01T00:00:00Z"),
                     format="json").json()
    assert stale["action"] == "ignored" and production_version() == 2


def test_resolved_alert_is_recorded_and_ignored(deployed_twice, credit_model, superuser, ops_user):
    set_auto_rollback(credit_model, "production", superuser)
    body = client_for(ops_user).post(ALERTS, alertmanager_payload(status="resolved"), format="json").json()
    assert body["action"] == "ignored" and "resolved" in body["reason"]
    assert production_version() == 2
    alarm = Alarm.objects.get()
    assert alarm.status == "resolved" and alarm.action == "ignored" and alarm.received_by == ops_user
    assert AuditEvent.objects.filter(action="alarm.received").count() == 1


def test_alert_for_an_alias_without_auto_rollback_is_recorded_and_ignored(deployed_twice, ops_user):
    body = client_for(ops_user).post(ALERTS, alertmanager_payload(), format="json").json()
    assert body["action"] == "ignored" and "auto_rollback is off" in body["reason"]
    assert production_version() == 2
    assert Alarm.objects.get().action == "ignored"
    assert not AliasChange.objects.filter(kind="rollback").exists()


def test_alert_without_model_and_alias_labels_is_ignored(deployed_twice, ops_user):
    payload = alertmanager_payload()
    for alert in payload["alerts"]:
        alert["labels"] = {"alertname": "DiskFull"}
    body = client_for(ops_user).post(ALERTS, payload, format="json").json()
    assert body["action"] == "ignored" and "no `model` and `alias` labels" in body["reason"]


def test_only_ops_accounts_send_alarms(deployed_twice, credit_model, superuser, engineer, approver):
    set_auto_rollback(credit_model, "production", superuser)
    assert APIClient().post(ALERTS, alertmanager_payload(), format="json").status_code == 401
    for user in (engineer, approver):
        response = bearer_client(user).post(ALERTS, alertmanager_payload(), format="json")
        assert response.status_code == 403 and response.json()["error"] == "forbidden"
        assert client_for(user).post(HEALTH, {"error_rate": 0.9, "baseline_error_rate": 0.01, "window": "5m"},
                                     format="json").status_code == 403
    assert production_version() == 2 and not Alarm.objects.exists()


def test_malformed_alertmanager_payload_is_a_400_and_records_nothing(deployed_twice, ops_user):
    api = client_for(ops_user)
    for payload in ({"alerts": []}, {"alerts": [{"status": "burning", "labels": {}, "startsAt": "x"}]},
                    {"alerts": "nope"}, {}):
        response = api.post(ALERTS, payload, format="json")
        assert response.status_code == 400, payload
        assert response.json()["error"] == "invalid" and response.json()["field"].startswith("alerts")
    assert not Alarm.objects.exists()


def test_health_report_above_the_allowed_increase_rolls_back(deployed_twice, credit_model, superuser, ops_user):
    set_auto_rollback(credit_model, "production", superuser, max_error_increase=0.05)
    api = client_for(ops_user)
    within = api.post(HEALTH, {"error_rate": 0.0104, "baseline_error_rate": 0.01, "window": "5m"}, format="json")
    assert within.status_code == 200
    assert within.json()["action"] == "ignored" and "within the limit" in within.json()["reason"]
    above = api.post(HEALTH, {"error_rate": 0.0106, "baseline_error_rate": 0.01, "window": "5m"}, format="json")
    body = above.json()
    assert body["action"] == "rolled_back" and body["change"]["version"] == 1, body
    assert "+6.0%" in body["reason"] and "+5.0%" in body["reason"]
    assert production_version() == 1
    assert AliasChange.objects.get(kind="rollback").reason.startswith("Health report: Error rate 0.0106 over 5m")


def test_health_report_without_baseline_compares_with_the_last_healthy_report(deployed_twice, credit_model,
                                                                              superuser, ops_user):
    set_auto_rollback(credit_model, "production", superuser, max_error_increase=0.5)
    api = client_for(ops_user)
    first = api.post(HEALTH, {"error_rate": 0.02, "window": "1h"}, format="json").json()
    assert first["action"] == "ignored" and "No baseline" in first["reason"]
    assert api.post(HEALTH, {"error_rate": 0.02, "baseline_error_rate": 0.02, "window": "1h"},
                    format="json").json()["action"] == "ignored"
    assert api.post(HEALTH, {"error_rate": 0.05, "window": "1h"}, format="json").json()["action"] == "rolled_back"


def test_health_report_for_an_alias_without_auto_rollback_is_ignored(deployed_twice, ops_user):
    body = client_for(ops_user).post(HEALTH, {"error_rate": 0.5, "baseline_error_rate": 0.01, "window": "5m"},
                                     format="json").json()
    assert body["action"] == "ignored" and "auto_rollback is off" in body["reason"]
    assert production_version() == 2


def test_bad_health_reports_are_400s_naming_the_field(deployed_twice, ops_user):
    api = client_for(ops_user)
    for payload, field in (({"error_rate": -1, "window": "5m"}, "error_rate"),
                           ({"error_rate": 0.1, "window": "five minutes"}, "window"),
                           ({"error_rate": "high", "window": "5m"}, "error_rate"),
                           ({"window": "5m"}, "error_rate")):
        response = api.post(HEALTH, payload, format="json")
        assert response.status_code == 400 and response.json()["field"] == field, payload
    assert client_for(ops_user).post("/api/v1/models/nope/aliases/production/health",
                                     {"error_rate": 0.1, "window": "5m"}, format="json").status_code == 404
    assert not Alarm.objects.exists()
