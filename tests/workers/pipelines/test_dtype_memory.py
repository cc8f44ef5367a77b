"""Real checkpoints' dtype and memory: a sharded bf16 model stays bf16 through every pipeline, each run reports
its peak memory, and a model that cannot fit is refused before anything loads, naming both sizes."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from workers.pipelines.analysis import AnalysisSpec, analyse_versions
from workers.pipelines.loading import load_causal_lm
from workers.pipelines.lora import LoraSpec, train_lora
from workers.pipelines.memory import ModelDoesNotFit, PeakMemory, describe_bytes, memory_figures, stored_tensors
from workers.pipelines.quantize import QuantizeSpec, quantize_needed_bytes, quantize_version
from workers.pipelines.tiny_model import SAMPLE_TEXTS, build_tiny_llama

RECORDS = [{"prompt": f"Q: rating of bank {index}?\nA:", "completion": f" A{index % 3}."} for index in range(24)]
TINY_LIMIT = 1_000  # bytes "available": far below any model


def save_sharded_bf16(source_dir, directory):
    """The tiny Llama converted to bfloat16 and saved by save_pretrained in several shards, with its tokenizer."""
    model = AutoModelForCausalLM.from_pretrained(source_dir, dtype=torch.float32).to(torch.bfloat16)
    model.save_pretrained(directory, max_shard_size="100KB")
    for tokenizer_file in source_dir.glob("tokenizer*"):
        (directory / tokenizer_file.name).write_bytes(tokenizer_file.read_bytes())
    return directory


@pytest.fixture(scope="module")
def bf16_dir(tmp_path_factory):
    source = build_tiny_llama(tmp_path_factory.mktemp("fp32") / "model", train_steps=20)
    directory = save_sharded_bf16(source, tmp_path_factory.mktemp("bf16"))
    assert len(list(directory.glob("model-*.safetensors"))) >= 3
    assert {tensor.dtype for tensor in stored_tensors(directory)} == {"BF16"}
    return directory


@pytest.fixture(scope="module")
def nf4_of_bf16(bf16_dir, tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("nf4") / "version"
    return out_dir, quantize_version(bf16_dir, out_dir, QuantizeSpec(method="nf4"))


def floating_dtypes(model):
    return {parameter.dtype for parameter in model.parameters() if parameter.dtype.is_floating_point}


def test_a_sharded_bf16_model_loads_in_bf16(bf16_dir):
    model, _ = load_causal_lm(bf16_dir, device="cpu")
    assert floating_dtypes(model) == {torch.bfloat16}


def test_a_config_claiming_float32_does_not_upcast_bf16_weights(bf16_dir, tmp_path):
    directory = tmp_path / "mislabelled"
    directory.mkdir()
    for path in bf16_dir.iterdir():
        (directory / path.name).write_bytes(path.read_bytes())
    config = json.loads((directory / "config.json").read_text())
    config["dtype"] = "float32"
    (directory / "config.json").write_text(json.dumps(config))

    model, _ = load_causal_lm(directory, device="cpu")
    assert floating_dtypes(model) == {torch.bfloat16}


def test_quantizing_bf16_keeps_the_unquantized_layers_bf16_and_reports_peak_memory(nf4_of_bf16):
    out_dir, result = nf4_of_bf16
    assert result["dtype"] == "bfloat16"
    assert result["peak_rss_bytes"] > 0
    assert result["peak_rss_bytes"] >= result["rss_before_bytes"]
    assert memory_figures(result) == {"peak_rss_bytes": result["peak_rss_bytes"], "peak_gpu_bytes": None}
    assert result["memory"]["needed_estimate_bytes"] < result["memory"]["available_bytes"]

    model = AutoModelForCausalLM.from_pretrained(out_dir, device_map={"": "cpu"})
    assert model.lm_head.weight.dtype == torch.bfloat16  # kept unquantized (skip_modules), still bf16
    assert model.model.embed_tokens.weight.dtype == torch.bfloat16
    assert model.model.norm.weight.dtype == torch.bfloat16


def test_analysis_of_bf16_against_its_nf4_holds_both_in_bf16_and_reports_peak_memory(bf16_dir, nf4_of_bf16):
    out_dir, _ = nf4_of_bf16
    result = analyse_versions(bf16_dir, out_dir, SAMPLE_TEXTS * 2, AnalysisSpec(max_tokens=256, layer_tokens=32))
    assert result["dtypes"] == {"reference": "bfloat16", "candidate": "bfloat16"}
    assert result["tokens"] > 0
    assert result["peak_rss_bytes"] > 0
    assert result["memory"]["available_bytes"] > result["memory"]["needed_estimate_bytes"]


def test_qlora_on_an_nf4_base_of_bf16_keeps_the_frozen_base_bf16(nf4_of_bf16, tmp_path):
    base_dir, _ = nf4_of_bf16
    metadata = train_lora(base_dir, RECORDS, tmp_path / "adapter", LoraSpec(steps=2, batch_size=2, max_length=32))
    assert metadata["settings"]["qlora"] is True
    assert metadata["base_dtype"] == "bfloat16"
    assert metadata["peak_rss_bytes"] > 0
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()


def test_quantizing_a_model_that_cannot_fit_fails_before_loading_with_both_sizes(bf16_dir, tmp_path):
    out_dir = tmp_path / "out"
    with pytest.raises(ModelDoesNotFit) as refused:
        quantize_version(bf16_dir, out_dir, QuantizeSpec(method="nf4"), available_bytes=TINY_LIMIT)
    message = str(refused.value)
    assert describe_bytes(TINY_LIMIT) in message
    needed = quantize_needed_bytes(bf16_dir, _linear_names(bf16_dir), QuantizeSpec(method="nf4"), "bfloat16")
    assert describe_bytes(needed) in message
    assert "nothing was loaded" in message
    assert not out_dir.exists()


def test_an_analysis_that_cannot_fit_fails_before_loading_with_both_sizes(bf16_dir, nf4_of_bf16):
    out_dir, _ = nf4_of_bf16
    with pytest.raises(ModelDoesNotFit) as refused:
        analyse_versions(bf16_dir, out_dir, SAMPLE_TEXTS, AnalysisSpec(max_tokens=256), available_bytes=TINY_LIMIT)
    message = str(refused.value)
    assert "Analysing these two versions needs about" in message
    assert f"{TINY_LIMIT:,} bytes) available" in message


def test_a_lora_update_that_cannot_fit_fails_before_loading_with_both_sizes(bf16_dir, tmp_path):
    with pytest.raises(ModelDoesNotFit) as refused:
        train_lora(bf16_dir, RECORDS, tmp_path / "adapter", LoraSpec(steps=1), available_bytes=TINY_LIMIT)
    assert "Training a LoRA update on this base needs about" in str(refused.value)
    assert f"{TINY_LIMIT:,} bytes) available" in str(refused.value)
    assert not (tmp_path / "adapter").exists()


def test_peak_memory_sees_an_allocation_freed_inside_the_block():
    size = 256 * 1024 * 1024
    with PeakMemory("cpu") as peak:
        block = torch.ones(size, dtype=torch.uint8)  # touched, so resident
        del block
    figures = peak.figures()
    assert figures["peak_rss_bytes"] - figures["rss_before_bytes"] >= size * 0.9


def _linear_names(model_dir):
    from workers.pipelines.loading import build_skeleton
    from workers.pipelines.quantize import plan_quantization

    planned, _ = plan_quantization(build_skeleton(model_dir), QuantizeSpec(method="nf4"))
    return planned


def test_a_quantized_output_larger_than_the_shard_size_is_written_in_shards_that_load(bf16_dir, tmp_path):
    out_dir = tmp_path / "nf4-sharded"
    quantize_version(bf16_dir, out_dir, QuantizeSpec(method="nf4"), max_shard_size="50KB")  # the model: ~300 KB
    index = json.loads((out_dir / "model.safetensors.index.json").read_text())
    shards = sorted(path.name for path in out_dir.glob("model-*.safetensors"))
    assert len(shards) >= 2 and sorted(set(index["weight_map"].values())) == shards
    model = AutoModelForCausalLM.from_pretrained(out_dir, device_map={"": "cpu"})
    assert model.lm_head.weight.dtype == torch.bfloat16
