"""One-click rollback: back to the previously deployed version, or a named one deployed there before; never
anywhere else; rolling back twice goes two steps back."""
import pytest

from foundation.models import AuditEvent
from governance.models import AliasChange
from tests.conftest import client_for
from tests.governance.conftest import make_analysis

pytestmark = pytest.mark.django_db


@pytest.fixture
def deployed_three(engineer, engineer_api, versions, approver, second_approver, evaluation_dataset):
    """production went v1 -> v2 -> v3 through approved change requests."""
    for number in (1, 2, 3):
        if number > 1:
            make_analysis(reference=versions[number - 2], candidate=versions[number - 1],
                          dataset=evaluation_dataset, actor=engineer)
        request_id = engineer_api.post("/api/v1/change-requests/", {
            "model": "credit-llm", "alias": "production", "version": number, "justification": "release"},
            format="json").json()["id"]
        for user in (approver, second_approver):
            client_for(user).post(f"/api/v1/change-requests/{request_id}/decisions", {"decision": "approve"},
                                  format="json")
    return versions


def _rollback(user, **payload):
    return client_for(user).post("/api/v1/models/credit-llm/aliases/production/rollback",
                                 {"reason": "latency regression", **payload}, format="json")


def test_rollback_returns_to_the_previously_deployed_version(deployed_three, ops_user, engineer_api):
    response = _rollback(ops_user)
    assert response.status_code == 200
    assert response.json() == {"alias": "production", "version": 2, "previous": 3}
    alias = engineer_api.get("/api/v1/models/credit-llm/aliases/").json()[0]
    assert alias["version"] == 2
    assert alias["history"][0]["kind"] == "rollback" and alias["history"][0]["reason"] == "latency regression"
    assert AuditEvent.objects.filter(action="alias.rollback").count() == 1


def test_rolling_back_twice_goes_two_steps_back_then_stops(deployed_three, ops_user):
    assert _rollback(ops_user).json()["version"] == 2
    assert _rollback(ops_user).json()["version"] == 1
    response = _rollback(ops_user)
    assert response.status_code == 409 and "no earlier deployed version" in response.json()["detail"]


def test_rollback_to_a_named_previously_deployed_version(deployed_three, ops_user):
    assert _rollback(ops_user, to_version=1).json() == {"alias": "production", "version": 1, "previous": 3}
    # v3 was deployed through an approved request too, so ops may return to it.
    assert _rollback(ops_user, to_version=3).json()["version"] == 3


def test_rollback_to_a_never_deployed_version_is_refused(engineer, engineer_api, versions, approver,
                                                         second_approver, ops_user, tiny_model_dir):
    request_id = engineer_api.post("/api/v1/change-requests/", {
        "model": "credit-llm", "alias": "production", "version": 1, "justification": "first"},
        format="json").json()["id"]
    for user in (approver, second_approver):
        client_for(user).post(f"/api/v1/change-requests/{request_id}/decisions", {"decision": "approve"},
                              format="json")
    before = AliasChange.objects.count()
    response = _rollback(ops_user, to_version=2)
    assert response.status_code == 422 and "never deployed" in response.json()["detail"]
    assert AliasChange.objects.count() == before


def test_only_ops_roll_back_and_a_reason_is_required(deployed_three, ops_user, approver, engineer):
    assert _rollback(approver).status_code == 403
    assert _rollback(engineer).status_code == 403
    no_reason = client_for(ops_user).post("/api/v1/models/credit-llm/aliases/production/rollback",
                                          {"reason": " "}, format="json")
    assert no_reason.status_code == 400
    assert not AliasChange.objects.filter(kind="rollback").exists()


def test_rollback_of_an_alias_never_deployed_is_a_conflict(versions, ops_user):
    response = _rollback(ops_user)
    assert response.status_code == 409 and "never been deployed" in response.json()["detail"]


def test_alias_list_shows_the_latest_changes_and_links_the_whole_history(deployed_three, ops_user, engineer_api,
                                                                          monkeypatch):
    from governance import api as governance_api

    monkeypatch.setattr(governance_api, "RECENT_ALIAS_CHANGES", 2)
    _rollback(ops_user, to_version=1)
    _rollback(ops_user, to_version=3)
    alias = engineer_api.get("/api/v1/models/credit-llm/aliases/").json()[0]
    # 3 deployments and 2 rollbacks: the list carries the newest 2 and says how many there are in all.
    assert [(change["kind"], change["to_version"]) for change in alias["history"]] == [("rollback", 3),
                                                                                       ("rollback", 1)]
    assert alias["history_total"] == 5
    history = engineer_api.get(alias["history_url"]).json()
    assert [change["kind"] for change in history] == ["rollback", "rollback", "deploy", "deploy", "deploy"]


def test_a_rollback_regates_the_open_requests_of_that_alias(deployed_three, ops_user, engineer, engineer_api,
                                                            evaluation_dataset):
    make_analysis(reference=deployed_three[2], candidate=deployed_three[0], dataset=evaluation_dataset,
                  actor=engineer)
    pending = engineer_api.post("/api/v1/change-requests/", {
        "model": "credit-llm", "alias": "production", "version": 1, "justification": "back to v1"},
        format="json").json()
    assert pending["status"] == "pending" and pending["from_version"] == 3
    assert _rollback(ops_user).json()["version"] == 2
    stale = engineer_api.get(f"/api/v1/change-requests/{pending['id']}/").json()
    assert stale["status"] == "stale" and stale["from_version"] == 2 and stale["round"] == 2
    assert AuditEvent.objects.filter(action="change_request.stale", object_id=str(pending["id"])).count() == 1
