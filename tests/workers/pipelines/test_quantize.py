"""Quantizing a version with bitsandbytes: outputs that load and stay close, metadata, and refused inputs."""

import json
import shutil

import bitsandbytes as bnb
import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

from workers.pipelines.errors import JobCancelled, PipelineInputError
from workers.pipelines.loading import load_causal_lm
from workers.pipelines.quantize import QuantizeSpec, quantize_version, validate_quantize_spec
from workers.pipelines.tiny_model import SAMPLE_TEXTS, build_tiny_llama

# Loose on purpose: they catch a broken or scrambled quantization (KL of order 1), not small numeric drift.
KL_BOUND = {"nf4": 0.1, "fp4": 0.1, "int8": 0.01}


@pytest.fixture(scope="module")
def source_dir(tmp_path_factory):
    # Trained so its predictions are peaked: an untrained model's near-uniform outputs hide quantization error.
    return build_tiny_llama(tmp_path_factory.mktemp("source") / "model", train_steps=60)


@pytest.fixture(scope="module")
def source_logits(source_dir):
    model = AutoModelForCausalLM.from_pretrained(source_dir).eval()
    batch = evaluation_batch(source_dir)
    with torch.no_grad():
        return model(**batch).logits


@pytest.fixture(scope="module")
def quantized(source_dir, tmp_path_factory):
    """Each method's output directory and metadata, made once for the module."""
    made = {}

    def make(method):
        if method not in made:
            out_dir = tmp_path_factory.mktemp(method) / "version"
            made[method] = out_dir, quantize_version(source_dir, out_dir, QuantizeSpec(method=method))
        return made[method]

    return make


def evaluation_batch(model_dir):
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    return tokenizer(SAMPLE_TEXTS, return_tensors="pt", padding=True)


def mean_kl(reference_logits, candidate_logits, attention_mask):
    reference = reference_logits.float().log_softmax(-1)
    candidate = candidate_logits.float().log_softmax(-1)
    per_token = (reference.exp() * (reference - candidate)).sum(-1)
    return per_token[attention_mask.bool()].mean().item()


def candidate_kl(source_dir, source_logits, out_dir):
    model = AutoModelForCausalLM.from_pretrained(out_dir, device_map={"": "cpu"}).eval()
    batch = evaluation_batch(source_dir)
    with torch.no_grad():
        logits = model(**batch).logits
    return mean_kl(source_logits, logits, batch["attention_mask"])


def assert_nothing_written(out_dir):
    assert not out_dir.exists()
    assert not any(out_dir.parent.iterdir()), "a partial output was left behind"


@pytest.mark.parametrize("method", ["nf4", "fp4", "int8"])
def test_quantized_version_loads_with_from_pretrained_and_stays_close_to_source(
    method, quantized, source_dir, source_logits
):
    out_dir, _ = quantized(method)
    config = json.loads((out_dir / "config.json").read_text())
    assert config["quantization_config"]["quant_method"] == "bitsandbytes"
    assert candidate_kl(source_dir, source_logits, out_dir) < KL_BOUND[method]


def test_nf4_drifts_more_than_int8(quantized, source_dir, source_logits):
    nf4_kl = candidate_kl(source_dir, source_logits, quantized("nf4")[0])
    int8_kl = candidate_kl(source_dir, source_logits, quantized("int8")[0])
    assert nf4_kl > 5 * int8_kl > 0


@pytest.mark.parametrize("method", ["nf4", "int8"])
def test_quantized_version_loads_through_the_pipeline_loader(method, quantized):
    out_dir, _ = quantized(method)
    model, tokenizer = load_causal_lm(out_dir)
    assert not model.training
    assert isinstance(model.model.layers[0].mlp.down_proj, (bnb.nn.Linear4bit, bnb.nn.Linear8bitLt))
    assert type(model.lm_head) is torch.nn.Linear
    assert len(tokenizer) == model.config.vocab_size


def test_saved_nf4_weights_equal_a_fresh_quantization(quantized, source_dir):
    # Guards against bitsandbytes' CPU repacking (done at the first forward pass) leaking into the saved file.
    out_dir, _ = quantized("nf4")
    config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", llm_int8_skip_modules=["lm_head"])
    fresh = AutoModelForCausalLM.from_pretrained(source_dir, quantization_config=config, device_map={"": "cpu"})
    reloaded = AutoModelForCausalLM.from_pretrained(out_dir, device_map={"": "cpu"})
    for name in ("model.layers.0.self_attn.q_proj", "model.layers.1.mlp.down_proj"):
        expected, actual = fresh.get_submodule(name).weight, reloaded.get_submodule(name).weight
        assert torch.equal(
            bnb.functional.dequantize_4bit(actual.data, actual.quant_state),
            bnb.functional.dequantize_4bit(expected.data, expected.quant_state),
        )


def test_metadata_records_method_settings_versions_and_layers(quantized):
    _, metadata = quantized("nf4")
    assert metadata["method"] == "nf4"
    assert metadata["settings"]["skip_modules"] == ["lm_head"]
    assert metadata["settings"]["bitsandbytes_config"]["bnb_4bit_quant_type"] == "nf4"
    assert set(metadata["library_versions"]) == {"torch", "transformers", "bitsandbytes"}
    assert metadata["device"] == "cpu" or metadata["device"].startswith("cuda")
    assert metadata["wall_seconds"] > 0
    assert metadata["skipped_modules"] == ["lm_head"]
    assert len(metadata["quantized_modules"]) == 2 * 7  # q, k, v, o, gate, up, down in each of 2 layers
    assert "model.layers.1.mlp.down_proj" in metadata["quantized_modules"]
    json.dumps(metadata)  # stored as the job's JSON result


@pytest.mark.parametrize("method", ["nf4", "fp4", "int8"])
def test_quantized_weights_are_smaller_than_the_source(method, quantized):
    out_dir, metadata = quantized(method)
    assert metadata["size_after_bytes"] == (out_dir / "model.safetensors").stat().st_size
    assert metadata["size_after_bytes"] < metadata["size_before_bytes"]
    expected_ratio = metadata["size_after_bytes"] / metadata["size_before_bytes"]
    assert metadata["size_ratio"] == pytest.approx(expected_ratio, abs=1e-3)
    if method != "int8":
        # Embeddings and lm_head stay float32, so a tiny model cannot reach the 1/8 of the quantized layers.
        assert metadata["size_ratio"] < 0.6


def test_tokenizer_is_copied_and_tokenizes_identically(quantized, source_dir):
    out_dir, metadata = quantized("int8")
    assert "tokenizer.json" in metadata["tokenizer_files"]
    text = "Credit spreads widened by 12 basis points."
    source_ids = AutoTokenizer.from_pretrained(source_dir)(text)["input_ids"]
    assert AutoTokenizer.from_pretrained(out_dir)(text)["input_ids"] == source_ids


def test_double_quant_and_compute_dtype_reach_the_saved_config(source_dir, tmp_path):
    spec = QuantizeSpec(method="nf4", compute_dtype="bfloat16", double_quant=True)
    metadata = quantize_version(source_dir, tmp_path / "version", spec)
    saved = json.loads((tmp_path / "version" / "config.json").read_text())["quantization_config"]
    assert saved["bnb_4bit_use_double_quant"] is True
    assert saved["bnb_4bit_compute_dtype"] == "bfloat16"
    assert metadata["settings"]["double_quant"] is True
    load_causal_lm(tmp_path / "version")


def test_skip_modules_keep_the_named_layers_in_full_precision(source_dir, tmp_path):
    spec = QuantizeSpec(method="int8", skip_modules=["lm_head", "down_proj"])
    metadata = quantize_version(source_dir, tmp_path / "version", spec)
    assert metadata["skipped_modules"] == ["model.layers.0.mlp.down_proj", "model.layers.1.mlp.down_proj", "lm_head"]
    model, _ = load_causal_lm(tmp_path / "version")
    assert type(model.model.layers[1].mlp.down_proj) is torch.nn.Linear
    assert isinstance(model.model.layers[1].mlp.up_proj, bnb.nn.Linear8bitLt)


def test_progress_is_reported_in_order_up_to_100(source_dir, tmp_path):
    reports = []
    spec = QuantizeSpec(method="fp4")
    quantize_version(source_dir, tmp_path / "version", spec, report=lambda percent, message: reports.append(percent))
    assert reports == sorted(reports) and reports[-1] == 100 and len(reports) >= 4


@pytest.mark.parametrize("cancel_at_percent", [10, 70, 90, 100])
def test_cancelling_at_any_step_leaves_no_output(cancel_at_percent, source_dir, tmp_path):
    def cancel(percent, message):
        if percent == cancel_at_percent:
            raise JobCancelled()

    out_dir = tmp_path / "outputs" / "version"
    out_dir.parent.mkdir()
    with pytest.raises(JobCancelled):
        quantize_version(source_dir, out_dir, QuantizeSpec(method="nf4"), report=cancel)
    assert_nothing_written(out_dir)


def test_a_non_empty_output_directory_is_never_overwritten(source_dir, tmp_path):
    (tmp_path / "version").mkdir()
    (tmp_path / "version" / "model.safetensors").write_bytes(b"earlier result")
    with pytest.raises(FileExistsError):
        quantize_version(source_dir, tmp_path / "version", QuantizeSpec(method="nf4"))
    assert (tmp_path / "version" / "model.safetensors").read_bytes() == b"earlier result"


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (QuantizeSpec(method="int4"), "Unknown quantization method 'int4'; choose one of nf4, fp4, int8"),
        (QuantizeSpec(method="nf4", compute_dtype="float64"), "Unknown compute dtype 'float64'"),
        (QuantizeSpec(method="int8", double_quant=True), "double_quant applies only to the 4-bit methods"),
        (QuantizeSpec(method="nf4", skip_modules="lm_head"), "skip_modules must be a list"),
        (QuantizeSpec(method="nf4", skip_modules=["lm_head["]), "'lm_head[' is not a valid module name"),
    ],
)
def test_invalid_settings_are_refused_with_the_bad_value_named(spec, message, source_dir, tmp_path):
    with pytest.raises(PipelineInputError, match=message.replace("(", r"\(").replace("[", r"\[")):
        validate_quantize_spec(spec)
    out_dir = tmp_path / "outputs" / "version"
    out_dir.parent.mkdir()
    with pytest.raises(PipelineInputError):
        quantize_version(source_dir, out_dir, spec)
    assert_nothing_written(out_dir)


def test_skip_module_matching_no_layer_is_named(source_dir, tmp_path):
    out_dir = tmp_path / "outputs" / "version"
    out_dir.parent.mkdir()
    with pytest.raises(PipelineInputError, match="'lm_heads' matches no Linear layer of this model"):
        quantize_version(source_dir, out_dir, QuantizeSpec(method="nf4", skip_modules=["lm_head", "lm_heads"]))
    assert_nothing_written(out_dir)


def test_skipping_every_linear_layer_is_refused(source_dir, tmp_path):
    out_dir = tmp_path / "outputs" / "version"
    out_dir.parent.mkdir()
    with pytest.raises(PipelineInputError, match="Nothing left to quantize.*remove entries from skip_modules"):
        quantize_version(source_dir, out_dir, QuantizeSpec(method="int8", skip_modules=["model", "lm_head"]))
    assert_nothing_written(out_dir)


def copy_of(source_dir, tmp_path):
    return shutil.copytree(source_dir, tmp_path / "broken")


def test_truncated_weights_file_is_named_in_the_error(source_dir, tmp_path):
    broken = copy_of(source_dir, tmp_path)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    out_dir = tmp_path / "outputs" / "version"
    out_dir.parent.mkdir()
    with pytest.raises(PipelineInputError, match="model.safetensors .* corrupt or truncated, re-upload it"):
        quantize_version(broken, out_dir, QuantizeSpec(method="nf4"))
    assert_nothing_written(out_dir)


def test_pickle_weights_are_refused_with_advice_to_upload_safetensors(source_dir, tmp_path):
    broken = copy_of(source_dir, tmp_path)
    (broken / "model.safetensors").rename(broken / "pytorch_model.bin")
    with pytest.raises(PipelineInputError, match="pytorch_model.bin .* is a pickle file; upload safetensors"):
        quantize_version(broken, tmp_path / "version", QuantizeSpec(method="nf4"))
    assert not (tmp_path / "version").exists()


def test_weights_missing_a_tensor_are_refused_instead_of_randomly_filled(source_dir, tmp_path):
    broken = copy_of(source_dir, tmp_path)
    tensors = load_file(broken / "model.safetensors")
    del tensors["model.layers.1.mlp.up_proj.weight"]
    save_file(tensors, broken / "model.safetensors", metadata={"format": "pt"})
    out_dir = tmp_path / "outputs" / "version"
    out_dir.parent.mkdir()
    with pytest.raises(PipelineInputError, match="lack 1 tensor.*model.layers.1.mlp.up_proj.weight"):
        quantize_version(broken, out_dir, QuantizeSpec(method="nf4"))
    assert_nothing_written(out_dir)


def test_weights_of_the_wrong_shape_are_refused(source_dir, tmp_path):
    broken = copy_of(source_dir, tmp_path)
    tensors = load_file(broken / "model.safetensors")
    tensors["model.layers.0.mlp.down_proj.weight"] = torch.zeros(64, 64)
    save_file(tensors, broken / "model.safetensors", metadata={"format": "pt"})
    for method in ("int8", "nf4"):  # transformers 5 loads such a checkpoint silently when it quantizes
        with pytest.raises(PipelineInputError, match=r"down_proj.weight .* has shape \[64, 64\] but config.json"):
            quantize_version(broken, tmp_path / "version", QuantizeSpec(method=method))
    assert not (tmp_path / "version").exists()


def test_an_already_quantized_version_is_refused(quantized, tmp_path):
    out_dir, _ = quantized("nf4")
    with pytest.raises(PipelineInputError, match="already quantized .*quantize its full-precision parent"):
        quantize_version(out_dir, tmp_path / "version", QuantizeSpec(method="int8"))
    assert not (tmp_path / "version").exists()


def test_missing_config_is_named_in_the_error(source_dir, tmp_path):
    broken = copy_of(source_dir, tmp_path)
    (broken / "config.json").unlink()
    with pytest.raises(PipelineInputError, match="config.json is missing"):
        quantize_version(broken, tmp_path / "version", QuantizeSpec(method="nf4"))
    assert not (tmp_path / "version").exists()
