"""Admin pages: every role may look, only engineers may add, and a refused action shows its reason; the version
page's forms validate as the API does, withdraw is the requester's, rollback offers only valid targets."""
import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from governance.models import Alias, ChangeRequest
from registry import services as registry_services
from registry.models import RegisteredModel
from tests.conftest import client_for, jsonl
from tests.governance.conftest import make_analysis, register_version
from workers.models import Analysis, Job

pytestmark = pytest.mark.django_db


def test_duplicate_model_name_in_the_admin_shows_the_reason_and_adds_nothing(client, engineer):
    client.force_login(engineer)
    client.post("/admin/registry/registeredmodel/add/", {"name": "credit-llm", "description": "a"})
    response = client.post("/admin/registry/registeredmodel/add/", {"name": "credit-llm", "description": "b"},
                           follow=True)
    assert response.status_code == 200
    assert "already exists" in response.content.decode()
    assert RegisteredModel.objects.get().description == "a"


@pytest.mark.parametrize("path", ["/admin/registry/modelversion/", "/admin/foundation/auditevent/",
                                  "/admin/workers/analysis/", "/admin/governance/changerequest/",
                                  "/admin/workers/job/"])
def test_regulator_reads_the_admin_lists(client, regulator, path):
    client.force_login(regulator)
    assert client.get(path).status_code == 200


def test_regulator_cannot_add_models_or_upload(client, regulator, engineer_api):
    client.force_login(regulator)
    assert client.get("/admin/registry/registeredmodel/add/").status_code == 403
    engineer_api.post("/api/v1/models/", {"name": "credit-llm"}, format="json")
    engineer_api.post("/api/v1/models/credit-llm/versions/", {}, format="json")
    version_id = RegisteredModel.objects.get().versions.get().pk
    response = client.post(f"/admin/registry/modelversion/{version_id}/seal/", follow=True)
    assert "needs the ml_engineer role" in response.content.decode()
    assert RegisteredModel.objects.get().versions.get().status == "draft"


# --- the version page's forms, the change request's withdraw button and the alias's rollback choice -----------

@pytest.fixture
def versions(engineer, tiny_model_dir):
    """Three sealed uploads of credit-llm."""
    model = registry_services.create_model(name="credit-llm", description="Credit memos", actor=engineer)
    return [register_version(model, tiny_model_dir, engineer) for _ in range(3)]


@pytest.fixture
def evaluation_dataset(engineer):
    upload = SimpleUploadedFile("eval.jsonl", jsonl([{"text": "The bank raised its rate."}] * 4))
    return registry_services.register_dataset(name="eval", purpose="evaluation", uploaded_file=upload, actor=engineer)


@pytest.fixture
def training_dataset(engineer):
    upload = SimpleUploadedFile("train.jsonl", jsonl([{"prompt": "Q: risk?", "completion": " low"}] * 4))
    return registry_services.register_dataset(name="train", purpose="training", uploaded_file=upload, actor=engineer)


def _version_page(client, version) -> str:
    return client.get(f"/admin/registry/modelversion/{version.pk}/change/").content.decode()


def test_version_page_offers_datasets_of_the_right_purpose_in_each_form(client, engineer, versions,
                                                                        evaluation_dataset, training_dataset):
    client.force_login(engineer)
    page = _version_page(client, versions[1])
    analysis_form = page.split('id="analysis-form"')[1].split("</form>")[0]
    lora_form = page.split('id="lora-form"')[1].split("</form>")[0]
    assert f"#{evaluation_dataset.pk} eval (evaluation" in analysis_form and "train (training" not in analysis_form
    assert f"#{training_dataset.pk} train (training" in lora_form and "eval (evaluation" not in lora_form
    assert 'value="8"' in lora_form and 'value="0.0002"' in lora_form  # r and learning rate defaults shown
    assert "q_proj, k_proj, v_proj, o_proj for this model" in lora_form


def test_analysis_form_starts_the_analysis_and_lands_on_its_job(client, engineer, versions, evaluation_dataset):
    client.force_login(engineer)
    response = client.post(f"/admin/registry/modelversion/{versions[1].pk}/analysis/",
                           {"analysis-reference": versions[0].pk, "analysis-dataset": evaluation_dataset.pk,
                            "analysis-max_tokens": 256})
    analysis = Analysis.objects.get(candidate=versions[1])
    assert response.status_code == 302 and response["Location"] == f"/admin/workers/job/{analysis.job_id}/change/"
    assert analysis.reference == versions[0] and analysis.params["max_tokens"] == 256


def test_lora_form_refuses_an_evaluation_dataset_as_the_api_does_and_starts_nothing(client, engineer, versions,
                                                                                   evaluation_dataset):
    client.force_login(engineer)
    response = client.post(f"/admin/registry/modelversion/{versions[0].pk}/lora/",
                           {"lora-dataset": evaluation_dataset.pk, "lora-r": 8, "lora-alpha": 16, "lora-steps": 10,
                            "lora-learning_rate": 0.001})
    page = response.content.decode()
    assert response.status_code == 200
    assert "is for evaluation; LoRA updates need a training dataset" in page
    assert "Nothing was started" in page and 'name="lora-steps" value="10"' in page  # the form keeps its input
    assert not Job.objects.filter(kind="lora").exists()


def test_analysis_form_shows_the_token_range_error(client, engineer, versions, evaluation_dataset):
    client.force_login(engineer)
    response = client.post(f"/admin/registry/modelversion/{versions[1].pk}/analysis/",
                           {"analysis-dataset": evaluation_dataset.pk, "analysis-max_tokens": 3})
    assert response.status_code == 200 and "max_tokens" in response.content.decode()
    assert not Analysis.objects.exists()


def test_change_request_form_opens_a_request_and_refuses_a_bad_alias(client, engineer, versions):
    client.force_login(engineer)
    bad = client.post(f"/admin/registry/modelversion/{versions[0].pk}/change-request/",
                      {"cr-alias": "Prod!", "cr-justification": "first release"})
    assert bad.status_code == 200 and "This value does not match the required pattern" in bad.content.decode()
    response = client.post(f"/admin/registry/modelversion/{versions[0].pk}/change-request/",
                           {"cr-alias": "production", "cr-justification": "first release"})
    request = ChangeRequest.objects.get()
    assert response["Location"] == f"/admin/governance/changerequest/{request.pk}/change/"
    assert request.alias == "production" and request.requested_by == engineer and request.status == "pending"


def test_only_the_requester_sees_withdraw_and_withdrawing_is_recorded(client, engineer, approver, versions):
    opened = client_for(engineer).post("/api/v1/change-requests/", {
        "model": "credit-llm", "alias": "production", "version": 1, "justification": "release"}, format="json")
    request_id = opened.json()["id"]
    client.force_login(approver)
    assert 'id="withdraw"' not in client.get(f"/admin/governance/changerequest/{request_id}/change/").content.decode()
    client.force_login(engineer)
    assert 'id="withdraw"' in client.get(f"/admin/governance/changerequest/{request_id}/change/").content.decode()
    page = client.post(f"/admin/governance/changerequest/{request_id}/withdraw/", {"reason": "wrong version"},
                       follow=True).content.decode()
    assert f"You withdrew change request #{request_id}" in page and 'id="withdraw"' not in page
    request = ChangeRequest.objects.get(pk=request_id)
    assert request.status == "withdrawn" and request.status_reason == "wrong version"


def _deploy(engineer, approvers, number):
    request_id = client_for(engineer).post("/api/v1/change-requests/", {
        "model": "credit-llm", "alias": "production", "version": number, "justification": "release"},
        format="json").json()["id"]
    for user in approvers:
        client_for(user).post(f"/api/v1/change-requests/{request_id}/decisions", {"decision": "approve"},
                              format="json")
    return ChangeRequest.objects.get(pk=request_id)


def test_rollback_is_disabled_with_a_reason_when_nothing_was_deployed_before(client, engineer, approver,
                                                                             second_approver, ops_user, versions):
    assert _deploy(engineer, [approver, second_approver], 1).status == "deployed"
    client.force_login(ops_user)
    alias = Alias.objects.get(name="production")
    page = client.get(f"/admin/governance/alias/{alias.pk}/change/").content.decode()
    assert "There is nothing to roll back to" in page
    assert 'name="_rollback" value="Roll back" disabled' in page and "<form" not in page.split('id="rollback"')[1]


def test_rollback_offers_only_versions_deployed_there_and_refuses_others(client, engineer, approver, second_approver,
                                                                        ops_user, versions, evaluation_dataset):
    for number in (1, 2, 3):
        if number > 1:
            make_analysis(reference=versions[number - 2], candidate=versions[number - 1], dataset=evaluation_dataset,
                          actor=engineer)
        assert _deploy(engineer, [approver, second_approver], number).status == "deployed"
    alias = Alias.objects.get(name="production")
    client.force_login(ops_user)
    page = client.get(f"/admin/governance/alias/{alias.pk}/change/").content.decode()
    options = page.split('name="to_version"')[1].split("</select>")[0]
    assert '<option value="2" selected>v2 (upload) · previous deployment</option>' in options
    assert 'value="1"' in options and 'value="3"' not in options  # v3 is what it serves now
    refused = client.post(f"/admin/governance/alias/{alias.pk}/rollback/", {"reason": "latency", "to_version": 3},
                          follow=True).content.decode()
    assert "Select a valid choice" in refused
    done = client.post(f"/admin/governance/alias/{alias.pk}/rollback/", {"reason": "latency", "to_version": 1},
                       follow=True).content.decode()
    assert "rolled back from v3 to v1" in done
    alias.refresh_from_db()
    assert alias.version.number == 1


@pytest.fixture
def calibration_dataset(engineer):
    upload = SimpleUploadedFile("calibration.jsonl", jsonl([{"text": f"Credit memo number {index}."}
                                                             for index in range(8)]))
    return registry_services.register_dataset(name="memos", purpose="calibration", uploaded_file=upload,
                                              actor=engineer)


def test_calibrated_quantize_form_offers_calibration_data_and_starts_the_job_with_its_settings(
        client, engineer, versions, calibration_dataset, evaluation_dataset):
    client.force_login(engineer)
    form = _version_page(client, versions[0]).split('id="calibrated_quantize-form"')[1].split("</form>")[0]
    assert f"#{calibration_dataset.pk} memos (calibration" in form and "eval (evaluation" not in form
    response = client.post(f"/admin/registry/modelversion/{versions[0].pk}/calibrated_quantize/", {
        "calibrated-method": "awq", "calibrated-calibration_dataset": calibration_dataset.pk, "calibrated-bits": 4,
        "calibrated-group_size": 32, "calibrated-sym": "on", "calibrated-damping": 0.01,
        "calibrated-max_length": 64, "calibrated-calibration_samples": 8, "calibrated-skip_modules": "lm_head"})
    job = Job.objects.get(kind="quantize", source_version=versions[0])
    assert response.status_code == 302 and response["Location"] == f"/admin/workers/job/{job.pk}/change/"
    params = job.params
    assert (params["method"], params["bits"], params["group_size"], params["sym"], params["max_length"],
            params["calibration_samples"]) == ("awq", 4, 32, True, 64, 8)
    assert params["calibration_dataset"] == calibration_dataset.pk and params["skip_modules"] == ["lm_head"]


def test_calibrated_quantize_form_shows_the_services_refusal_next_to_its_field_and_starts_nothing(
        client, engineer, versions, evaluation_dataset):
    client.force_login(engineer)
    response = client.post(f"/admin/registry/modelversion/{versions[0].pk}/calibrated_quantize/", {
        "calibrated-method": "awq", "calibrated-calibration_dataset": evaluation_dataset.pk, "calibrated-bits": 8,
        "calibrated-group_size": 128, "calibrated-damping": 0.01, "calibrated-max_length": 512})
    page = response.content.decode()
    assert response.status_code == 200 and "Nothing was started" in page
    assert "bits must be one of 4 for awq" in page
    assert not Job.objects.filter(kind="quantize").exists()
