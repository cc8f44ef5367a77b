"""Distillation parts without Django: stratified subsets, the checks on sizes and labels, the best candidate, and
the teacher's labels against a plain-torch argmax."""
from collections import Counter

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from tests.workers.pipelines.test_evaluation import best, continuation_loglikelihood
from workers.pipelines.errors import PipelineInputError
from workers.pipelines.evaluation.distillation import (
    best_candidate,
    check_labels,
    check_sizes,
    check_stratifiable,
    parameter_count,
    stratified_subsets,
    teacher_labels,
    training_records,
)
from workers.pipelines.tiny_model import build_tiny_llama

LABELS = ["a"] * 60 + ["b"] * 30 + ["c"] * 8 + ["d"] * 2


def test_subsets_have_the_exact_size_keep_every_class_and_follow_the_class_shares():
    subsets = stratified_subsets(LABELS, [4, 10, 50, 100])
    for size, indices in subsets.items():
        assert len(indices) == size and len(set(indices)) == size
        assert set(LABELS[index] for index in indices) == {"a", "b", "c", "d"}
    counts = Counter(LABELS[index] for index in subsets[50])
    assert counts == {"a": 28, "b": 15, "c": 5, "d": 2}  # one each first, then the shares by largest remainder
    assert sorted(subsets[100]) == list(range(100))


def test_smaller_subsets_are_contained_in_larger_ones_and_the_draw_is_fixed():
    subsets = stratified_subsets(LABELS, [10, 50])
    assert set(subsets[10]) <= set(subsets[50])
    assert stratified_subsets(LABELS, [10, 50]) == subsets
    assert stratified_subsets(LABELS, [10], seed=7) != {10: subsets[10]}


def test_rare_classes_small_sizes_and_bad_sizes_are_refused():
    with pytest.raises(PipelineInputError, match=r"'d' \(1 record\) is too rare"):
        check_stratifiable(["a", "a", "d"], [2])
    with pytest.raises(PipelineInputError, match="Size 3 cannot keep one record of each of the 4 classes"):
        check_stratifiable(LABELS, [3, 10])
    with pytest.raises(PipelineInputError, match=r"Size 101 is larger than the training dataset \(100 records\)"):
        check_sizes([5, 101], 100)
    with pytest.raises(PipelineInputError, match="the same size twice"):
        check_sizes([5, 5], 100)
    with pytest.raises(PipelineInputError, match="at least 1"):
        check_sizes([0], 100)
    assert check_sizes([50, 10], 100) == [10, 50]


def test_training_labels_must_be_labels_of_the_evaluation_set():
    check_labels(["a", "b"], ["a", "b", "c"], label_field="label")
    with pytest.raises(PipelineInputError, match="Record 2 of the training dataset has the label 'z'"):
        check_labels(["a", "z"], ["a", "b"], label_field="label")
    with pytest.raises(PipelineInputError, match="Record 1 of the training dataset has no usable 'category'"):
        check_labels([""], ["a"], label_field="category")


def test_the_best_candidate_is_the_smallest_meeting_the_minimum():
    rows = [{"size": 10, "params": 5, "f1": 0.5, "f1_relative_to_teacher": 0.6},
            {"size": 20, "params": 9, "f1": 0.8, "f1_relative_to_teacher": 0.92},
            {"size": 20, "params": 5, "f1": 0.79, "f1_relative_to_teacher": 0.91},
            {"size": 40, "params": 5, "f1": 0.9, "f1_relative_to_teacher": 0.99}]
    assert best_candidate(rows, 0.9) == rows[2]
    assert best_candidate(rows, 0.5) == rows[0]
    assert best_candidate(rows, 1.5) is None


def test_training_records_continue_the_prompt_with_the_label():
    assert training_records(["Card stolen"], ["fraud"], classification_prompt="{text}\nLabel:") == [
        {"prompt": "Card stolen\nLabel:", "completion": " fraud"}]


def test_the_teacher_labels_each_text_with_its_most_likely_label(tmp_path):
    model_dir = build_tiny_llama(tmp_path / "teacher", train_steps=20)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    texts = ["The bank raised its", "The cat slept on the", "The fraud team blocked the", "We walked along the"]
    labels = ["card", "door", "interest", "warm"]
    expected = [labels[best([continuation_loglikelihood(model, tokenizer, text, " " + label) for label in labels])]
                for text in texts]
    assert teacher_labels(model_dir, texts, labels, classification_prompt="{text}", batch_size=2) == expected
    assert parameter_count(model_dir) == sum(parameter.numel() for parameter in model.state_dict().values())
