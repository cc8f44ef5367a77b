"""Seal of sharded checkpoints: model.safetensors.index.json checked against the shards' headers."""
import hashlib
import json

import pytest
import requests
from transformers import AutoModelForCausalLM

from foundation.errors import Unprocessable
from registry.models import ModelVersion
from tests.conftest import register_sealed_version, upload_directory

pytestmark = pytest.mark.django_db

INDEX = "model.safetensors.index.json"


@pytest.fixture(scope="session")
def sharded_model_dir(tiny_model_dir, tmp_path_factory):
    """The tiny Llama re-saved by save_pretrained in shards small enough that there are at least three."""
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    directory = tmp_path_factory.mktemp("sharded-llama")
    model.save_pretrained(directory, max_shard_size="100KB")
    for tokenizer_file in tiny_model_dir.glob("tokenizer*"):
        (directory / tokenizer_file.name).write_bytes(tokenizer_file.read_bytes())
    assert len(list(directory.glob("*.safetensors"))) >= 3
    return directory


@pytest.fixture
def sharded_copy(sharded_model_dir, tmp_path):
    destination = tmp_path / "sharded"
    destination.mkdir()
    for path in sharded_model_dir.iterdir():
        (destination / path.name).write_bytes(path.read_bytes())
    return destination


def _index(directory):
    return json.loads((directory / INDEX).read_text())


def _write_index(directory, index):
    (directory / INDEX).write_text(json.dumps(index))


def _seal(api, directory):
    assert api.post("/api/v1/models/", {"name": "sharded-llm"}, format="json").status_code == 201
    number = api.post("/api/v1/models/sharded-llm/versions/", {}, format="json").json()["number"]
    upload_directory(api, "sharded-llm", number, directory)
    return api.post(f"/api/v1/models/sharded-llm/versions/{number}/seal")


def _assert_refused(response, *expected):
    assert response.status_code == 422, response.content
    detail = response.json()["detail"]
    for fragment in expected:
        assert fragment in detail, detail
    assert ModelVersion.objects.get().status == "draft"


def test_sharded_version_seals_downloads_and_loads(engineer_api, sharded_model_dir, tmp_path):
    sealed = register_sealed_version(engineer_api, "sharded-llm", sharded_model_dir)
    assert sealed["status"] == "ready"
    for item in sealed["files"]:
        redirect = engineer_api.get(f"/api/v1/models/sharded-llm/versions/1/files/{item['path']}")
        body = requests.get(redirect["Location"], timeout=30)
        assert hashlib.sha256(body.content).hexdigest() == item["sha256"]
        (tmp_path / item["path"]).write_bytes(body.content)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    original = AutoModelForCausalLM.from_pretrained(sharded_model_dir)
    for name, tensor in original.state_dict().items():
        assert loaded.state_dict()[name].equal(tensor), name


def test_index_naming_the_wrong_shard_for_a_tensor_is_refused(engineer_api, sharded_copy):
    index = _index(sharded_copy)
    tensor, shard = next(iter(index["weight_map"].items()))
    other = next(s for s in sorted(set(index["weight_map"].values())) if s != shard)
    index["weight_map"][tensor] = other
    _write_index(sharded_copy, index)
    _assert_refused(_seal(engineer_api, sharded_copy), INDEX, repr(tensor), other, f"it is in {shard}")


def test_missing_shard_is_refused(engineer_api, sharded_copy):
    missing = sorted(set(_index(sharded_copy)["weight_map"].values()))[-1]
    (sharded_copy / missing).unlink()
    _assert_refused(_seal(engineer_api, sharded_copy), missing, "was not uploaded")


def test_unreferenced_shard_is_refused(engineer_api, sharded_copy):
    index = _index(sharded_copy)
    dropped = sorted(set(index["weight_map"].values()))[-1]
    index["weight_map"] = {name: shard for name, shard in index["weight_map"].items() if shard != dropped}
    _write_index(sharded_copy, index)
    _assert_refused(_seal(engineer_api, sharded_copy), dropped, "is not referenced by", INDEX)


def test_wrong_total_size_is_refused(engineer_api, sharded_copy):
    index = _index(sharded_copy)
    declared = index["metadata"]["total_size"]
    index["metadata"]["total_size"] = declared + 4
    _write_index(sharded_copy, index)
    _assert_refused(_seal(engineer_api, sharded_copy), INDEX, f"total_size {declared + 4}", f"{declared} bytes")


def test_tensor_stored_in_two_shards_is_refused(engineer_api, sharded_copy):
    from safetensors.torch import load_file, save_file

    index = _index(sharded_copy)
    shards = sorted(set(index["weight_map"].values()))
    first, second = shards[0], shards[1]
    duplicated = next(name for name, shard in index["weight_map"].items() if shard == first)
    second_tensors = load_file(sharded_copy / second)
    second_tensors[duplicated] = load_file(sharded_copy / first)[duplicated]
    save_file(second_tensors, sharded_copy / second, metadata={"format": "pt"})
    _assert_refused(_seal(engineer_api, sharded_copy), repr(duplicated), first, second, "exactly one shard")


def test_index_without_weight_map_is_refused(engineer_api, sharded_copy):
    _write_index(sharded_copy, {"metadata": {"total_size": 1}})
    _assert_refused(_seal(engineer_api, sharded_copy), INDEX, "weight_map")


def test_sharded_lora_adapter_index_is_checked_the_same_way():
    import torch
    from safetensors.torch import save

    from registry.services import check_version_contents

    shards = {
        "adapter_model-00001-of-00002.safetensors": save({"a.lora_A.weight": torch.zeros(2, 4)}),
        "adapter_model-00002-of-00002.safetensors": save({"a.lora_B.weight": torch.zeros(4, 2)}),
    }
    index = {"metadata": {"total_size": 64},
             "weight_map": {"a.lora_A.weight": "adapter_model-00001-of-00002.safetensors",
                            "a.lora_B.weight": "adapter_model-00001-of-00002.safetensors"}}
    contents = {**shards, "adapter_config.json": b"{}",
                "adapter_model.safetensors.index.json": json.dumps(index).encode()}

    def check():
        return check_version_contents(
            kind=ModelVersion.Kind.LORA, files=[(path, len(data)) for path, data in contents.items()],
            read_range=lambda path, offset, length: contents[path][offset:offset + length],
            read_all=lambda path: contents[path])

    with pytest.raises(Unprocessable, match="a.lora_B.weight.*it is in adapter_model-00002-of-00002"):
        check()
    index["weight_map"]["a.lora_B.weight"] = "adapter_model-00002-of-00002.safetensors"
    contents["adapter_model.safetensors.index.json"] = json.dumps(index).encode()
    assert set(check()) == set(shards)
