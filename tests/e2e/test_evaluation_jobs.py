"""Task evaluations through the API with a real worker process: accuracy and macro-F1 of a tiny model on a tiny
labelled set equal a hand computation from the model's own predictions, and the task gates of a change request
come from the evaluation the worker ran."""
from fractions import Fraction

import pytest
import torch
from django.core.files.uploadedfile import SimpleUploadedFile
from transformers import AutoModelForCausalLM, AutoTokenizer

from tests.conftest import client_for, jsonl, register_sealed_version
from tests.e2e.conftest import wait_for_job
from workers.pipelines.tiny_model import build_tiny_llama

# The label follows the text in (or in the style of) the tiny model's training sentences: a briefly trained model
# gets some right and some wrong, so every cell of the hand computation counts.
LABELLED = [
    {"text": "The bank raised its", "label": "interest"},
    {"text": "The fraud team blocked the", "label": "card"},
    {"text": "The cat slept on the", "label": "warm"},
    {"text": "The dog waited by the", "label": "door"},
    {"text": "The customer disputed a", "label": "card"},
    {"text": "The trading desk hedged its", "label": "interest"},
    {"text": "We walked along the", "label": "door"},
    {"text": "The library is open late on", "label": "warm"},
    {"text": "Savings accounts now pay a higher", "label": "interest"},
    {"text": "Please send the signed", "label": "card"},
]
QUESTIONS = [
    {"prompt": "The bank raised its", "choices": ["interest rate", "cat", "window sill"], "answer": 0},
    {"prompt": "The cat slept on the", "choices": ["bond market", "warm window sill", "loan"], "answer": 1},
    {"prompt": "The board approved a", "choices": ["train", "river", "dividend of forty cents"], "answer": 2},
    {"prompt": "The train to the city leaves every", "choices": ["hour", "dividend", "collateral"], "answer": 0},
]
# Scored right after the text, where the training sentences continue.
SETTINGS = {"classification_prompt": "{text}", "batch_size": 4}


def _dataset(api, name, records):
    response = api.post("/api/v1/datasets/", {"name": name, "purpose": "evaluation",
                                              "file": SimpleUploadedFile(f"{name}.jsonl", jsonl(records))},
                        format="multipart")
    assert response.status_code == 201, response.content
    return response.json()["id"]


def _loglikelihood(model, tokenizer, context: str, continuation: str) -> float:
    """log P(continuation | context), split after the context's own tokens as lm-eval splits it."""
    context_ids = tokenizer(context)["input_ids"]
    whole_ids = tokenizer(context + continuation)["input_ids"]
    with torch.no_grad():
        log_probs = model(torch.tensor([whole_ids])).logits[0].double().log_softmax(-1)
    return sum(log_probs[position - 1, whole_ids[position]].item()
               for position in range(len(context_ids), len(whole_ids)))


def _best(scores: list[float]) -> int:
    return max(range(len(scores)), key=lambda index: (scores[index], -index))


def hand_classification(model_dir, labels: list[str], prompt: str = "{text}") -> dict:
    """Accuracy and macro-F1 (exact fractions) from the model's own most likely label per record."""
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    gold = [labels.index(record["label"]) for record in LABELLED]
    predicted = [_best([_loglikelihood(model, tokenizer, prompt.format(text=record["text"]), " " + label)
                        for label in labels]) for record in LABELLED]
    f1s = []
    for label in range(len(labels)):
        tp = sum(g == label and p == label for g, p in zip(gold, predicted))
        predicted_count, true_count = predicted.count(label), gold.count(label)
        precision = Fraction(tp, predicted_count) if predicted_count else Fraction(0)
        recall = Fraction(tp, true_count)
        f1s.append(2 * precision * recall / (precision + recall) if precision + recall else Fraction(0))
    return {"accuracy": Fraction(sum(g == p for g, p in zip(gold, predicted)), len(gold)),
            "macro_f1": sum(f1s) / len(labels), "predicted": predicted, "gold": gold}


@pytest.fixture
def two_versions(e2e_users, unique, tiny_model_dir, tmp_path):
    """v1: briefly trained; v2: untrained (the same architecture): a real accuracy difference between them."""
    api = client_for(e2e_users["engineer"])
    model = f"evaluated-{unique}"
    trained = build_tiny_llama(tmp_path / "trained", seed=0, train_steps=20)
    register_sealed_version(api, model, trained)
    register_sealed_version(api, model, tiny_model_dir)
    return {"api": api, "model": model, "dirs": {1: trained, 2: tiny_model_dir}}


def test_a_classification_evaluation_equals_a_hand_computation_and_compares_with_the_reference(
        worker, two_versions, unique):
    api, model = two_versions["api"], two_versions["model"]
    dataset = _dataset(api, f"labelled-{unique}", LABELLED)
    started = api.post(f"/api/v1/models/{model}/versions/2/evaluations",
                       {"dataset": dataset, "reference": 1, **SETTINGS}, format="json")
    assert started.status_code == 202, started.content
    job = wait_for_job(api, started.json()["job"])
    assert job["status"] == "succeeded", job["error"]
    assert job["result"] == {"evaluation": started.json()["evaluation"]}
    evaluation = api.get(f"/api/v1/evaluations/{started.json()['evaluation']}").json()

    labels = sorted({record["label"] for record in LABELLED})
    candidate = hand_classification(two_versions["dirs"][2], labels)
    reference = hand_classification(two_versions["dirs"][1], labels)
    assert reference["predicted"] != reference["gold"] and len(set(reference["predicted"])) > 1

    assert evaluation["status"] == "succeeded" and evaluation["task_type"] == "classification"
    assert evaluation["samples"] == len(LABELLED) and evaluation["harness"]["name"] == "lm-eval"
    assert evaluation["metrics"]["accuracy"]["value"] == float(candidate["accuracy"])
    assert evaluation["metrics"]["macro_f1"]["value"] == pytest.approx(float(candidate["macro_f1"]), abs=1e-12)
    assert evaluation["reference_metrics"]["accuracy"]["value"] == float(reference["accuracy"])
    assert evaluation["reference_metrics"]["macro_f1"]["value"] == pytest.approx(float(reference["macro_f1"]),
                                                                                  abs=1e-12)
    assert all(metric["stderr"] is not None for metric in evaluation["metrics"].values())
    assert evaluation["deltas"]["accuracy"]["delta"] == pytest.approx(
        100 * float(candidate["accuracy"] - reference["accuracy"]))
    assert evaluation["confusion"]["labels"] == labels
    assert evaluation["confusion"]["matrix"] == [
        [sum(g == row and p == column for g, p in zip(candidate["gold"], candidate["predicted"]))
         for column in range(len(labels))] for row in range(len(labels))]
    assert {label: evaluation["per_class"][label]["support"] for label in labels} == {
        label: [record["label"] for record in LABELLED].count(label) for label in labels}


def test_a_multiple_choice_evaluation_of_one_version(worker, two_versions, unique):
    api, model = two_versions["api"], two_versions["model"]
    dataset = _dataset(api, f"questions-{unique}", QUESTIONS)
    started = api.post(f"/api/v1/models/{model}/versions/1/evaluations", {"dataset": dataset, "limit": 3},
                       format="json").json()
    assert wait_for_job(api, started["job"])["status"] == "succeeded"
    evaluation = api.get(f"/api/v1/evaluations/{started['evaluation']}").json()

    model_dir = two_versions["dirs"][1]
    hf_model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    right = [_best([_loglikelihood(hf_model, tokenizer, q["prompt"], " " + c) for c in q["choices"]]) == q["answer"]
             for q in QUESTIONS[:3]]
    assert evaluation["task_type"] == "multiple_choice" and evaluation["samples"] == 3
    assert evaluation["metrics"]["acc"]["value"] == sum(right) / 3
    assert set(evaluation["metrics"]) == {"acc", "acc_norm"}
    assert evaluation["reference"] is None and evaluation["deltas"] == {}


def test_a_change_request_is_gated_by_the_evaluation_the_worker_runs(worker, two_versions, e2e_users, unique):
    api, model = two_versions["api"], two_versions["model"]
    labelled = _dataset(api, f"gate-labelled-{unique}", LABELLED)
    texts = _dataset(api, f"gate-texts-{unique}", [{"text": record["text"]} for record in LABELLED])
    first = api.post("/api/v1/change-requests/", {"model": model, "alias": "staging", "version": 1,
                                                  "justification": "first"}, format="json").json()
    decided = client_for(e2e_users["approver"]).post(f"/api/v1/change-requests/{first['id']}/decisions",
                                                     {"decision": "approve"}, format="json")
    assert decided.json()["status"] == "deployed"

    opened = api.post("/api/v1/change-requests/", {"model": model, "alias": "staging", "version": 2,
                                                   "justification": "smaller", "dataset": texts,
                                                   "eval_dataset": labelled}, format="json")
    assert opened.status_code == 201, opened.content
    body = opened.json()
    assert body["status"] == "analysing" and body["evaluation"] is not None
    evaluation = api.get(f"/api/v1/evaluations/{body['evaluation']}").json()
    assert wait_for_job(api, evaluation["job"])["status"] == "succeeded"
    analysis = api.get(f"/api/v1/analyses/{body['analysis']}").json()
    assert wait_for_job(api, analysis["job"])["status"] == "succeeded"

    gated = api.get(f"/api/v1/change-requests/{body['id']}/").json()
    evaluation = api.get(f"/api/v1/evaluations/{body['evaluation']}").json()
    labels = sorted({record["label"] for record in LABELLED})
    default_prompt = "{text}\nLabel:"  # what a change request's evaluation scores labels after
    hand_drop = 100 * float(hand_classification(two_versions["dirs"][1], labels, default_prompt)["accuracy"]
                            - hand_classification(two_versions["dirs"][2], labels, default_prompt)["accuracy"])
    drop = next(gate for gate in gated["gates"] if gate["name"] == "accuracy_drop")
    assert drop["threshold"] == 2.0 and drop["value"] == pytest.approx(hand_drop)
    assert drop["value"] == pytest.approx(-evaluation["deltas"]["accuracy"]["delta"])
    assert drop["passed"] == (hand_drop <= 2.0)
    assert gated["status"] in ("pending", "blocked") and gated["policy"]["accuracy_drop_max"] == 2.0
    assert ("accuracy_drop" in gated["status_reason"]) == (hand_drop > 2.0)


def _download(api, model, number, directory):
    import requests

    directory.mkdir(parents=True)
    for item in api.get(f"/api/v1/models/{model}/versions/{number}/").json()["files"]:
        url = api.get(f"/api/v1/models/{model}/versions/{number}/files/{item['path']}")["Location"]
        (directory / item["path"]).write_bytes(requests.get(url, timeout=30).content)
    return directory


def test_quantized_versions_are_evaluated_as_loaded_and_lora_versions_as_base_plus_adapter(worker, two_versions,
                                                                                         unique, tmp_path):
    from peft import PeftModel

    api, model = two_versions["api"], two_versions["model"]
    quantize = api.post(f"/api/v1/models/{model}/versions/1/quantize", {"method": "nf4"}, format="json").json()
    assert wait_for_job(api, quantize["job"])["status"] == "succeeded"  # v3
    training = api.post("/api/v1/datasets/", {"name": f"train-{unique}", "purpose": "training", "file":
                        SimpleUploadedFile("t.jsonl", jsonl([{"text": q["prompt"] + " " + q["choices"][q["answer"]]}
                                                             for q in QUESTIONS]))}, format="multipart").json()["id"]
    lora = api.post(f"/api/v1/models/{model}/versions/1/lora-updates",
                    {"dataset": training, "r": 4, "steps": 3, "learning_rate": 0.05, "seed": 1}, format="json").json()
    assert wait_for_job(api, lora["job"])["status"] == "succeeded"  # v4
    questions = _dataset(api, f"loaded-{unique}", QUESTIONS)

    base_dir = two_versions["dirs"][1]
    loaded = {3: AutoModelForCausalLM.from_pretrained(_download(api, model, 3, tmp_path / "v3")),
              4: PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir),
                                           str(_download(api, model, 4, tmp_path / "v4")))}
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    for number, hf_model in loaded.items():
        started = api.post(f"/api/v1/models/{model}/versions/{number}/evaluations",
                           {"dataset": questions, "reference": 1}, format="json").json()
        job = wait_for_job(api, started["job"])
        assert job["status"] == "succeeded", job["error"]
        evaluation = api.get(f"/api/v1/evaluations/{started['evaluation']}").json()
        scores = [[_loglikelihood(hf_model.eval(), tokenizer, q["prompt"], " " + c) for c in q["choices"]]
                  for q in QUESTIONS]
        right = [_best(score) == q["answer"] for score, q in zip(scores, QUESTIONS)]
        assert evaluation["metrics"]["acc"]["value"] == sum(right) / len(QUESTIONS), number
        assert evaluation["deltas"]["acc"]["delta"] == pytest.approx(
            100 * (evaluation["metrics"]["acc"]["value"] - evaluation["reference_metrics"]["acc"]["value"]))
