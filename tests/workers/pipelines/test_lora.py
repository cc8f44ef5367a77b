"""LoRA updates on the project's tiny Llama: learning, reproducibility, QLoRA on CPU, and every refused input."""

import json
import random

import pytest
import torch
from safetensors.torch import load_file

from workers.pipelines.errors import JobCancelled, PipelineInputError
from workers.pipelines.lora import (
    IGNORE_INDEX,
    LoraSpec,
    encode_record,
    merge_lora,
    records_sha256,
    split_records,
    train_lora,
    validate_lora_spec,
)
from workers.pipelines.tiny_model import build_tiny_llama

BANKS = ["Acme", "Globex", "Initech", "Umbrella", "Hooli", "Vandelay", "Stark", "Wayne"]
# Big enough steps for the tiny model to learn the answer template within a few seconds on two CPU cores.
FAST = {"learning_rate": 1e-2, "batch_size": 4}


def finance_qa_records(count=60, seed=0):
    """Repeated question/answer templates: the fixed answer wording is learnable, held-out records included."""
    rng = random.Random(seed)
    return [
        {
            "prompt": f"Q: What is the credit rating of {BANKS[index % len(BANKS)]} bank {index}?\nA:",
            "completion": f" The credit rating of {BANKS[index % len(BANKS)]} is A{rng.randint(1, 3)}.",
        }
        for index in range(count)
    ]


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    return build_tiny_llama(tmp_path_factory.mktemp("base"), seed=0)


@pytest.fixture(scope="module")
def trained(base_dir, tmp_path_factory):
    """One 40-step run that several tests inspect."""
    out_dir = tmp_path_factory.mktemp("trained") / "adapter"
    progress = []
    metadata = train_lora(
        base_dir,
        finance_qa_records(),
        out_dir,
        LoraSpec(steps=40, **FAST),
        report=lambda percent, message: progress.append((percent, message)),
        base_reference="credit-model/1",
    )
    return out_dir, metadata, progress


@pytest.fixture(scope="module")
def nf4_base_dir(base_dir, tmp_path_factory):
    from workers.pipelines.quantize import QuantizeSpec, quantize_version

    out_dir = tmp_path_factory.mktemp("nf4") / "version"
    quantize_version(base_dir, out_dir, QuantizeSpec(method="nf4"))
    return out_dir


def base_logits(model_dir, text):
    from workers.pipelines.loading import load_causal_lm

    model, tokenizer = load_causal_lm(model_dir, device="cpu")
    with torch.no_grad():
        return model(**tokenizer(text, return_tensors="pt")).logits


# --- learning and output ---------------------------------------------------------------------------------------


def test_eval_loss_falls_on_a_learnable_finance_dataset(trained):
    _, metadata, _ = trained

    assert metadata["eval_loss_after"] < metadata["eval_loss_before"] - 0.5
    assert metadata["curve"][-1]["eval_loss"] == pytest.approx(metadata["eval_loss_after"], abs=1e-5)
    assert [point["step"] for point in metadata["curve"]] == list(range(1, 41))
    assert sum("eval_loss" in point for point in metadata["curve"]) == 5
    assert metadata["curve"][-1]["loss"] < metadata["curve"][0]["loss"]


def test_metadata_describes_the_run(trained):
    _, metadata, progress = trained

    assert metadata["train_records"] + metadata["eval_records"] == 60
    assert metadata["eval_records"] == 12
    assert metadata["data_sha256"] == records_sha256(finance_qa_records())
    assert metadata["settings"]["target_modules"] == ["q_proj", "k_proj", "v_proj", "o_proj"]
    assert metadata["settings"]["qlora"] is False
    assert metadata["base_quantization"] is None
    assert metadata["steps_per_second"] > 0
    assert metadata["device"] == "cpu"
    assert set(metadata["library_versions"]) >= {"torch", "transformers", "peft", "bitsandbytes"}
    assert metadata["warnings"] == []
    assert progress[-1] == (100, "Done")
    assert [percent for percent, _ in progress] == sorted(percent for percent, _ in progress)


def test_output_is_safetensors_adapter_with_tokenizer_and_no_scratch_path(trained):
    out_dir, metadata, _ = trained

    names = sorted(path.name for path in out_dir.iterdir())
    assert names == metadata["files"]
    assert {"adapter_model.safetensors", "adapter_config.json", "tokenizer.json"} <= set(names)
    assert not any(name.endswith((".bin", ".pt")) or name == "README.md" for name in names)
    assert json.loads((out_dir / "adapter_config.json").read_text())["base_model_name_or_path"] == "credit-model/1"


def test_adapter_loads_on_its_base_and_changes_outputs(base_dir, trained):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out_dir, _, _ = trained
    tokenizer = AutoTokenizer.from_pretrained(out_dir)
    inputs = tokenizer("Q: What is the credit rating of Acme bank 7?\nA:", return_tensors="pt")
    base = AutoModelForCausalLM.from_pretrained(base_dir).eval()
    with torch.no_grad():
        before = base(**inputs).logits
        adapted = PeftModel.from_pretrained(base, out_dir).eval()
        after = adapted(**inputs).logits

    assert (after - before).abs().max() > 0.1
    answer_id = tokenizer(" The", add_special_tokens=False)["input_ids"][0]
    assert after[0, -1].softmax(-1)[answer_id] > before[0, -1].softmax(-1)[answer_id]


def test_merged_weights_reproduce_base_plus_adapter(base_dir, trained, tmp_path):
    from workers.pipelines.loading import load_causal_lm

    out_dir, _, _ = trained
    text = "The bank raised its interest rate."
    adapted, tokenizer = load_causal_lm(base_dir, adapter_dir=out_dir, device="cpu")
    with torch.no_grad():
        expected = adapted(**tokenizer(text, return_tensors="pt")).logits

    result = merge_lora(base_dir, out_dir, tmp_path / "merged")

    assert "model.safetensors" in result["files"]
    assert torch.allclose(base_logits(tmp_path / "merged", text), expected, atol=1e-4)


def test_same_seed_gives_identical_adapter_and_another_seed_does_not(base_dir, tmp_path):
    records = finance_qa_records(count=20)
    for name, seed in [("first", 3), ("second", 3), ("other", 4)]:
        train_lora(base_dir, records, tmp_path / name, LoraSpec(steps=4, seed=seed, **FAST))

    first = load_file(tmp_path / "first" / "adapter_model.safetensors")
    second = load_file(tmp_path / "second" / "adapter_model.safetensors")
    other = load_file(tmp_path / "other" / "adapter_model.safetensors")
    assert first.keys() == second.keys()
    assert all(torch.equal(first[name], second[name]) for name in first)
    assert (tmp_path / "first" / "adapter_model.safetensors").read_bytes() == (
        tmp_path / "second" / "adapter_model.safetensors"
    ).read_bytes()
    assert not all(torch.equal(first[name], other[name]) for name in first)


def test_qlora_on_an_nf4_base_trains_on_cpu(nf4_base_dir, tmp_path):
    from workers.pipelines.loading import load_causal_lm

    metadata = train_lora(nf4_base_dir, finance_qa_records(count=30), tmp_path / "adapter", LoraSpec(steps=8, **FAST))

    assert metadata["settings"]["qlora"] is True
    assert metadata["base_quantization"]["method"] == "bitsandbytes-nf4"
    assert metadata["eval_loss_after"] < metadata["eval_loss_before"]
    model, _ = load_causal_lm(nf4_base_dir, adapter_dir=tmp_path / "adapter", device="cpu")
    assert type(model).__name__ == "PeftModelForCausalLM"


def test_merging_into_a_quantized_base_is_refused(nf4_base_dir, trained, tmp_path):
    out_dir, _, _ = trained

    with pytest.raises(PipelineInputError, match="quantized"):
        merge_lora(nf4_base_dir, out_dir, tmp_path / "merged")
    assert not (tmp_path / "merged").exists()


# --- dataset handling ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer(base_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(base_dir)


def test_loss_covers_completion_tokens_only(tokenizer):
    record = {"prompt": "Q: What is the rating of Acme?\nA:", "completion": " A1."}

    encoded = encode_record(record, tokenizer, max_length=128)

    prompt_ids = tokenizer(record["prompt"])["input_ids"]
    completion_ids = tokenizer(record["completion"], add_special_tokens=False)["input_ids"]
    assert encoded.input_ids == prompt_ids + completion_ids + [tokenizer.eos_token_id]
    assert encoded.labels == [IGNORE_INDEX] * len(prompt_ids) + completion_ids + [tokenizer.eos_token_id]
    assert encoded.supervised_tokens == len(completion_ids) + 1


def test_text_records_learn_every_token_after_the_first(tokenizer):
    encoded = encode_record({"text": "The bank raised its rate."}, tokenizer, max_length=128)

    assert encoded.labels == encoded.input_ids
    assert encoded.supervised_tokens == len(encoded.input_ids) - 1


def test_split_is_deterministic_and_ignores_record_order():
    records = finance_qa_records(count=50)

    train, evaluation = split_records(records, 0.2)
    shuffled_train, shuffled_evaluation = split_records(list(reversed(records)), 0.2)

    assert len(evaluation) == 10 and len(train) == 40
    assert sorted(map(json.dumps, evaluation)) == sorted(map(json.dumps, shuffled_evaluation))
    assert sorted(map(json.dumps, train)) == sorted(map(json.dumps, shuffled_train))


def test_epochs_set_the_number_of_steps(base_dir, tmp_path):
    records = finance_qa_records(count=20)  # 16 train after the 20% held out

    metadata = train_lora(base_dir, records, tmp_path / "adapter", LoraSpec(epochs=2, batch_size=4))

    assert metadata["settings"]["steps"] == 8
    assert metadata["curve"][-1]["step"] == 8


def test_long_sequences_are_truncated_with_a_warning(base_dir, tmp_path):
    records = finance_qa_records(count=10) + [{"text": " ".join(["liquidity coverage ratio"] * 40)}] * 2

    metadata = train_lora(base_dir, records, tmp_path / "adapter", LoraSpec(steps=2, max_length=64, **FAST))

    assert "2 sequences longer than max_length 64 were truncated" in metadata["warnings"]
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()


def test_prompt_filling_max_length_is_skipped_with_a_warning(base_dir, tmp_path):
    long_prompt = {"prompt": "Explain the liquidity rules. " * 20, "completion": " No."}
    records = finance_qa_records(count=10) + [long_prompt]

    metadata = train_lora(base_dir, records, tmp_path / "adapter", LoraSpec(steps=2, max_length=64, **FAST))

    assert any(warning.startswith("1 records were skipped") for warning in metadata["warnings"])
    assert metadata["train_records"] + metadata["eval_records"] == 10


# --- refused input ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"r": 0}, "r must be"),
        ({"r": 512}, "r must be"),
        ({"alpha": 0}, "alpha must be"),
        ({"dropout": 1.0}, "dropout must be"),
        ({"steps": 0}, "steps must be"),
        ({"steps": True}, "steps must be"),
        ({"learning_rate": 2.0}, "learning_rate must be"),
        ({"learning_rate": float("nan")}, "learning_rate must be"),
        ({"eval_fraction": 0.9}, "eval_fraction must be"),
        ({"target_modules": "q_proj"}, "target_modules must be"),
        ({"target_modules": []}, "target_modules must be"),
    ],
)
def test_settings_out_of_range_are_refused_at_request_time(changes, named):
    with pytest.raises(PipelineInputError, match=named):
        validate_lora_spec(LoraSpec(**changes))


def test_default_settings_are_valid():
    validate_lora_spec(LoraSpec())


def test_target_modules_matching_nothing_are_named_with_the_available_layers(base_dir, tmp_path):
    spec = LoraSpec(target_modules=("q_proj", "attention_weights"), steps=1)

    with pytest.raises(PipelineInputError) as error:
        train_lora(base_dir, finance_qa_records(count=10), tmp_path / "adapter", spec)

    message = str(error.value)
    assert "['attention_weights']" in message
    assert all(name in message for name in ("q_proj", "v_proj", "gate_proj", "lm_head"))
    assert not (tmp_path / "adapter").exists()


def test_an_adapter_version_is_refused_as_base(trained, tmp_path):
    out_dir, _, _ = trained

    with pytest.raises(PipelineInputError, match="holds a LoRA adapter, not a model"):
        train_lora(out_dir, finance_qa_records(count=10), tmp_path / "adapter", LoraSpec(steps=1))


def test_empty_dataset_is_refused(base_dir, tmp_path):
    with pytest.raises(PipelineInputError, match="no records"):
        train_lora(base_dir, [], tmp_path / "adapter", LoraSpec())


def test_too_few_records_for_a_held_out_split_are_refused(base_dir, tmp_path):
    with pytest.raises(PipelineInputError, match="at least 2 records"):
        train_lora(base_dir, finance_qa_records(count=1), tmp_path / "adapter", LoraSpec())


@pytest.mark.parametrize(
    ("bad_record", "named"),
    [
        ({"question": "What is a bond?"}, "neither 'text' nor 'prompt'"),
        ({"prompt": "What is a bond?"}, "missing 'completion'"),
        ({"completion": " A debt security."}, "missing 'prompt'"),
        ({"text": ""}, "empty or non-string 'text'"),
        ({"text": "a", "prompt": "b", "completion": "c"}, "both 'text' and 'prompt'"),
        ("What is a bond?", "not a JSON object"),
    ],
)
def test_records_missing_fields_are_named(base_dir, tmp_path, bad_record, named):
    records = finance_qa_records(count=5) + [bad_record]

    with pytest.raises(PipelineInputError, match=named) as error:
        train_lora(base_dir, records, tmp_path / "adapter", LoraSpec())
    assert "record 6 " in str(error.value)


def test_diverging_loss_stops_training_and_saves_nothing(base_dir, tmp_path):
    # No hook: a learning rate of 1 (the largest accepted) really drives this adapter's attention logits to
    # overflow; with seeds 0-2 the loss turns NaN between steps 10 and 26, and training stops there.
    spec = LoraSpec(steps=100, learning_rate=1.0)

    with pytest.raises(PipelineInputError, match=r"loss became nan at step \d+ .*Lower learning_rate"):
        train_lora(base_dir, finance_qa_records(count=20), tmp_path / "adapter", spec)
    assert not (tmp_path / "adapter").exists()
    assert list(tmp_path.iterdir()) == []


def test_base_with_non_finite_output_is_refused_before_training(base_dir, tmp_path):
    from safetensors.torch import save_file

    broken = tmp_path / "broken"
    broken.mkdir()
    for path in base_dir.iterdir():
        if path.name != "model.safetensors":
            (broken / path.name).write_bytes(path.read_bytes())
    weights = load_file(base_dir / "model.safetensors")
    weights["model.norm.weight"] = torch.full_like(weights["model.norm.weight"], float("inf"))
    save_file(weights, broken / "model.safetensors", metadata={"format": "pt"})

    with pytest.raises(PipelineInputError, match="before any training"):
        train_lora(broken, finance_qa_records(count=10), tmp_path / "adapter", LoraSpec(steps=1))
    assert not (tmp_path / "adapter").exists()


def test_cancellation_propagates_and_saves_nothing(base_dir, tmp_path):
    def report(percent, message):
        if message.startswith("Training step"):
            raise JobCancelled()

    with pytest.raises(JobCancelled):
        train_lora(base_dir, finance_qa_records(count=20), tmp_path / "adapter", LoraSpec(steps=5), report=report)
    assert list(tmp_path.iterdir()) == []
