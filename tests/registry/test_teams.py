"""Every model belongs to a team; only ml_engineer members of that team write to it or start work on it.
Approvers, ops and regulators act across teams as their roles allow."""
import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from foundation.roles import APPROVER, ML_ENGINEER
from governance.models import ChangeRequest
from registry import services as registry_services
from registry.models import ModelVersion, RegisteredModel, Team
from tests.conftest import client_for, jsonl, make_user, register_sealed_version
from workers.models import Analysis, Job

pytestmark = pytest.mark.django_db


@pytest.fixture
def outsider(db):
    """An ML engineer of another team."""
    return make_user("olga", ML_ENGINEER, team="payments-models")


@pytest.fixture
def sealed(engineer_api, tiny_model_dir):
    return register_sealed_version(engineer_api, "credit-llm", tiny_model_dir)


@pytest.fixture
def datasets(engineer):
    def register(name, purpose, records):
        return registry_services.register_dataset(name=name, purpose=purpose, actor=engineer,
                                                  uploaded_file=SimpleUploadedFile(f"{name}.jsonl", jsonl(records)))
    return {"evaluation": register("eval", "evaluation", [{"text": "The bank raised its rate."}] * 4),
            "training": register("train", "training", [{"text": "Credit memo for a small firm."}] * 8)}


def test_a_new_model_belongs_to_its_creators_only_team(engineer_api):
    response = engineer_api.post("/api/v1/models/", {"name": "credit-llm"}, format="json")

    assert response.status_code == 201 and response.json()["team"] == "risk-models"
    assert engineer_api.get("/api/v1/models/credit-llm/").json()["team"] == "risk-models"


def test_a_creator_in_no_team_gets_a_personal_team(db):
    loner = make_user("lone.wolf", ML_ENGINEER, team=None)

    response = client_for(loner).post("/api/v1/models/", {"name": "solo-llm"}, format="json")

    assert response.status_code == 201 and response.json()["team"] == "lone.wolf"
    assert list(Team.objects.get(name="lone.wolf").members.all()) == [loner]


def test_a_creator_in_several_teams_must_name_one(engineer):
    Team.objects.create(name="treasury-models").members.add(engineer)
    api = client_for(engineer)

    ambiguous = api.post("/api/v1/models/", {"name": "credit-llm"}, format="json")
    named = api.post("/api/v1/models/", {"name": "credit-llm", "team": "treasury-models"}, format="json")

    assert ambiguous.status_code == 400 and ambiguous.json()["field"] == "team"
    assert "risk-models" in ambiguous.json()["detail"] and "treasury-models" in ambiguous.json()["detail"]
    assert named.status_code == 201 and named.json()["team"] == "treasury-models"


def test_a_model_cannot_be_registered_for_someone_elses_team(engineer_api, outsider):
    response = engineer_api.post("/api/v1/models/", {"name": "credit-llm", "team": "payments-models"}, format="json")

    assert response.status_code == 403 and response.json()["field"] == "team"
    assert not RegisteredModel.objects.exists()


def test_outsiders_cannot_add_versions_files_or_seal(engineer_api, outsider, tiny_model_dir):
    engineer_api.post("/api/v1/models/", {"name": "credit-llm"}, format="json")
    draft = engineer_api.post("/api/v1/models/credit-llm/versions/", {}, format="json").json()["number"]
    api = client_for(outsider)

    new_version = api.post("/api/v1/models/credit-llm/versions/", {}, format="json")
    upload = api.put(f"/api/v1/models/credit-llm/versions/{draft}/files/config.json", data=b"{}",
                     content_type="application/octet-stream")
    seal = api.post(f"/api/v1/models/credit-llm/versions/{draft}/seal")

    assert [r.status_code for r in (new_version, upload, seal)] == [403, 403, 403]
    assert "risk-models" in new_version.json()["detail"]
    assert ModelVersion.objects.count() == 1 and not ModelVersion.objects.get().files.exists()


def test_outsiders_cannot_start_jobs_on_the_model(sealed, outsider, datasets, engineer_api):
    api = client_for(outsider)
    base = "/api/v1/models/credit-llm/versions/1"

    quantize = api.post(f"{base}/quantize", {"method": "nf4"}, format="json")
    analysis = api.post(f"{base}/analyses", {"reference": 1, "dataset": datasets["evaluation"].pk}, format="json")
    lora = api.post(f"{base}/lora-updates", {"dataset": datasets["training"].pk, "steps": 1}, format="json")

    assert [r.status_code for r in (quantize, analysis, lora)] == [403, 403, 403]
    assert not Job.objects.exists() and not Analysis.objects.exists()
    # The team's own engineer may.
    assert engineer_api.post(f"{base}/quantize", {"method": "nf4"}, format="json").status_code == 202


def test_outsiders_cannot_cancel_the_teams_jobs(sealed, outsider, engineer_api, second_engineer):
    job = engineer_api.post("/api/v1/models/credit-llm/versions/1/quantize", {"method": "nf4"}, format="json").json()

    refused = client_for(outsider).post(f"/api/v1/jobs/{job['job']}/cancel")
    by_teammate = client_for(second_engineer).post(f"/api/v1/jobs/{job['job']}/cancel")

    assert refused.status_code == 403 and by_teammate.status_code == 200
    assert Job.objects.get(pk=job["job"]).status == "cancelled"


def test_outsiders_cannot_open_change_requests_for_the_model(sealed, outsider):
    response = client_for(outsider).post("/api/v1/change-requests/", {
        "model": "credit-llm", "alias": "production", "version": 1, "justification": "Ship it"}, format="json")

    assert response.status_code == 403 and not ChangeRequest.objects.exists()


def test_approvers_of_any_team_decide_and_regulators_read_across_teams(sealed, engineer_api, regulator):
    request = engineer_api.post("/api/v1/change-requests/", {
        "model": "credit-llm", "alias": "production", "version": 1, "justification": "First deployment"},
        format="json").json()
    approvers = [make_user(name, APPROVER, team="payments-models") for name in ("pat", "quinn")]

    for approver in approvers:
        decided = client_for(approver).post(f"/api/v1/change-requests/{request['id']}/decisions",
                                            {"decision": "approve"}, format="json")
        assert decided.status_code == 200, decided.content

    assert client_for(regulator).get("/api/v1/models/credit-llm/versions/1/").status_code == 200
    assert ChangeRequest.objects.get(pk=request["id"]).status == "deployed"


def test_superusers_may_write_to_any_team(sealed, db):
    admin = make_user("root-admin", superuser=True)

    response = client_for(admin).post("/api/v1/models/credit-llm/versions/", {}, format="json")

    assert response.status_code == 201


def test_the_admin_refuses_outsiders_the_same_way(engineer_api, outsider, tiny_model_dir):
    from django.test import Client

    engineer_api.post("/api/v1/models/", {"name": "credit-llm"}, format="json")
    draft = engineer_api.post("/api/v1/models/credit-llm/versions/", {}, format="json").json()
    version_id = ModelVersion.objects.get(model__name="credit-llm", number=draft["number"]).pk
    browser = Client()
    browser.force_login(outsider)

    page = browser.post(f"/admin/registry/modelversion/{version_id}/seal/", follow=True).content.decode()

    assert "belongs to team" in page and "risk-models" in page
    assert ModelVersion.objects.get(pk=version_id).status == "draft"
