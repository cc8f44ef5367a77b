"""Operations endpoints: health and the OpenAPI document."""
import pytest

pytestmark = pytest.mark.django_db


def test_health_reports_each_dependency(client):
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json()["checks"] == {"database": "ok", "broker": "ok", "object_storage": "ok"}


def test_openapi_schema_describes_the_contract(engineer_api):
    response = engineer_api.get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    assert response.status_code == 200
    paths = response.json()["paths"]
    for path in ("/api/v1/models/", "/api/v1/models/{name}/versions/{number}/seal",
                 "/api/v1/models/{name}/versions/{number}/quantize", "/api/v1/change-requests/",
                 "/api/v1/audit-events/verification", "/api/v1/jobs/{job_id}"):
        assert path in paths, path


def test_api_docs_page_renders(engineer, client):
    client.force_login(engineer)
    assert client.get("/api/docs/").status_code == 200
