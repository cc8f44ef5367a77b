"""Task evaluation through lm-eval: type detection, metrics checked against plain torch, compare(), bad inputs."""

from fractions import Fraction

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from workers.pipelines.errors import JobCancelled, PipelineInputError
from workers.pipelines.evaluation import harness
from workers.pipelines.evaluation.metrics import classification_report
from workers.pipelines.evaluation import (
    CLASSIFICATION,
    GENERATION,
    MULTIPLE_CHOICE,
    EvaluationSpec,
    compare,
    detect_task_type,
    evaluate_model,
    exact_match,
    normalize_answer,
    token_f1,
    validate_evaluation_spec,
)
from workers.pipelines.tiny_model import build_tiny_llama

# The label is the word that follows the text in (or in the style of) the tiny model's training sentences; a
# briefly trained model gets some right and some wrong, so every cell of the hand computation matters.
CLASSIFICATION_RECORDS = [
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
MULTIPLE_CHOICE_RECORDS = [
    {"prompt": "The bank raised its", "choices": ["interest rate", "cat", "window sill"], "answer": 0},
    {"prompt": "The cat slept on the", "choices": ["bond market", "warm window sill", "loan"], "answer": 1},
    {"prompt": "The board approved a", "choices": ["train", "river", "dividend of forty cents"], "answer": 2},
    {"prompt": "The train to the city leaves every", "choices": ["hour", "dividend", "collateral"], "answer": 0},
    {"prompt": "The clearing house requires members to post", "choices": ["bread", "collateral"], "answer": 1},
    {"prompt": "She read the letter", "choices": ["twice before she answered it", "market"], "answer": 0},
]
GENERATION_RECORDS = [
    {"prompt": "The bank raised its", "answer": "interest rate by a quarter of a percentage point."},
    {"prompt": "The cat slept on the", "answer": "warm window sill all afternoon."},
    {"prompt": "The board approved a", "answer": "dividend"},
]
# Short prompts: the label is scored right after the text, where the training sentences continue.
SPEC = EvaluationSpec(batch_size=4, classification_prompt="{text}", max_new_tokens=12, bootstrap_iters=200)


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory):
    return build_tiny_llama(tmp_path_factory.mktemp("evaluation") / "model", train_steps=20)


@pytest.fixture(scope="session")
def adapter_dir(model_dir, tmp_path_factory):
    """A LoRA adapter with random (not zero) B matrices, so it changes the model's scores."""
    base = AutoModelForCausalLM.from_pretrained(model_dir)
    config = LoraConfig(r=4, lora_alpha=16, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    torch.manual_seed(1)
    path = tmp_path_factory.mktemp("evaluation") / "adapter"
    get_peft_model(base, config).save_pretrained(str(path))
    return path


@pytest.fixture(scope="session")
def tokenizer(model_dir):
    return AutoTokenizer.from_pretrained(model_dir)


@pytest.fixture(scope="session")
def model(model_dir):
    return AutoModelForCausalLM.from_pretrained(model_dir).eval()


def continuation_loglikelihood(model, tokenizer, context: str, continuation: str) -> float:
    """Sum of log P(continuation tokens | context), tokenized as lm-eval does: the whole string, split after
    the context's own tokens (the tokenizer adds BOS)."""
    context_ids = tokenizer(context)["input_ids"]
    whole_ids = tokenizer(context + continuation)["input_ids"]
    with torch.no_grad():
        logits = model(torch.tensor([whole_ids])).logits[0].double()
    log_probs = logits.log_softmax(-1)
    return sum(
        log_probs[position - 1, whole_ids[position]].item() for position in range(len(context_ids), len(whole_ids))
    )


def best(scores: list[float]) -> int:
    return max(range(len(scores)), key=lambda index: (scores[index], -index))


def hand_macro_f1(gold: list[int], predicted: list[int], n_labels: int) -> Fraction:
    f1s = []
    for label in range(n_labels):
        tp = sum(g == label and p == label for g, p in zip(gold, predicted))
        predicted_count = sum(p == label for p in predicted)
        true_count = sum(g == label for g in gold)
        precision = Fraction(tp, predicted_count) if predicted_count else Fraction(0)
        recall = Fraction(tp, true_count)
        f1s.append(2 * precision * recall / (precision + recall) if precision + recall else Fraction(0))
    return sum(f1s) / n_labels


# --- task types ------------------------------------------------------------------------------------------------


def test_each_record_shape_is_detected():
    assert detect_task_type(MULTIPLE_CHOICE_RECORDS) == MULTIPLE_CHOICE
    assert detect_task_type(CLASSIFICATION_RECORDS) == CLASSIFICATION
    assert detect_task_type(GENERATION_RECORDS) == GENERATION


def test_extra_keys_do_not_change_the_type():
    records = [{"id": 7, **record} for record in GENERATION_RECORDS]
    assert detect_task_type(records) == GENERATION


def test_a_record_of_another_type_is_named_by_its_1_based_number():
    records = CLASSIFICATION_RECORDS[:2] + [GENERATION_RECORDS[0]] + CLASSIFICATION_RECORDS[2:]
    with pytest.raises(PipelineInputError, match=r"Record 3 is a generation record but record 1 is a classification"):
        detect_task_type(records)


def test_a_record_fitting_no_type_is_named_by_its_1_based_number():
    records = GENERATION_RECORDS + [{"question": "Who?", "reply": "Me"}]
    with pytest.raises(PipelineInputError, match=r"Record 4 fits no task type \(its keys: question, reply\)"):
        detect_task_type(records)


@pytest.mark.parametrize(
    "bad_record, message",
    [
        ({"prompt": "Q", "choices": ["a", "b"], "answer": 2}, r"Record 2 needs \"answer\": the index \(0 to 1\)"),
        ({"prompt": "Q", "choices": ["a", "b"], "answer": True}, r"Record 2 needs \"answer\""),
        ({"prompt": "Q", "choices": ["only one"], "answer": 0}, r"Record 2 needs \"choices\""),
        ({"prompt": "Q", "choices": ["a", "a"], "answer": 0}, r"Record 2 has the same text twice"),
        ({"prompt": " ", "choices": ["a", "b"], "answer": 0}, r"Record 2 needs \"prompt\""),
    ],
)
def test_bad_multiple_choice_fields_are_named(bad_record, message):
    with pytest.raises(PipelineInputError, match=message):
        detect_task_type([MULTIPLE_CHOICE_RECORDS[0], bad_record])


def test_numeric_labels_and_a_single_label_are_refused():
    with pytest.raises(PipelineInputError, match=r"Record 1 needs \"label\": a non-empty string"):
        detect_task_type([{"text": "good", "label": 1}, {"text": "bad", "label": 0}])
    with pytest.raises(PipelineInputError, match="at least two different labels"):
        detect_task_type([{"text": "good", "label": "yes"}, {"text": "bad", "label": "yes"}])


def test_empty_datasets_non_objects_and_ambiguous_records_are_refused():
    with pytest.raises(PipelineInputError, match="has no records"):
        detect_task_type([])
    with pytest.raises(PipelineInputError, match="Record 2 is a JSON list, not an object"):
        detect_task_type([GENERATION_RECORDS[0], ["prompt", "answer"]])
    with pytest.raises(PipelineInputError, match="Record 1 has both text/label and prompt/answer"):
        detect_task_type([{"text": "t", "label": "l", "prompt": "p", "answer": "a"}])


# --- metrics against plain torch ---------------------------------------------------------------------------------


def test_classification_accuracy_and_macro_f1_equal_a_hand_computation(model_dir, model, tokenizer):
    labels = sorted({record["label"] for record in CLASSIFICATION_RECORDS})
    gold = [labels.index(record["label"]) for record in CLASSIFICATION_RECORDS]
    predicted = [
        best([continuation_loglikelihood(model, tokenizer, record["text"], " " + label) for label in labels])
        for record in CLASSIFICATION_RECORDS
    ]
    assert len(set(predicted)) > 1 and predicted != gold, "the set must hold right and wrong predictions"

    result = evaluate_model(model_dir, CLASSIFICATION_RECORDS, SPEC)

    correct = sum(g == p for g, p in zip(gold, predicted))
    assert result["metrics"]["accuracy"]["value"] == correct / len(gold)
    assert result["metrics"]["macro_f1"]["value"] == pytest.approx(float(hand_macro_f1(gold, predicted, 4)), abs=1e-12)
    assert result["confusion"]["labels"] == labels
    assert result["confusion"]["matrix"] == [
        [sum(g == row and p == column for g, p in zip(gold, predicted)) for column in range(4)] for row in range(4)
    ]
    for index, label in enumerate(labels):
        true_positives = sum(g == index and p == index for g, p in zip(gold, predicted))
        assert result["per_class"][label]["support"] == gold.count(index)
        assert result["per_class"][label]["recall"]["value"] == pytest.approx(true_positives / gold.count(index))
    accuracy = correct / len(gold)
    expected_stderr = (accuracy * (1 - accuracy) / (len(gold) - 1)) ** 0.5  # lm-eval's sample stderr of the mean
    assert result["metrics"]["accuracy"]["stderr"] == pytest.approx(expected_stderr)
    assert result["metrics"]["macro_f1"]["stderr"] > 0
    assert result["task_type"] == CLASSIFICATION and result["samples"] == len(CLASSIFICATION_RECORDS)
    assert result["harness"]["name"] == "lm-eval" and result["harness"]["version"]


def test_multiple_choice_acc_and_acc_norm_equal_plain_torch(model_dir, model, tokenizer):
    scores = [
        [continuation_loglikelihood(model, tokenizer, r["prompt"], " " + choice) for choice in r["choices"]]
        for r in MULTIPLE_CHOICE_RECORDS
    ]
    acc = [best(s) == r["answer"] for s, r in zip(scores, MULTIPLE_CHOICE_RECORDS)]
    acc_norm = [
        best([score / len(choice) for score, choice in zip(s, r["choices"])]) == r["answer"]
        for s, r in zip(scores, MULTIPLE_CHOICE_RECORDS)
    ]

    result = evaluate_model(model_dir, MULTIPLE_CHOICE_RECORDS, SPEC)

    assert result["metrics"]["acc"]["value"] == sum(acc) / len(acc)
    assert result["metrics"]["acc_norm"]["value"] == sum(acc_norm) / len(acc_norm)
    assert set(result) == {"task_type", "metrics", "samples", "seconds", "harness"}


def test_generation_scores_equal_greedy_decoding_in_plain_torch(model_dir, model, tokenizer):
    exact, f1 = [], []
    for record in GENERATION_RECORDS:
        input_ids = torch.tensor([tokenizer(record["prompt"])["input_ids"]])
        with torch.no_grad():
            output = model.generate(input_ids, max_new_tokens=SPEC.max_new_tokens, do_sample=False)
        text = tokenizer.decode(output[0, input_ids.shape[1] :], skip_special_tokens=True).split("\n")[0]
        exact.append(exact_match(text, record["answer"]))
        f1.append(token_f1(text, record["answer"]))

    result = evaluate_model(model_dir, GENERATION_RECORDS, EvaluationSpec(batch_size=1, max_new_tokens=12))

    assert result["metrics"]["exact_match"]["value"] == pytest.approx(sum(exact) / len(exact))
    assert result["metrics"]["token_f1"]["value"] == pytest.approx(sum(f1) / len(f1))
    assert 0 < result["metrics"]["token_f1"]["value"] < 1


def test_an_adapter_is_evaluated_on_top_of_its_base(model_dir, adapter_dir, tokenizer):
    base = AutoModelForCausalLM.from_pretrained(model_dir)
    adapted = PeftModel.from_pretrained(base, str(adapter_dir)).eval()
    acc = [
        best([continuation_loglikelihood(adapted, tokenizer, r["prompt"], " " + c) for c in r["choices"]])
        == r["answer"]
        for r in MULTIPLE_CHOICE_RECORDS
    ]

    result = evaluate_model(model_dir, MULTIPLE_CHOICE_RECORDS, SPEC, adapter_dir=adapter_dir)

    assert result["metrics"]["acc"]["value"] == sum(acc) / len(acc)


def test_limit_evaluates_the_first_records_and_progress_reaches_100(model_dir):
    progress = []
    result = evaluate_model(
        model_dir, MULTIPLE_CHOICE_RECORDS, EvaluationSpec(limit=2), report=lambda p, m: progress.append(p)
    )
    assert result["samples"] == 2
    assert progress == sorted(progress) and progress[0] == 0 and progress[-1] == 100


def test_progress_is_reported_between_model_batches_and_a_cancel_stops_there(model_dir, monkeypatch):
    monkeypatch.setattr(harness, "REPORT_INTERVAL_S", 0.0)  # report after every batch
    messages = []

    def cancel_at_first_batch(percent, message):
        messages.append((percent, message))
        if message.startswith("Scored"):
            raise JobCancelled()

    with pytest.raises(JobCancelled):
        evaluate_model(model_dir, MULTIPLE_CHOICE_RECORDS, SPEC, report=cancel_at_first_batch)
    total = sum(len(record["choices"]) for record in MULTIPLE_CHOICE_RECORDS)
    percent, message = messages[-1]
    assert message.startswith("Scored ") and not message.startswith(f"Scored {total} ")  # stopped mid-phase
    assert 10 <= percent < 90


def test_classification_report_on_a_hand_example_with_a_never_predicted_label():
    # gold:      a a a b b c      predicted: a a b b b b   -> c never predicted, a never confused
    report = classification_report([0, 0, 0, 1, 1, 2], [0, 0, 1, 1, 1, 1], ["a", "b", "c"], bootstrap_iters=500)
    assert report["confusion"]["matrix"] == [[2, 1, 0], [0, 2, 0], [0, 1, 0]]
    assert report["per_class"]["a"]["precision"]["value"] == 1.0
    assert report["per_class"]["a"]["recall"]["value"] == pytest.approx(2 / 3)
    assert report["per_class"]["b"]["precision"]["value"] == pytest.approx(2 / 4)
    assert report["per_class"]["c"]["precision"] == {"value": None, "stderr": None}  # 0 / 0
    assert report["per_class"]["c"]["f1"]["value"] == 0.0 and report["per_class"]["c"]["support"] == 1
    # F1: a = 2*2/(2+3) = 0.8, b = 2*2/(4+2) = 2/3, c = 0
    assert report["macro_f1"]["value"] == pytest.approx((0.8 + 2 / 3 + 0.0) / 3)
    again = classification_report([0, 0, 0, 1, 1, 2], [0, 0, 1, 1, 1, 1], ["a", "b", "c"], bootstrap_iters=500)
    assert again["macro_f1"]["stderr"] == report["macro_f1"]["stderr"] > 0  # fixed seed


# --- generation metric functions on hand examples -------------------------------------------------------------


def test_exact_match_ignores_case_punctuation_articles_and_spacing():
    assert normalize_answer("  The Interest-Rate,  rose! ") == "interestrate rose"
    assert exact_match("The interest rate.", "interest rate") == 1.0
    assert exact_match("interest rates", "interest rate") == 0.0


def test_token_f1_on_hand_examples():
    # prediction tokens: interest rate rose; reference: interest rate fell sharply -> 2 common
    # precision 2/3, recall 2/4, F1 = 2 * (2/3) * (1/2) / (2/3 + 1/2) = 4/7
    assert token_f1("The interest rate rose", "interest rate fell sharply") == pytest.approx(4 / 7)
    assert token_f1("rate rate", "rate") == pytest.approx(2 * 0.5 * 1 / 1.5)  # repeated tokens count once each
    assert token_f1("nothing shared", "interest rate") == 0.0
    assert token_f1("the", "a") == 1.0  # both normalise to no tokens
    assert token_f1("", "rate") == 0.0


# --- compare ---------------------------------------------------------------------------------------------------


def result_with(task_type, metrics, **extra):
    return {"task_type": task_type, "metrics": metrics, "samples": 100, **extra}


def test_compare_gives_accuracy_deltas_in_points_and_f1_relative():
    labels = {"confusion": {"labels": ["no", "yes"], "matrix": [[1, 0], [0, 1]]}}
    reference = result_with(
        CLASSIFICATION,
        {"accuracy": {"value": 0.80, "stderr": 0.03}, "macro_f1": {"value": 0.50, "stderr": 0.04}},
        **labels,
    )
    candidate = result_with(
        CLASSIFICATION,
        {"accuracy": {"value": 0.75, "stderr": 0.04}, "macro_f1": {"value": 0.40, "stderr": 0.02}},
        **labels,
    )

    deltas = compare(reference, candidate)

    assert deltas["accuracy"]["delta"] == pytest.approx(-5.0)
    assert deltas["accuracy"]["stderr"] == pytest.approx(5.0)  # 100 * sqrt(0.03^2 + 0.04^2)
    assert deltas["macro_f1"]["delta"] == pytest.approx(-10.0)
    assert deltas["macro_f1"]["f1_relative"] == pytest.approx(0.8)
    # delta method: 0.8 * sqrt((0.02 / 0.4)^2 + (0.04 / 0.5)^2)
    assert deltas["macro_f1"]["f1_relative_stderr"] == pytest.approx(0.8 * (0.05**2 + 0.08**2) ** 0.5)


def test_compare_of_a_result_with_itself_is_zero_and_f1_relative_one():
    result = result_with(
        GENERATION, {"exact_match": {"value": 0.5, "stderr": 0.1}, "token_f1": {"value": 0.6, "stderr": 0.1}}
    )
    deltas = compare(result, result)
    assert deltas["exact_match"]["delta"] == 0.0 and deltas["token_f1"]["f1_relative"] == 1.0


def test_compare_with_a_zero_reference_f1_has_no_ratio():
    reference = result_with(GENERATION, {"token_f1": {"value": 0.0, "stderr": 0.0}})
    candidate = result_with(GENERATION, {"token_f1": {"value": 0.3, "stderr": 0.1}})
    assert compare(reference, candidate)["token_f1"]["f1_relative"] is None


def test_compare_refuses_results_of_different_tasks():
    generation = result_with(GENERATION, {"token_f1": {"value": 0.5, "stderr": 0.1}})
    multiple_choice = result_with(MULTIPLE_CHOICE, {"acc": {"value": 0.5, "stderr": 0.1}})
    with pytest.raises(PipelineInputError, match="compare results of the same dataset"):
        compare(generation, multiple_choice)
    with pytest.raises(PipelineInputError, match="100 records and the candidate on 50"):
        compare(generation, {**generation, "samples": 50})
    with pytest.raises(PipelineInputError, match="not an evaluate_model result"):
        compare(generation, {"metrics": {}})


# --- settings and inputs ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"limit": 0}, "limit must be"),
        ({"limit": True}, "limit must be"),
        ({"batch_size": 0}, "batch_size must be"),
        ({"batch_size": 1000}, "batch_size must be"),
        ({"max_new_tokens": 0}, "max_new_tokens must be"),
        ({"bootstrap_iters": 10}, "bootstrap_iters must be"),
        ({"classification_prompt": "Label:"}, "classification_prompt must be text containing"),
        ({"classification_prompt": "{text} {other}"}, "classification_prompt must be text containing"),
    ],
)
def test_settings_out_of_range_are_refused(changes, message):
    with pytest.raises(PipelineInputError, match=message):
        validate_evaluation_spec(EvaluationSpec(**changes))


def test_default_settings_are_valid():
    validate_evaluation_spec(EvaluationSpec())


def test_a_directory_without_a_model_is_refused_before_anything_runs(tmp_path):
    with pytest.raises(PipelineInputError, match="config.json is missing"):
        evaluate_model(tmp_path, GENERATION_RECORDS, SPEC)


def test_a_bad_dataset_is_refused_before_the_model_loads(tmp_path):
    # tmp_path holds no model: the dataset error must come first.
    with pytest.raises(PipelineInputError, match="Record 2 fits no task type"):
        evaluate_model(tmp_path, [GENERATION_RECORDS[0], {"x": 1}], SPEC)
