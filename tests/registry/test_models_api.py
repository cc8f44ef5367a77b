"""Models and versions over the REST API: creation, numbering, upload, seal, download, lineage, roles."""
import hashlib
import json
import struct

import pytest
import requests
from transformers import AutoModelForCausalLM

from foundation.models import AuditEvent
from registry.models import ModelVersion, RegisteredModel, VersionFile
from tests.conftest import client_for, register_sealed_version

pytestmark = pytest.mark.django_db


def _new_version(api, name="credit-llm"):
    if api.get(f"/api/v1/models/{name}/").status_code == 404:
        api.post("/api/v1/models/", {"name": name}, format="json")
    return api.post(f"/api/v1/models/{name}/versions/", {}, format="json").json()["number"]


def _put(api, path, data, **headers):
    return api.put(f"/api/v1/models/credit-llm/versions/1/files/{path}", data=data,
                   content_type="application/octet-stream", **headers)


def test_engineer_registers_a_model(engineer_api):
    response = engineer_api.post("/api/v1/models/", {"name": "credit-llm", "description": "Credit memo drafting"},
                                 format="json")
    assert response.status_code == 201
    assert response.json()["name"] == "credit-llm"
    assert response.json()["description"] == "Credit memo drafting"
    assert engineer_api.get("/api/v1/models/credit-llm/").json()["created_by"] == "alice"
    assert [m["name"] for m in engineer_api.get("/api/v1/models/").json()] == ["credit-llm"]
    assert AuditEvent.objects.filter(action="model.created", model_name="credit-llm").count() == 1


def test_duplicate_model_name_is_a_conflict(engineer_api):
    engineer_api.post("/api/v1/models/", {"name": "credit-llm"}, format="json")
    response = engineer_api.post("/api/v1/models/", {"name": "credit-llm"}, format="json")
    assert response.status_code == 409
    assert "already exists" in response.json()["detail"]
    assert RegisteredModel.objects.count() == 1


@pytest.mark.parametrize("bad_name", ["Credit", "-credit", "credit llm", "a" * 101, "crédit", "", "../x"])
def test_invalid_model_name_is_refused_and_nothing_is_created(engineer_api, bad_name):
    response = engineer_api.post("/api/v1/models/", {"name": bad_name}, format="json")
    assert response.status_code == 400
    assert response.json()["detail"]
    assert RegisteredModel.objects.count() == 0


def test_version_numbers_count_up_per_model_and_start_as_draft(engineer_api):
    first = _new_version(engineer_api)
    second = _new_version(engineer_api)
    other = _new_version(engineer_api, "fraud-llm")
    assert (first, second, other) == (1, 2, 1)
    detail = engineer_api.get("/api/v1/models/credit-llm/versions/2/").json()
    assert detail["status"] == "draft" and detail["kind"] == "upload" and detail["files"] == []


def test_a_created_version_answers_as_it_reads_back_and_lists(engineer_api):
    _new_version(engineer_api)
    created = engineer_api.post("/api/v1/models/credit-llm/versions/", {"description": "retrained on Q3"},
                                format="json").json()
    assert created == engineer_api.get(f"/api/v1/models/credit-llm/versions/{created['number']}/").json()
    listed = engineer_api.get("/api/v1/models/credit-llm/versions/").json()
    assert [row["number"] for row in listed] == [1, 2]
    assert listed[1] == {key: created[key] for key in ("model", "number", "description", "status", "kind",
                                                       "manifest_sha256", "created_by", "created_at", "sealed_at")}


def test_upload_records_size_and_sha256(engineer_api):
    _new_version(engineer_api)
    data = b'{"architectures": ["LlamaForCausalLM"]}'
    response = _put(engineer_api, "config.json", data, HTTP_X_CONTENT_SHA256=hashlib.sha256(data).hexdigest())
    assert response.status_code == 201
    assert response.json() == {"path": "config.json", "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def test_upload_with_wrong_sha256_is_refused_and_leaves_no_file(engineer_api):
    _new_version(engineer_api)
    response = _put(engineer_api, "config.json", b"{}", HTTP_X_CONTENT_SHA256="0" * 64)
    assert response.status_code == 400
    assert "SHA-256" in response.json()["detail"]
    assert VersionFile.objects.count() == 0


@pytest.mark.parametrize("path", ["../escape.json", "a/../../b", "/etc/passwd", "dir\\file", "a//b", "./x",
                                  "%2e%2e/escape.json"])
def test_traversal_paths_are_refused(engineer_api, path):
    _new_version(engineer_api)
    response = _put(engineer_api, path, b"{}")
    assert response.status_code in (400, 404)
    assert VersionFile.objects.count() == 0


def test_sealing_a_real_model_makes_it_ready_and_immutable(engineer_api, tiny_model_dir):
    sealed = register_sealed_version(engineer_api, "credit-llm", tiny_model_dir)
    assert sealed["status"] == "ready"
    assert len(sealed["manifest_sha256"]) == 64
    assert {f["path"] for f in sealed["files"]} >= {"config.json", "model.safetensors"}
    again = engineer_api.put("/api/v1/models/credit-llm/versions/1/files/extra.json", data=b"{}",
                             content_type="application/octet-stream")
    assert again.status_code == 409
    assert engineer_api.post("/api/v1/models/credit-llm/versions/1/seal").status_code == 409


def test_sealed_version_is_immutable_in_the_database_too(engineer_api, tiny_model_dir):
    from django.db import IntegrityError, connection, transaction

    register_sealed_version(engineer_api, "credit-llm", tiny_model_dir)
    version = ModelVersion.objects.get()
    for statement in (f"UPDATE registry_modelversion SET description = 'x' WHERE id = {version.pk}",
                      f"DELETE FROM registry_versionfile WHERE version_id = {version.pk}",
                      f"UPDATE registry_versionfile SET sha256 = 'x' WHERE version_id = {version.pk}"):
        with pytest.raises(IntegrityError), transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(statement)


def test_seal_refuses_pickle_weights_without_opening_them(engineer_api):
    _new_version(engineer_api)
    _put(engineer_api, "config.json", b"{}")
    _put(engineer_api, "pytorch_model.bin", b"\x80\x04\x95 this would be a pickle")
    response = engineer_api.post("/api/v1/models/credit-llm/versions/1/seal")
    assert response.status_code == 422
    assert "pytorch_model.bin" in response.json()["detail"] and "safetensors" in response.json()["detail"]
    assert ModelVersion.objects.get().status == "draft"


def _safetensors(header: dict | bytes, data: bytes = b"", declared_length: int | None = None) -> bytes:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", declared_length if declared_length is not None else len(raw)) + raw + data


@pytest.mark.parametrize("content,expected", [
    (_safetensors({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, b"\0" * 8), "points at bytes"),
    (_safetensors(b"not json at all"), "not valid JSON"),
    (_safetensors({"w": {}}, declared_length=10**12), "header"),
    (_safetensors(b"{}", declared_length=5000), "truncated"),
    (b"abc", "too short"),
])
def test_seal_refuses_corrupt_safetensors(engineer_api, content, expected):
    _new_version(engineer_api)
    _put(engineer_api, "config.json", b"{}")
    _put(engineer_api, "model.safetensors", content)
    response = engineer_api.post("/api/v1/models/credit-llm/versions/1/seal")
    assert response.status_code == 422
    assert "model.safetensors" in response.json()["detail"] and expected in response.json()["detail"]
    assert ModelVersion.objects.get().status == "draft"


def test_seal_requires_config_json_that_parses(engineer_api, tiny_model_dir):
    _new_version(engineer_api)
    _put(engineer_api, "model.safetensors", (tiny_model_dir / "model.safetensors").read_bytes())
    assert "config.json" in engineer_api.post("/api/v1/models/credit-llm/versions/1/seal").json()["detail"]
    _put(engineer_api, "config.json", b"{not json")
    response = engineer_api.post("/api/v1/models/credit-llm/versions/1/seal")
    assert response.status_code == 422 and "config.json is not valid JSON" in response.json()["detail"]


def test_sealed_version_downloads_and_loads_with_from_pretrained(engineer_api, tiny_model_dir, tmp_path):
    sealed = register_sealed_version(engineer_api, "credit-llm", tiny_model_dir)
    for item in sealed["files"]:
        redirect = engineer_api.get(f"/api/v1/models/credit-llm/versions/1/files/{item['path']}")
        assert redirect.status_code == 302
        body = requests.get(redirect["Location"], timeout=30)
        assert body.status_code == 200
        assert hashlib.sha256(body.content).hexdigest() == item["sha256"]
        (tmp_path / item["path"]).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / item["path"]).write_bytes(body.content)
    model = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert model.config.hidden_size % 32 == 0


def test_lineage_of_an_upload_is_just_itself(engineer_api, tiny_model_dir):
    register_sealed_version(engineer_api, "credit-llm", tiny_model_dir)
    lineage = engineer_api.get("/api/v1/models/credit-llm/versions/1/lineage").json()
    assert lineage["edges"] == []
    assert [n["id"] for n in lineage["nodes"]] == ["version:credit-llm:1"]


def test_anonymous_requests_get_401(anonymous_api):
    assert anonymous_api.get("/api/v1/models/").status_code == 401
    assert anonymous_api.post("/api/v1/models/", {"name": "x"}, format="json").status_code == 401


@pytest.mark.parametrize("role_fixture", ["approver", "ops_user", "regulator"])
def test_only_engineers_register_models(request, role_fixture):
    api = client_for(request.getfixturevalue(role_fixture))
    assert api.post("/api/v1/models/", {"name": "credit-llm"}, format="json").status_code == 403
    assert api.get("/api/v1/models/").status_code == 200


def test_user_without_any_role_cannot_read(no_role_user):
    assert client_for(no_role_user).get("/api/v1/models/").status_code == 403


def test_tokens_carry_the_roles_of_the_moment(engineer, anonymous_api):
    api = client_for(engineer)
    assert api.post("/api/v1/models/", {"name": "credit-llm"}, format="json").status_code == 201
    engineer.groups.clear()  # a role taken away counts from the next request on
    assert api.post("/api/v1/models/", {"name": "fraud-llm"}, format="json").status_code == 403
    engineer.is_active = False
    engineer.save()
    inactive = api.get("/api/v1/models/")
    assert inactive.status_code == 401 and "inactive" in inactive.json()["detail"]
    anonymous_api.credentials(HTTP_AUTHORIZATION="Token " + "0" * 40)
    assert anonymous_api.get("/api/v1/models/").json()["detail"] == "Invalid token."


def test_missing_model_and_version_are_404_with_a_message(engineer_api):
    response = engineer_api.get("/api/v1/models/nope/")
    assert response.status_code == 404 and "nope" in response.json()["detail"]
    engineer_api.post("/api/v1/models/", {"name": "credit-llm"}, format="json")
    assert engineer_api.get("/api/v1/models/credit-llm/versions/7/").status_code == 404


def test_upload_cut_short_of_its_content_length_is_refused_and_leaves_nothing(engineer):
    import io

    from foundation.errors import InvalidInput
    from registry import services

    model = services.create_model(name="credit-llm", description="", actor=engineer)
    version = services.create_version(model=model, description="", actor=engineer)
    with pytest.raises(InvalidInput, match="ended after 10 of the 100 bytes"):
        services.upload_version_file(version=version, path="config.json", stream=io.BytesIO(b"x" * 10),
                                     content_length=100, expected_sha256=None, actor=engineer)
    assert not VersionFile.objects.exists()
