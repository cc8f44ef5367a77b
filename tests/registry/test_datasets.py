"""Datasets: JSONL validated line by line, stored with their hash; a bad line stores nothing."""
import hashlib

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from foundation import storage
from registry.models import Dataset
from tests.conftest import client_for, jsonl

pytestmark = pytest.mark.django_db


def _post(api, content: bytes, purpose="evaluation", name="eval"):
    return api.post("/api/v1/datasets/", {"name": name, "purpose": purpose,
                                          "file": SimpleUploadedFile("data.jsonl", content)}, format="multipart")


def test_dataset_is_stored_with_hash_and_record_count(engineer_api):
    content = jsonl([{"text": "one"}, {"text": "two"}])
    response = _post(engineer_api, content)
    assert response.status_code == 201
    body = response.json()
    assert body["records"] == 2 and body["sha256"] == hashlib.sha256(content).hexdigest()
    assert body["purpose"] == "evaluation" and body["record_format"] == "text"
    assert storage.read_bytes(Dataset.objects.get().object_key) == content


@pytest.mark.parametrize("purpose,records,record_format", [
    ("training", [{"prompt": "Q", "completion": "A"}], "prompt_completion"),
    ("evaluation", [{"prompt": "Q", "choices": ["a", "b"], "answer": 1}], "multiple_choice"),
    ("evaluation", [{"prompt": "What is the CET1 floor?", "answer": "4.5%"}], "generation"),
    ("calibration", [{"text": "x"}], "text"),
])
def test_each_purpose_accepts_its_record_formats(engineer_api, purpose, records, record_format):
    assert _post(engineer_api, jsonl(records), purpose=purpose).json()["record_format"] == record_format


@pytest.mark.parametrize("content,purpose,line", [
    (b'{"text": "ok"}\n{"text": \n', "evaluation", "Line 2"),
    (b'{"text": "ok"}\n{"txt": "typo"}\n', "evaluation", "Line 2"),
    (b'{"prompt": "Q", "completion": "A"}\n', "calibration", "Line 1"),
    (b'{"prompt": "Q", "choices": ["a"], "answer": 0}\n', "evaluation", "Line 1"),
    (b'{"prompt": "Q", "choices": ["a", "b"], "answer": 5}\n', "evaluation", "Line 1"),
    (b'{"text": "a"}\n{"prompt": "Q", "completion": "A"}\n', "training", "Line 2"),
    (b'\xff\xfe\n', "evaluation", "Line 1"),
    (b'{"prompt": "Q", "answer": "A"}\n', "training", "Line 1"),
    (b'{"prompt": "Q", "answer": "  "}\n', "evaluation", "Line 1"),
])
def test_malformed_jsonl_is_422_naming_the_first_bad_line_and_nothing_is_stored(engineer_api, content, purpose,
                                                                                line):
    before = len(storage.list_keys("datasets/"))
    response = _post(engineer_api, content, purpose=purpose)
    assert response.status_code == 422
    assert response.json()["detail"].startswith(line)
    assert Dataset.objects.count() == 0
    assert len(storage.list_keys("datasets/")) == before


def test_empty_dataset_and_unknown_purpose_are_refused(engineer_api):
    assert _post(engineer_api, b"\n\n").status_code == 422
    assert _post(engineer_api, jsonl([{"text": "x"}]), purpose="fun").status_code == 400
    assert Dataset.objects.count() == 0


def test_regulators_read_datasets_but_cannot_add(regulator, engineer_api):
    _post(engineer_api, jsonl([{"text": "x"}]))
    api = client_for(regulator)
    assert len(api.get("/api/v1/datasets/").json()) == 1
    assert _post(api, jsonl([{"text": "x"}])).status_code == 403
