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

    def run(*args, env_overrides: dict | None = None) -> subprocess.CompletedProcess:
        run_env = {**env, **(env_overrides or {})}
        run_env = {key: value for key, value in run_env.items() if value is not None}
        return subprocess.run([sys.executable, "-m", "llmreg", *map(str, args)], env=run_env, capture_output=True,
                              text=True, timeout=300, cwd=CLIENT_DIR)

    run.token = token

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
    # Not a terminal (a CI log): plain lines, no bars: each file as it completes, the overall bytes by steps
    # naming the files in flight, then the total.
    count = len(_files(sharded_model_dir))
    for name in _files(sharded_model_dir):
        assert f"/{count}] uploaded {name} (" in pushed.stderr
    assert "in flight: " in pushed.stderr and " 100% " in pushed.stderr
    assert "\r" not in pushed.stderr
    assert pushed.stderr.rstrip().splitlines()[-1].startswith("uploaded ")

    pulled = llmreg("pull", model, "1", tmp_path / "pulled")
    assert pulled.returncode == 0, pulled.stderr
    assert f"[{count}/{count}] downloaded " in pulled.stderr
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
    other = sorted(sharded_model_dir.glob("*.safetensors"))[1]
    stale = bytearray(other.read_bytes())
    stale[-1] ^= 0xFF  # same path and size, other bytes: an older export of the same shard
    assert api.put(f"/api/v1/models/{model}/versions/1/files/{other.name}", data=bytes(stale),
                   content_type="application/octet-stream").status_code == 201

    resumed = llmreg("push", sharded_model_dir, "--model", model, "--version", 1, "--parallel", 3)
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.stdout.strip() == "1"
    assert f"skipped (already uploaded with the same SHA-256) {shard.name}" in resumed.stderr
    assert f"uploaded {other.name}" in resumed.stderr and f"skipped (already uploaded with the same SHA-256) " \
        f"{other.name}" not in resumed.stderr
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

    listed = llmreg("jobs", "--model", model, "--status", "failed")
    assert listed.returncode == 0, listed.stderr
    assert [line.split("\t")[:3] for line in listed.stdout.splitlines()] == [[job_id, "lora", "failed"]]


def test_a_corrupt_download_is_refused_and_not_left_in_the_directory(llmreg, e2e_users, unique, sharded_model_dir,
                                                                    tmp_path):
    from registry.models import VersionFile

    model = f"client-{unique}"
    api = client_for(e2e_users["engineer"])
    assert api.post("/api/v1/models/", {"name": model}, format="json").status_code == 201
    assert api.post(f"/api/v1/models/{model}/versions/", {}, format="json").status_code == 201
    shard = sorted(sharded_model_dir.glob("*.safetensors"))[0]
    assert api.put(f"/api/v1/models/{model}/versions/1/files/{shard.name}", data=shard.read_bytes(),
                   content_type="application/octet-stream").status_code == 201
    # The bytes in storage no longer match what the registry recorded (bit rot, a tampered object). A draft,
    # because the database refuses any change to a sealed version's files.
    VersionFile.objects.filter(version__model__name=model, path=shard.name).update(sha256="0" * 64)

    pulled = llmreg("pull", model, "1", tmp_path / "pulled")
    assert pulled.returncode == 1
    assert f"error: {shard.name}: downloaded bytes have SHA-256" in pulled.stderr and "corrupt" in pulled.stderr
    assert not (tmp_path / "pulled" / shard.name).exists()
    assert not list((tmp_path / "pulled").glob("*.partial"))


def _registry_client(web_server: str, token: str):
    sys.path.insert(0, str(CLIENT_DIR))
    from llmreg.api import Registry, RegistryError

    return Registry(web_server, token), RegistryError


@pytest.mark.parametrize("change", ["appended", "truncated"])
def test_a_file_changed_on_disk_while_it_uploads_is_reported_not_accepted(llmreg, web_server, e2e_users, unique,
                                                                          tmp_path, change):
    """Each file is read once, hashed as it streams out; a file rewritten meanwhile must not pass for the file."""
    api = client_for(e2e_users["engineer"])
    model = f"client-{unique}"
    assert api.post("/api/v1/models/", {"name": model}, format="json").status_code == 201
    assert api.post(f"/api/v1/models/{model}/versions/", {}, format="json").status_code == 201
    path = tmp_path / "weights.bin"
    path.write_bytes(os.urandom(3 * 1024 * 1024 + 17))
    registry, RegistryError = _registry_client(web_server, llmreg.token)

    def rewrite_after_first_chunk(count, done=[]):
        if not done:
            done.append(count)
            with open(path, "ab" if change == "appended" else "r+b") as handle:
                handle.write(b"more") if change == "appended" else handle.truncate(1024)

    with pytest.raises(RegistryError) as raised:
        registry.upload_file(model, 1, "weights.bin", path, on_bytes=rewrite_after_first_chunk)
    if change == "appended":
        assert "changed on disk while it was uploading" in str(raised.value)
    else:
        assert "got shorter while it was uploading" in str(raised.value)
        # The body ended early: the registry stored nothing.
        assert api.get(f"/api/v1/models/{model}/versions/1/").json()["files"] == []


def test_token_and_url_from_a_config_file_that_only_its_owner_can_read(llmreg, unique, tmp_path):
    config = tmp_path / "llmreg.conf"
    env = {"LLMREG_TOKEN": None, "LLMREG_CONFIG": str(config)}
    config.write_text(f"[llmreg]\ntoken = {llmreg.token}\n")
    config.chmod(0o600)
    listed = llmreg("models", env_overrides=env)
    assert listed.returncode == 0, listed.stderr

    config.chmod(0o644)
    refused = llmreg("models", env_overrides=env)
    assert refused.returncode == 2 and "others can read it" in refused.stderr

    missing = llmreg("models", env_overrides={"LLMREG_TOKEN": None, "LLMREG_CONFIG": str(tmp_path / "none")})
    assert missing.returncode == 1 and ("error: 401" in missing.stderr or "error: 403" in missing.stderr)
