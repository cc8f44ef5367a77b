"""A distillation through the API with a real worker: two tiny students trained with LoRA on two stratified
subset sizes register four LoRA versions with lineage to their base and their subset, and the table states each
student's F1 relative to the teacher's."""
import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from registry.models import Dataset
from tests.conftest import client_for, jsonl, register_sealed_version
from tests.e2e.conftest import wait_for_job
from tests.e2e.test_evaluation_jobs import LABELLED
from workers.pipelines.tiny_model import build_tiny_llama
from workers.services import dataset_records

TRAINING = [{"text": f"{opening} {number}", "label": label}
            for label, opening in (("interest", "The bank raised its"), ("card", "The fraud team blocked the"),
                                   ("warm", "The cat slept on the"), ("door", "The dog waited by the"))
            for number in range(3)]


def _dataset(api, name, purpose, records):
    response = api.post("/api/v1/datasets/", {"name": name, "purpose": purpose,
                                              "file": SimpleUploadedFile(f"{name}.jsonl", jsonl(records))},
                        format="multipart")
    assert response.status_code == 201, response.content
    return response.json()["id"]


def test_two_students_and_two_sizes_register_four_lora_versions(worker, e2e_users, unique, tiny_model_dir,
                                                               tmp_path):
    api = client_for(e2e_users["engineer"])
    teacher, students = f"teacher-{unique}", [f"student-a-{unique}", f"student-b-{unique}"]
    register_sealed_version(api, teacher, build_tiny_llama(tmp_path / "teacher", seed=0, train_steps=20))
    register_sealed_version(api, students[0], tiny_model_dir)
    register_sealed_version(api, students[1], build_tiny_llama(tmp_path / "small", seed=1, hidden_size=32,
                                                               intermediate_size=64))
    training = _dataset(api, f"tickets-{unique}", "training", TRAINING)
    evaluation = _dataset(api, f"labelled-{unique}", "evaluation", LABELLED)

    started = api.post("/api/v1/distillations", {
        "teacher": {"model": teacher, "version": 1},
        "students": [{"model": name, "version": 1} for name in students],
        "dataset": training, "eval_dataset": evaluation, "sizes": [8, 4], "classification_prompt": "{text}",
        "lora": {"r": 2, "alpha": 4, "steps": 3, "batch_size": 2, "learning_rate": 0.01}, "f1_relative_min": 0.1,
    }, format="json")
    assert started.status_code == 202, started.content
    job = wait_for_job(api, started.json()["job"], timeout=900)
    assert job["status"] == "succeeded", job["error"]
    body = api.get(f"/api/v1/distillations/{started.json()['id']}").json()

    assert body["status"] == "succeeded" and body["params"]["sizes"] == [4, 8]
    teacher_f1 = body["teacher_result"]["f1"]
    assert 0 < teacher_f1 <= 1 and body["teacher_result"]["labelled_by"] == "dataset"
    assert len(body["rows"]) == 4
    assert {(row["student"]["model"], row["size"]) for row in body["rows"]} == {
        (name, size) for name in students for size in (4, 8)}
    subsets = {item["size"]: item["dataset"] for item in body["subsets"]}
    for size, dataset_id in subsets.items():
        subset = Dataset.objects.get(pk=dataset_id)
        assert subset.records == size and subset.purpose == "training"
        completions = {record["completion"].strip() for record in dataset_records(subset)}
        assert completions == {"interest", "card", "warm", "door"}  # every class kept
    for row in body["rows"]:
        assert row["f1_relative_to_teacher"] == pytest.approx(row["f1"] / teacher_f1)
        assert 0 <= row["accuracy"] <= 1 and row["latency_ms_per_sample"] > 0 and row["params"] > 0
        version = api.get(f"/api/v1/models/{row['student']['model']}/versions/{row['version']}/").json()
        assert version["kind"] == "lora" and version["status"] == "ready"
        assert {"model": row["student"]["model"], "number": 1, "relation": "adapted_from"} in version["parents"]
        assert any(parent.get("dataset") == subsets[row["size"]] and parent["relation"] == "trained_on"
                   for parent in version["parents"])
        assert version["lora"]["distillation"] == {"id": body["id"], "size": row["size"],
                                                   "teacher": {"model": teacher, "version": 1}}
    smaller = [row for row in body["rows"] if row["student"]["model"] == students[1]]
    assert smaller[0]["params"] < [row for row in body["rows"] if row["student"]["model"] == students[0]][0]["params"]
    meeting = [row for row in body["rows"] if row["f1_relative_to_teacher"] >= 0.1]
    if meeting:
        best = min(meeting, key=lambda row: (row["size"], row["params"], -row["f1"]))
        assert body["best"] == best
    else:
        assert body["best"] is None


def test_without_labels_the_teacher_labels_the_training_texts(worker, e2e_users, unique, tiny_model_dir, tmp_path):
    from collections import Counter

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tests.e2e.test_evaluation_jobs import _best, _loglikelihood

    api = client_for(e2e_users["engineer"])
    teacher_dir = build_tiny_llama(tmp_path / "teacher", seed=0, train_steps=20)
    teacher, student = f"labeller-{unique}", f"learner-{unique}"
    register_sealed_version(api, teacher, teacher_dir)
    register_sealed_version(api, student, tiny_model_dir)
    # Every text twice: whatever the teacher predicts, each predicted class has two records at least.
    texts = [record["text"] for record in LABELLED] * 2
    training = _dataset(api, f"texts-{unique}", "training", [{"text": text} for text in texts])
    evaluation = _dataset(api, f"labelled-{unique}", "evaluation", LABELLED)
    started = api.post("/api/v1/distillations", {
        "teacher": {"model": teacher, "version": 1}, "students": [{"model": student, "version": 1}],
        "dataset": training, "eval_dataset": evaluation, "sizes": [10, 20], "classification_prompt": "{text}",
        "lora": {"r": 2, "steps": 2, "batch_size": 4}}, format="json")
    assert started.status_code == 202, started.content
    job = wait_for_job(api, started.json()["job"], timeout=900)
    assert job["status"] == "succeeded", job["error"]
    body = api.get(f"/api/v1/distillations/{started.json()['id']}").json()

    model = AutoModelForCausalLM.from_pretrained(teacher_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(teacher_dir)
    labels = sorted({record["label"] for record in LABELLED})
    by_hand = [labels[_best([_loglikelihood(model, tokenizer, text, " " + label) for label in labels])]
               for text in texts]
    assert body["teacher_result"]["labelled_by"] == "teacher"
    assert body["teacher_result"]["label_counts"] == dict(sorted(Counter(by_hand).items()))
    whole = Dataset.objects.get(pk=next(item["dataset"] for item in body["subsets"] if item["size"] == 20))
    assert Counter(record["completion"].strip() for record in dataset_records(whole)) == Counter(by_hand)
    assert sorted(row["size"] for row in body["rows"]) == [10, 20]
