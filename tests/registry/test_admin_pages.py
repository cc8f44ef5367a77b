"""Admin pages: every role may look, only engineers may add, and a refused action shows its reason."""
import pytest

from registry.models import RegisteredModel

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
