"""Change requests through the API: gates, four eyes, quorum deployment, staleness, expiry, policies."""
from datetime import timedelta

import pytest
from django.utils import timezone

from foundation.models import AuditEvent
from foundation.roles import APPROVER, ML_ENGINEER
from governance.models import Alias, AliasChange, ChangeRequest, Decision
from tests.conftest import client_for, make_user
from tests.governance.conftest import make_analysis
from workers.models import Analysis

pytestmark = pytest.mark.django_db


def _open(api, version, alias="production", **extra):
    return api.post("/api/v1/change-requests/", {"model": "credit-llm", "alias": alias, "version": version,
                                                 "justification": "Cheaper serving", **extra}, format="json")


def _decide(user, request_id, decision="approve", comment="looks fine"):
    return client_for(user).post(f"/api/v1/change-requests/{request_id}/decisions",
                                 {"decision": decision, "comment": comment}, format="json")


def _deploy_first(engineer_api, approver, second_approver, version=1):
    request_id = _open(engineer_api, version).json()["id"]
    _decide(approver, request_id)
    assert _decide(second_approver, request_id).json()["status"] == "deployed"
    return request_id


def test_first_deployment_has_no_gates_and_deploys_at_quorum(engineer_api, versions, approver, second_approver):
    opened = _open(engineer_api, 1)
    assert opened.status_code == 201
    body = opened.json()
    assert body["status"] == "pending" and body["gates"] == [] and body["from_version"] is None
    assert body["required_approvals"] == 2 and body["approvals"] == []

    after_one = _decide(approver, body["id"]).json()
    assert after_one["status"] == "pending" and len(after_one["approvals"]) == 1
    after_two = _decide(second_approver, body["id"]).json()
    assert after_two["status"] == "deployed"

    aliases = engineer_api.get("/api/v1/models/credit-llm/aliases/").json()
    assert aliases[0]["alias"] == "production" and aliases[0]["version"] == 1
    assert aliases[0]["history"][0]["kind"] == "deploy" and aliases[0]["history"][0]["change_request"] == body["id"]
    assert AuditEvent.objects.filter(action="alias.deploy", model_name="credit-llm").count() == 1


def test_staging_needs_one_approval_by_default(engineer_api, versions, approver):
    request_id = _open(engineer_api, 1, alias="staging").json()["id"]
    assert _decide(approver, request_id).json()["status"] == "deployed"


def test_gates_come_from_the_analysis_against_the_current_version(engineer_api, engineer, versions, approver,
                                                                  second_approver, evaluation_dataset):
    _deploy_first(engineer_api, approver, second_approver)
    make_analysis(reference=versions[0], candidate=versions[1], dataset=evaluation_dataset, actor=engineer,
                  kl_mean=0.02, top1=0.95, ppl_ratio=1.02)
    body = _open(engineer_api, 2).json()
    assert body["status"] == "pending" and body["from_version"] == 1
    gates = {gate["name"]: gate for gate in body["gates"]}
    assert gates["kl_mean"] == {"name": "kl_mean", "threshold": 0.035, "value": 0.02, "passed": True}
    assert gates["same_top1"]["threshold"] == 0.91 and gates["same_top1"]["passed"]
    assert gates["ppl_ratio"]["threshold"] == 1.03 and gates["ppl_ratio"]["passed"]


def test_failed_gate_blocks_the_request_and_it_takes_no_decisions(engineer_api, engineer, versions, approver,
                                                                  second_approver, evaluation_dataset):
    _deploy_first(engineer_api, approver, second_approver)
    make_analysis(reference=versions[0], candidate=versions[1], dataset=evaluation_dataset, actor=engineer,
                  kl_mean=0.2)
    body = _open(engineer_api, 2).json()
    assert body["status"] == "blocked" and "kl_mean" in body["status_reason"]
    assert _decide(approver, body["id"]).status_code == 409


def test_override_allowed_by_policy_needs_one_more_approval(engineer_api, engineer, versions, approver,
                                                           second_approver, evaluation_dataset):
    admin = make_user("root-admin", superuser=True)
    policy = client_for(admin).put("/api/v1/models/credit-llm/policies/production",
                                   {"required_approvals": 2, "allow_override": True, "expiry_days": 7,
                                    "gates": {"kl_mean_max": 0.035, "same_top1_min": 0.91, "ppl_ratio_max": 1.03}},
                                   format="json")
    assert policy.status_code == 200 and policy.json()["allow_override"] is True
    _deploy_first(engineer_api, approver, second_approver)
    make_analysis(reference=versions[0], candidate=versions[1], dataset=evaluation_dataset, actor=engineer,
                  kl_mean=0.2)
    body = _open(engineer_api, 2).json()
    assert body["status"] == "pending" and body["override"] is True and body["required_approvals"] == 3
    third = make_user("dave", APPROVER)
    _decide(approver, body["id"])
    assert _decide(second_approver, body["id"]).json()["status"] == "pending"
    assert _decide(third, body["id"]).json()["status"] == "deployed"


def test_missing_analysis_is_queued_and_the_request_waits(engineer_api, versions, approver, second_approver,
                                                          evaluation_dataset):
    from governance.services import analysis_completed

    _deploy_first(engineer_api, approver, second_approver)
    body = _open(engineer_api, 2).json()
    assert body["status"] == "analysing" and body["analysis"] is not None
    analysis = Analysis.objects.get(pk=body["analysis"])
    assert (analysis.reference.number, analysis.candidate.number) == (1, 2)
    assert analysis.job.kind == "analysis" and analysis.job.status == "queued"
    assert _decide(approver, body["id"]).status_code == 409

    from tests.governance.conftest import analysis_result

    Analysis.objects.filter(pk=analysis.pk).update(result=analysis_result())
    analysis_completed(analysis_id=analysis.pk)
    assert engineer_api.get(f"/api/v1/change-requests/{body['id']}/").json()["status"] == "pending"


def test_without_an_evaluation_dataset_gating_is_refused_with_advice(engineer_api, versions, approver,
                                                                    second_approver):
    _deploy_first(engineer_api, approver, second_approver)
    response = _open(engineer_api, 2)
    assert response.status_code == 422 and "evaluation dataset" in response.json()["detail"]
    assert ChangeRequest.objects.filter(to_version__number=2).count() == 0


def test_requester_cannot_decide_own_change_request(versions, engineer, approver):
    both = make_user("mallory", ML_ENGINEER, APPROVER)
    request_id = _open(client_for(both), 1).json()["id"]
    response = _decide(both, request_id)
    assert response.status_code == 403 and "someone else" in response.json()["detail"]
    assert Decision.objects.count() == 0


def test_author_of_the_candidate_version_cannot_decide(versions, engineer, second_engineer):
    engineer.groups.add(*__import__("django.contrib.auth.models", fromlist=["Group"]).Group.objects.filter(
        name=APPROVER))
    request_id = _open(client_for(second_engineer), 1).json()["id"]
    response = _decide(engineer, request_id)
    assert response.status_code == 403 and "created the candidate" in response.json()["detail"]


def test_one_decision_per_person(engineer_api, versions, approver):
    request_id = _open(engineer_api, 1).json()["id"]
    assert _decide(approver, request_id).status_code == 200
    response = _decide(approver, request_id)
    assert response.status_code == 409 and "already decided" in response.json()["detail"]
    assert Decision.objects.count() == 1


def test_non_approver_cannot_decide(engineer_api, versions, ops_user, regulator, second_engineer):
    request_id = _open(engineer_api, 1).json()["id"]
    for user in (ops_user, second_engineer):
        assert _decide(user, request_id).status_code == 403
    assert _decide(regulator, request_id).status_code == 403
    assert Decision.objects.count() == 0


def test_rejection_ends_the_request(engineer_api, versions, approver, second_approver):
    request_id = _open(engineer_api, 1).json()["id"]
    assert _decide(approver, request_id, "reject", "not documented").json()["status"] == "rejected"
    assert _decide(second_approver, request_id).status_code == 409
    assert not Alias.objects.filter(version__isnull=False).exists()


def test_expired_request_takes_no_decisions(engineer_api, versions, approver):
    request_id = _open(engineer_api, 1).json()["id"]
    ChangeRequest.objects.filter(pk=request_id).update(expires_at=timezone.now() - timedelta(minutes=1))
    response = _decide(approver, request_id)
    assert response.status_code == 409 and "expired" in response.json()["detail"]
    assert ChangeRequest.objects.get(pk=request_id).status == "expired"


def test_pending_request_becomes_stale_when_the_alias_moves_and_is_regated(
        engineer_api, engineer, versions, approver, second_approver, evaluation_dataset):
    _deploy_first(engineer_api, approver, second_approver)
    make_analysis(reference=versions[0], candidate=versions[1], dataset=evaluation_dataset, actor=engineer)
    make_analysis(reference=versions[0], candidate=versions[2], dataset=evaluation_dataset, actor=engineer)
    to_two = _open(engineer_api, 2).json()["id"]
    to_three = _open(engineer_api, 3).json()["id"]
    _decide(approver, to_three)  # this approval was given against v1 and must not count after the move
    _decide(approver, to_two)
    assert _decide(second_approver, to_two).json()["status"] == "deployed"

    stale = engineer_api.get(f"/api/v1/change-requests/{to_three}/").json()
    assert stale["status"] == "stale" and stale["from_version"] == 2 and stale["round"] == 2
    regate = Analysis.objects.get(pk=stale["analysis"])
    assert (regate.reference.number, regate.candidate.number) == (2, 3)


def test_policy_defaults_and_only_superusers_change_them(engineer_api, versions, approver):
    body = engineer_api.get("/api/v1/models/credit-llm/policies/production").json()
    assert body == {"required_approvals": 2, "gates": {"kl_mean_max": 0.035, "kl_p99_max": None,
                                                       "same_top1_min": 0.91, "ppl_ratio_max": 1.03,
                                                       "flip_rate_max": None, "accuracy_drop_max": None,
                                                       "f1_relative_min": None},
                    "allow_override": False, "expiry_days": 7, "auto_rollback": False, "max_error_increase": 0.05,
                    "eval_dataset": None}
    payload = {"required_approvals": 1, "allow_override": False, "expiry_days": 3, "gates": {}}
    assert client_for(approver).put("/api/v1/models/credit-llm/policies/production", payload,
                                    format="json").status_code == 403
    admin = make_user("root-admin", superuser=True)
    assert client_for(admin).put("/api/v1/models/credit-llm/policies/production", payload,
                                 format="json").json()["required_approvals"] == 1
    assert AuditEvent.objects.filter(action="policy.updated").count() == 1
    alarms = client_for(admin).put("/api/v1/models/credit-llm/policies/production",
                                   {**payload, "auto_rollback": True, "max_error_increase": 0.1}, format="json").json()
    assert (alarms["auto_rollback"], alarms["max_error_increase"]) == (True, 0.1)
    # Left out of a later PUT, the alarm settings keep their values.
    kept = client_for(admin).put("/api/v1/models/credit-llm/policies/production", payload, format="json").json()
    assert (kept["auto_rollback"], kept["max_error_increase"]) == (True, 0.1)


def test_opening_requests_validates_input(engineer_api, versions, approver):
    assert _open(engineer_api, 99).status_code == 404
    assert engineer_api.post("/api/v1/change-requests/", {"model": "credit-llm", "alias": "Prod!", "version": 1,
                                                          "justification": "x"}, format="json").status_code == 400
    no_reason = engineer_api.post("/api/v1/change-requests/", {"model": "credit-llm", "alias": "production",
                                                               "version": 1, "justification": "  "}, format="json")
    assert no_reason.status_code == 400
    assert client_for(approver).post("/api/v1/change-requests/", {
        "model": "credit-llm", "alias": "production", "version": 1, "justification": "x"},
        format="json").status_code == 403
    assert ChangeRequest.objects.count() == 0
    assert AliasChange.objects.count() == 0


def test_bad_decisions_and_policies_are_400_and_change_nothing(engineer_api, versions, approver):
    request_id = _open(engineer_api, 1).json()["id"]
    response = client_for(approver).post(f"/api/v1/change-requests/{request_id}/decisions",
                                         {"decision": "maybe"}, format="json")
    assert response.status_code == 400 and "decision" in response.json()["detail"]
    assert Decision.objects.count() == 0
    admin = make_user("root-admin", superuser=True)
    for payload in ({"required_approvals": 0, "allow_override": False, "expiry_days": 7, "gates": {}},
                    {"required_approvals": 1, "allow_override": False, "expiry_days": 7, "gates": {"vibes_max": 1}}):
        response = client_for(admin).put("/api/v1/models/credit-llm/policies/production", payload, format="json")
        assert response.status_code == 400, response.content
    assert engineer_api.get("/api/v1/models/credit-llm/policies/production").json()["required_approvals"] == 2
    assert engineer_api.get("/api/v1/change-requests/999999/").status_code == 404
    assert engineer_api.get("/api/v1/analyses/999999").status_code == 404


def test_the_requester_withdraws_an_open_request_and_it_takes_no_more_decisions(engineer_api, versions, approver,
                                                                               second_engineer):
    request_id = _open(engineer_api, 1).json()["id"]

    assert client_for(second_engineer).post(f"/api/v1/change-requests/{request_id}/withdraw",
                                            {}, format="json").status_code == 403
    withdrawn = engineer_api.post(f"/api/v1/change-requests/{request_id}/withdraw",
                                  {"reason": "superseded by v2"}, format="json")

    assert withdrawn.status_code == 200
    assert withdrawn.json()["status"] == "withdrawn" and withdrawn.json()["status_reason"] == "superseded by v2"
    assert _decide(approver, request_id).status_code == 409
    assert engineer_api.post(f"/api/v1/change-requests/{request_id}/withdraw", {}, format="json").status_code == 409
    assert AuditEvent.objects.filter(action="change_request.withdrawn", object_id=str(request_id)).exists()
    assert not Alias.objects.filter(version__isnull=False).exists()
