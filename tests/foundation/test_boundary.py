"""The boundary: every error from every URL in the contract's shape, and bad input refused with a clear 4xx that
names the field, before anything is looked up or written."""
import json
import re
import struct

import pytest
from django.db import OperationalError
from django.test import Client, override_settings

from foundation.models import AuditEvent
from registry.models import Dataset, ModelVersion, RegisteredModel, VersionFile
from tests.conftest import client_for

pytestmark = pytest.mark.django_db
BROWSER = {"HTTP_ACCEPT": "text/html,application/xhtml+xml"}


def _error(response, status):
    assert response.status_code == status, response.content[:500]
    assert response["Content-Type"].startswith("application/json")
    body = response.json()
    assert set(body) >= {"error", "detail"} and body["detail"]
    return body


def test_unmatched_urls_are_json_for_clients_and_a_plain_page_for_browsers(engineer_api):
    _error(engineer_api.get("/api/v1/no-such-thing/"), 404)
    _error(Client().get("/no-such-page"), 404)

    page = Client().get("/no-such-page", **BROWSER)
    assert page.status_code == 404 and page["Content-Type"].startswith("text/html")
    assert "Traceback" not in page.content.decode() and "urlpatterns" not in page.content.decode()


def test_a_method_a_view_does_not_allow_is_a_json_405(engineer_api, regulator):
    assert _error(engineer_api.delete("/api/v1/models/"), 405)["error"] == "method_not_allowed"
    portal = Client()
    portal.force_login(regulator)
    _error(portal.get("/portal/subscription"), 405)


@pytest.mark.parametrize("url", [
    "/api/v1/models/credit%00llm/",
    "/api/v1/models/credit-llm/versions/1/",
    "/api/v1/models/credit-llm/aliases/prod%00uction/rollback",
])
def test_a_nul_byte_in_the_path_is_a_400_naming_the_path(engineer_api, url):
    url = url.replace("credit-llm/versions/1/", "credit-llm%00/versions/1/")
    body = _error(engineer_api.get(url) if "rollback" not in url else engineer_api.post(url, {}, format="json"), 400)
    assert body["field"] == "path" and "U+0000" in body["detail"]


def test_a_control_character_in_a_filter_is_a_400_naming_the_filter(engineer_api):
    body = _error(engineer_api.get("/api/v1/change-requests/", {"model": "credit\x00llm"}), 400)
    assert body["field"] == "model"
    assert _error(engineer_api.get("/api/v1/audit-events/", {"action": "x\x85"}), 400)["field"] == "action"


@pytest.mark.parametrize("path", ["weights%7F.safetensors", "dir/na%C2%85me.json", "a%00b"])
def test_upload_paths_with_del_or_c1_or_nul_are_refused(engineer_api, path):
    engineer_api.post("/api/v1/models/", {"name": "credit-llm"}, format="json")
    engineer_api.post("/api/v1/models/credit-llm/versions/", {}, format="json")

    response = engineer_api.put(f"/api/v1/models/credit-llm/versions/1/files/{path}", data=b"{}",
                                content_type="application/octet-stream")

    assert _error(response, 400)["field"] == "path"
    assert not VersionFile.objects.exists()


def test_json_bodies_with_nul_bytes_are_a_400_naming_the_field_and_change_nothing(engineer_api):
    body = _error(engineer_api.post("/api/v1/models/", {"name": "credit-llm", "description": "a\x00b"},
                                    format="json"), 400)
    assert body["field"] == "description"
    nested = _error(engineer_api.post("/api/v1/models/", {"name": "x", "extra": {"k": ["ok", "bad\x00"]}},
                                      format="json"), 400)
    assert nested["field"] == "extra.k[1]"
    assert not RegisteredModel.objects.exists() and not AuditEvent.objects.exists()


def test_deeply_nested_json_is_a_400(engineer_api):
    deep = "[" * 1000 + "]" * 1000
    response = engineer_api.generic("POST", "/api/v1/models/", deep, content_type="application/json")
    assert "nests" in _error(response, 400)["detail"]


@override_settings(DATA_UPLOAD_MAX_MEMORY_SIZE=1024)
def test_an_oversized_json_body_is_a_413(engineer_api):
    response = engineer_api.post("/api/v1/models/", {"name": "credit-llm", "description": "x" * 5000},
                                 format="json")
    _error(response, 413)
    assert not RegisteredModel.objects.exists()


def test_too_many_form_fields_is_a_413_not_a_page_of_html():
    fields = "&".join(f"f{i}=1" for i in range(1200))
    response = Client().generic("POST", "/portal/login/", fields, content_type="application/x-www-form-urlencoded")
    _error(response, 413)


@pytest.mark.parametrize("limit", ["-1", "0", "1001", "ten", "1e9"])
def test_negative_absurd_or_non_numeric_limits_are_a_400(engineer_api, limit):
    assert _error(engineer_api.get("/api/v1/audit-events/", {"limit": limit}), 400)["field"] == "limit"


def test_a_cursor_the_api_never_gave_out_is_a_400(engineer_api):
    assert _error(engineer_api.get("/api/v1/models/", {"cursor": "forged"}), 400)["field"] == "cursor"


def test_a_lost_database_connection_is_a_retryable_503(engineer_api, monkeypatch):
    def lost(*args, **kwargs):
        raise OperationalError("terminating connection due to administrator command")

    monkeypatch.setattr("registry.selectors.models", lost)
    response = engineer_api.get("/api/v1/models/")
    assert _error(response, 503)["error"] == "unavailable" and response["Retry-After"]


@override_settings(DEBUG=False)
def test_a_crash_is_a_json_500_without_internals(engineer, monkeypatch):
    def crash(*args, **kwargs):
        raise RuntimeError("secret internal detail")

    monkeypatch.setattr("registry.selectors.models", crash)
    api = client_for(engineer)
    api.raise_request_exception = False
    response = api.get("/api/v1/models/")
    assert _error(response, 500)["error"] == "server_error"
    assert b"secret internal detail" not in response.content and b"Traceback" not in response.content


def _safetensors_with_tensor_name(name: str) -> bytes:
    header = json.dumps({name: {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}).encode()
    return struct.pack("<Q", len(header)) + header + b"\x00" * 4


def test_a_nul_byte_in_a_safetensors_tensor_name_is_a_400_at_seal(engineer_api):
    engineer_api.post("/api/v1/models/", {"name": "credit-llm"}, format="json")
    engineer_api.post("/api/v1/models/credit-llm/versions/", {}, format="json")
    for path, data in (("config.json", b'{"model_type": "llama"}'),
                       ("model.safetensors", _safetensors_with_tensor_name("layer\x00.weight"))):
        assert engineer_api.put(f"/api/v1/models/credit-llm/versions/1/files/{path}", data=data,
                                content_type="application/octet-stream").status_code == 201

    body = _error(engineer_api.post("/api/v1/models/credit-llm/versions/1/seal"), 400)

    assert body["field"] == "files" and "model.safetensors" in body["detail"] and "U+0000" in body["detail"]
    assert ModelVersion.objects.get().status == "draft"


def test_lists_are_arrays_paged_by_a_link_header(engineer_api):
    for index in range(5):
        engineer_api.post("/api/v1/models/", {"name": f"model-{index}"}, format="json")

    names, url, pages = [], "/api/v1/models/?limit=2", 0
    while url:
        response = engineer_api.get(url)
        assert response.status_code == 200 and isinstance(response.json(), list)
        assert len(response.json()) <= 2
        names += [row["name"] for row in response.json()]
        link = response.get("Link")
        url = link.split(";")[0].strip("<>") if link else None
        assert link is None or link.endswith('rel="next"')
        pages += 1

    assert names == [f"model-{index}" for index in range(5)] and pages == 3


def test_the_api_docs_load_swagger_ui_from_the_projects_own_static_files(engineer):
    browser = Client()
    browser.force_login(engineer)
    page = browser.get("/api/docs/").content.decode()

    scripts = re.findall(r'src="([^"]+\.js)"', page)
    assert scripts and all(src.startswith("/static/drf_spectacular_sidecar/") for src in scripts)
    for src in scripts:
        assert browser.get(src).status_code == 200


def test_control_characters_in_multipart_fields_are_a_400_naming_the_field(engineer_api):
    from django.core.files.uploadedfile import SimpleUploadedFile

    response = engineer_api.post("/api/v1/datasets/", {
        "name": "calls\x01", "purpose": "training",
        "file": SimpleUploadedFile("calls.jsonl", b'{"text": "Net interest margin rose."}\n')}, format="multipart")

    assert _error(response, 400)["field"] == "name"
    assert not Dataset.objects.exists()
