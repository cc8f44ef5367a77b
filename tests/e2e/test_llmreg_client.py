"""The `llmreg` client end to end: a subprocess talking HTTP to a real gunicorn (and a real worker for jobs)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
from rest_framework.authtoken.models import Token
from transformers import AutoModelForCausalLM

from tests.conftest import client_for, jsonl
from workers.pipelines.tiny_model import SAMPLE_TEXTS

pytestmark = pytest.mark.e2e
CLIENT_DIR = Path(__file__).resolve().parents[2] / "client"


@pytest.fixture
def llmreg(web_server, e2e_users):
    """Run `python -m llmreg ARGS` as the engineer, the way a user's shell would."""
    token = Token.objects.get_or_create(user=e2e_users["engineer"])[0].key
    env = {**os.environ, "PYTHONPATH": str(CLIENT_DIR), "LLMREG_URL": web_server, "LLMREG_TOKEN": token}

    def run(*args) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "llmreg", *map(str, args)], env=env, capture_output=True,
                              text=True, timeout=300, cwd=CLIENT_DIR)

    return run


@pytest.fixture
def sharded_model_dir(tiny_model_dir, tmp_path):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    directory = tmp_path / "sharded"
    model.save_pretrained(directory, max_shard_size="100KB")
    for tokenizer_file in tiny_model_dir.glob("tokenizer*"):
        (directory / tokenizer_file.name).write_bytes(tokenizer_file.read_bytes())
    assert len(list(directory.glob("*.safetensors"))) >= 3
    return directory


def _files(directory: Path) -> dict[str, bytes]:
    return {p.relative_to(directory).as_posix(): p.read_bytes() for p in directory.rglob("*") if p.is_file()}


def test_push_then_pull_by_version_returns_the_same_bytes(llmreg, unique, sharded_model_dir, tmp_path):
    model = f"client-{unique}"
    pushed = llmreg("push", sharded_model_dir, "--model", model, "--description", "sharded tiny llama")
    assert pushed.returncode == 0, pushed.stderr
    assert pushed.stdout.strip() == "1"

    pulled = llmreg("pull", model, "1", tmp_path / "pulled")
    assert pulled.returncode == 0, pulled.stderr
    assert _files(tmp_path / "pulled") == _files(sharded_model_dir)
    AutoModelForCausalLM.from_pretrained(tmp_path / "pulled")

    again = llmreg("push", sharded_model_dir, "--model", model)
    assert again.returncode == 0 and again.stdout.strip() == "2"


def test_a_cut_short_push_resumes_into_its_draft_skipping_what_arrived(llmreg, e2e_users, unique, sharded_model_dir,
                                                                       tmp_path):
    model = f"resume-{unique}"
    api = client_for(e2e_users["engineer"])
    assert api.post("/api/v1/models/", {"name": model}, format="json").status_code == 201
    assert api.post(f"/api/v1/models/{model}/versions/", {}, format="json").json()["number"] == 1
    shard = sorted(sharded_model_dir.glob("*.safetensors"))[0]
    assert api.put(f"/api/v1/models/{model}/versions/1/files/{shard.name}", data=shard.read_bytes(),
                   content_type="application/octet-stream").status_code == 201  # what arrived before the cut

    resumed = llmreg("push", sharded_model_dir, "--model", model, "--version", 1, "--parallel", 3)
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.stdout.strip() == "1"
    assert f"skipped (already uploaded with the same SHA-256) {shard.name}" in resumed.stderr
    assert "100%" in resumed.stderr
    pulled = llmreg("pull", model, "1", tmp_path / "pulled")
    assert pulled.returncode == 0, pulled.stderr
    assert _files(tmp_path / "pulled") == _files(sharded_model_dir)

    sealed = llmreg("push", sharded_model_dir, "--model", model, "--version", 1)
    assert sealed.returncode == 1 and "only a draft takes more files" in sealed.stderr


def test_pull_of_an_unknown_alias_exits_non_zero_with_the_servers_detail(llmreg, unique, sharded_model_dir,
                                                                         tmp_path):
    model = f"client-{unique}"
    assert llmreg("push", sharded_model_dir, "--model", model).returncode == 0
    pulled = llmreg("pull", model, "production", tmp_path / "pulled")
    assert pulled.returncode == 1
    assert pulled.stderr.startswith("error: 404") and "production" in pulled.stderr
    assert not (tmp_path / "pulled").exists()


def test_push_of_a_pickle_checkpoint_prints_the_refusal(llmreg, unique, tiny_model_dir, tmp_path):
    directory = tmp_path / "pickled"
    directory.mkdir()
    (directory / "config.json").write_bytes((tiny_model_dir / "config.json").read_bytes())
    (directory / "pytorch_model.bin").write_bytes(b"not really a pickle")
    pushed = llmreg("push", directory, "--model", f"client-{unique}")
    assert pushed.returncode == 1
    assert "error: 422" in pushed.stderr and "pytorch_model.bin is a pickle-based weights file" in pushed.stderr


def test_models_lists_every_page(llmreg, e2e_users, unique, sharded_model_dir):
    api = client_for(e2e_users["engineer"])
    names = [f"client-{unique}-{n}" for n in range(3)]
    for name in names:
        assert api.post("/api/v1/models/", {"name": name}, format="json").status_code == 201
    first_page = api.get("/api/v1/models/?limit=1")
    assert len(first_page.json()) == 1 and 'rel="next"' in first_page["Link"]
    listed = llmreg("models", "--limit", "1")
    assert listed.returncode == 0, listed.stderr
    assert set(names) <= set(listed.stdout.split())


def test_failed_lora_job_followed_by_the_client_exits_non_zero(llmreg, worker, e2e_users, unique,
                                                                sharded_model_dir):
    from django.core.files.uploadedfile import SimpleUploadedFile

    model = f"client-{unique}"
    assert llmreg("push", sharded_model_dir, "--model", model).returncode == 0
    api = client_for(e2e_users["engineer"])
    dataset = api.post("/api/v1/datasets/", {
        "name": f"train-{unique}", "purpose": "training",
        "file": SimpleUploadedFile("train.jsonl", jsonl([{"text": t} for t in SAMPLE_TEXTS])),
    }, format="multipart")
    assert dataset.status_code == 201, dataset.content

    started = llmreg("lora", model, "1", "--dataset", dataset.json()["id"], "--steps", "2",
                     "--target-module", "no_such_proj", "--follow")
    assert started.returncode == 1
    job_id = started.stdout.split()[0]
    assert "failed" in started.stderr and "no_such_proj" in started.stderr

    shown = llmreg("job", job_id, "--follow")
    assert shown.returncode == 1 and "no_such_proj" in shown.stderr
