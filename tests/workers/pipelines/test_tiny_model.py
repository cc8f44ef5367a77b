"""The tiny Llama the tests and demos build themselves instead of downloading one."""

import hashlib

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from workers.pipelines.tiny_model import SAMPLE_TEXTS, build_tiny_llama, main


@pytest.fixture(scope="module")
def untrained_dir(tmp_path_factory):
    return build_tiny_llama(tmp_path_factory.mktemp("tiny") / "model")


def sha256(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def mean_top_probability(model_dir):
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    batch = tokenizer(SAMPLE_TEXTS[:16], return_tensors="pt", padding=True)
    with torch.no_grad():
        probabilities = model(**batch).logits.softmax(-1)
    return probabilities.max(-1).values[batch["attention_mask"].bool()].mean().item()


def test_build_writes_a_version_directory_transformers_loads(untrained_dir):
    names = {path.name for path in untrained_dir.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= names
    assert not any(name.endswith((".bin", ".pt")) for name in names)

    model = AutoModelForCausalLM.from_pretrained(untrained_dir)
    tokenizer = AutoTokenizer.from_pretrained(untrained_dir)
    assert model.config.model_type == "llama"
    assert len(tokenizer) == model.config.vocab_size == 512
    for size in (model.config.hidden_size, model.config.intermediate_size, model.config.vocab_size):
        assert size % 32 == 0


def test_tokenizer_round_trips_english_finance_and_unicode_text(untrained_dir):
    tokenizer = AutoTokenizer.from_pretrained(untrained_dir)
    for text in [*SAMPLE_TEXTS[:5], "Net margin: 3.25% (EUR 1,250,000) — naïve forecast ✓"]:
        ids = tokenizer(text)["input_ids"]
        assert tokenizer.decode(ids, skip_special_tokens=True) == text


def test_tokenizer_starts_sequences_with_bos_and_pads_with_pad(untrained_dir):
    tokenizer = AutoTokenizer.from_pretrained(untrained_dir)
    batch = tokenizer(["The bank", "The bank raised its rate"], padding=True)
    assert batch["input_ids"][0][0] == tokenizer.bos_token_id
    assert batch["input_ids"][0][-1] == tokenizer.pad_token_id
    assert len({tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id, tokenizer.unk_token_id}) == 4


def test_tokenizer_learned_merges_from_the_corpus(untrained_dir):
    tokenizer = AutoTokenizer.from_pretrained(untrained_dir)
    text = "The bank raised its interest rate."
    assert len(tokenizer(text, add_special_tokens=False)["input_ids"]) < len(text.encode()) / 2


def test_same_seed_builds_identical_weights_and_another_seed_does_not(untrained_dir, tmp_path):
    again = build_tiny_llama(tmp_path / "again")
    other = build_tiny_llama(tmp_path / "other", seed=1)
    assert sha256(again / "model.safetensors") == sha256(untrained_dir / "model.safetensors")
    assert sha256(again / "tokenizer.json") == sha256(untrained_dir / "tokenizer.json")
    assert sha256(other / "model.safetensors") != sha256(untrained_dir / "model.safetensors")


def test_build_leaves_the_callers_random_state_alone(tmp_path):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    build_tiny_llama(tmp_path / "model")
    assert torch.equal(torch.rand(3), expected)


def test_training_makes_predictions_peaked(untrained_dir, tmp_path):
    trained = build_tiny_llama(tmp_path / "trained", train_steps=40)
    assert mean_top_probability(untrained_dir) < 0.05
    assert mean_top_probability(trained) > 0.3


def test_dimensions_not_a_multiple_of_32_are_refused(tmp_path):
    with pytest.raises(ValueError, match="hidden_size=48"):
        build_tiny_llama(tmp_path / "model", hidden_size=48)
    assert not (tmp_path / "model").exists()


def test_sample_texts_are_dozens_of_distinct_sentences():
    assert len(SAMPLE_TEXTS) >= 36
    assert len(set(SAMPLE_TEXTS)) == len(SAMPLE_TEXTS)
    assert all(text.strip() == text and text.endswith(".") for text in SAMPLE_TEXTS)


def test_command_line_builds_into_the_given_directory(tmp_path, capsys):
    main([str(tmp_path / "cli"), "--train-steps", "0"])
    assert (tmp_path / "cli" / "model.safetensors").is_file()
    assert str(tmp_path / "cli") in capsys.readouterr().out
