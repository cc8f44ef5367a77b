"""GPTQ and AWQ on calibration text: GPTQ beats round-to-nearest at the same bit width, writes a version that loads with
plain from_pretrained (packed, or dequantized where it cannot be packed), records per-module loss, keeps what it is told to keep, and refuses bad settings."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from workers.pipelines.calibrated.awq import awq_quantize_weight
from workers.pipelines.calibrated.gptq import relative_output_error, round_to_nearest
from workers.pipelines.calibrated.run import quantize_calibrated_version
from workers.pipelines.calibrated.spec import CalibratedQuantizeSpec, plan_modules, validate_calibrated_spec
from workers.pipelines.errors import JobCancelled, PipelineInputError
from workers.pipelines.memory import ModelDoesNotFit
from workers.pipelines.quantize import QuantizeSpec, quantize_version
from tests.workers.pipelines.conftest import CALIBRATION_TEXTS, mean_kl
from workers.pipelines.tiny_model import build_tiny_llama


@pytest.fixture(scope="module")
def source_dir(tmp_path_factory):
    # Trained so its predictions are peaked: an untrained model's near-uniform outputs hide quantization error.
    return build_tiny_llama(tmp_path_factory.mktemp("source") / "model", train_steps=60)


@pytest.fixture(scope="module")
def gptq_4bit(source_dir, tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("gptq") / "version"
    spec = CalibratedQuantizeSpec(bits=4, group_size=32)
    return out_dir, quantize_calibrated_version(source_dir, out_dir, spec, CALIBRATION_TEXTS)


def test_gptq_4bit_group_32_is_closer_to_the_source_than_round_to_nearest(source_dir, gptq_4bit, tmp_path):
    out_dir, metadata = gptq_4bit
    tokenizer = AutoTokenizer.from_pretrained(source_dir)
    source = AutoModelForCausalLM.from_pretrained(source_dir).eval()
    gptq = AutoModelForCausalLM.from_pretrained(out_dir).eval()
    # Round-to-nearest on the very same grid (4 bits, groups of 32, symmetric) and the same layers.
    same_grid = AutoModelForCausalLM.from_pretrained(source_dir).eval()
    modules = dict(same_grid.named_modules())
    for name in metadata["quantized_modules"]:
        modules[name].weight.data = round_to_nearest(modules[name].weight.data, 4, 32, sym=True)
    # And bitsandbytes' round-to-nearest NF4, what the registry offered before.
    nf4_dir = tmp_path / "nf4"
    quantize_version(source_dir, nf4_dir, QuantizeSpec(method="nf4"))
    nf4 = AutoModelForCausalLM.from_pretrained(nf4_dir).eval()

    kl_gptq = mean_kl(source, gptq, tokenizer)
    assert 0 < kl_gptq < mean_kl(source, same_grid, tokenizer)
    assert kl_gptq < mean_kl(source, nf4, tokenizer)


def test_gptq_version_loads_plainly_and_records_what_it_did(source_dir, gptq_4bit):
    out_dir, metadata = gptq_4bit
    config = json.loads((out_dir / "config.json").read_text())
    assert config["quantization_config"]["quant_method"] == "compressed-tensors"  # packed; see test_packed_gptq
    model = AutoModelForCausalLM.from_pretrained(out_dir).eval()
    with torch.no_grad():
        model(input_ids=torch.tensor([[1, 2, 3]]))  # compressed-tensors unpacks the weights on the first pass
    weight = model.model.layers[0].mlp.up_proj.weight.detach()
    # Every group of 32 input columns of a quantized row holds at most 2**4 distinct values.
    assert max(len(torch.unique(weight[row, :32])) for row in range(weight.shape[0])) <= 16
    assert metadata["method"] == "gptq" and metadata["bits"] == 4 and metadata["group_size"] == 32
    assert metadata["calibration"]["samples"] == len(CALIBRATION_TEXTS) and metadata["calibration"]["tokens"] > 0
    assert "model.layers.0.self_attn.q_proj" in metadata["quantized_modules"]
    assert "lm_head" in metadata["skipped_modules"]
    assert set(metadata["module_loss"]) == set(metadata["quantized_modules"])
    assert all(0 < loss < 0.1 for loss in metadata["module_loss"].values())
    assert metadata["packed_size_bytes"] < metadata["size_before_bytes"]
    assert {"torch", "transformers"} <= set(metadata["library_versions"])
    assert metadata["memory"]["needed_estimate_bytes"] > 0 and metadata["peak_rss_bytes"] > 0


def test_keeping_the_most_sensitive_layers_lowers_kl_against_gptq_without_them(source_dir, gptq_4bit, tmp_path):
    out_dir, metadata = gptq_4bit
    losses = metadata["module_loss"]
    sensitive = tuple(sorted(losses, key=losses.get, reverse=True)[:4])
    spec = CalibratedQuantizeSpec(bits=4, group_size=32, keep=sensitive)
    kept = quantize_calibrated_version(source_dir, tmp_path / "kept", spec, CALIBRATION_TEXTS)
    assert sorted(item["name"] for item in kept["kept_modules"] if item["reason"] == "keep_sensitive") == \
        sorted(sensitive)
    tokenizer = AutoTokenizer.from_pretrained(source_dir)
    source = AutoModelForCausalLM.from_pretrained(source_dir).eval()
    without = mean_kl(source, AutoModelForCausalLM.from_pretrained(out_dir).eval(), tokenizer)
    with_kept = mean_kl(source, AutoModelForCausalLM.from_pretrained(tmp_path / "kept").eval(), tokenizer)
    assert with_kept < without


def test_eight_bits_with_act_order_and_asymmetric_grid_lose_less_than_four(source_dir, gptq_4bit, tmp_path):
    spec = CalibratedQuantizeSpec(bits=8, group_size=-1, sym=False, desc_act=True)
    metadata = quantize_calibrated_version(source_dir, tmp_path / "v", spec, CALIBRATION_TEXTS)
    # Asymmetric grids stay dequantized (compressed-tensors 0.20 cannot reload their packed zero points).
    assert metadata["format"] == "dequantized" and "asymmetric" in metadata["format_note"]
    assert "quantization_config" not in json.loads((tmp_path / "v" / "config.json").read_text())
    four = gptq_4bit[1]["module_loss"]
    assert all(metadata["module_loss"][name] < four[name] for name in four)


def test_modules_and_skip_modules_choose_the_layers(source_dir, tmp_path):
    spec = CalibratedQuantizeSpec(modules=r"mlp", skip_modules=(r"down_proj",),
                                  keep=("model.layers.1.mlp.up_proj",))
    metadata = quantize_calibrated_version(source_dir, tmp_path / "v", spec, CALIBRATION_TEXTS)
    # gate_proj of layer 1 is served fused with the kept up_proj (one gate_up_proj in vLLM): kept with it.
    assert metadata["quantized_modules"] == ["model.layers.0.mlp.gate_proj", "model.layers.0.mlp.up_proj"]
    reasons = {item["name"]: item["reason"] for item in metadata["kept_modules"]}
    assert reasons["model.layers.1.mlp.up_proj"] == "keep_sensitive"
    assert reasons["model.layers.1.mlp.gate_proj"].startswith("served fused with model.layers.1.mlp.up_proj")
    # group_size 128 does not divide the tiny model's 64 inputs: written dequantized, and saying why
    assert metadata["format"] == "dequantized" and "does not divide" in metadata["format_note"]
    assert "down_proj" in reasons["model.layers.0.mlp.down_proj"]


def test_projections_served_fused_are_kept_together():
    names = [f"model.layers.0.self_attn.{leaf}" for leaf in ("q_proj", "k_proj", "v_proj", "o_proj")] + \
            [f"model.layers.0.mlp.{leaf}" for leaf in ("gate_proj", "up_proj", "down_proj")]
    planned, kept = plan_modules(names, CalibratedQuantizeSpec(skip_modules=(r"k_proj",)))
    assert planned == ["model.layers.0.self_attn.o_proj", "model.layers.0.mlp.gate_proj", "model.layers.0.mlp.up_proj",
                       "model.layers.0.mlp.down_proj"]
    assert kept["model.layers.0.self_attn.k_proj"] == "skip_modules 'k_proj'"
    assert "q_proj/k_proj/v_proj" in kept["model.layers.0.self_attn.q_proj"]
    # down_proj and o_proj are fused with nothing: keeping them keeps nothing else.
    planned, kept = plan_modules(names, CalibratedQuantizeSpec(skip_modules=(r"down_proj|o_proj",)))
    assert sorted(kept) == ["model.layers.0.mlp.down_proj", "model.layers.0.self_attn.o_proj"]


def test_awq_scales_protect_the_channels_with_large_activations():
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(64, 128, generator=generator)
    inputs = torch.randn(2048, 128, generator=generator)
    inputs[:, :4] *= 30  # a few salient input channels, as in real LLM activations
    hessian = inputs.T @ inputs
    plain = round_to_nearest(weight, 4, 32, sym=False)
    scaled, alpha = awq_quantize_weight(weight, hessian, inputs.abs().mean(dim=0), bits=4, group_size=32, sym=False)
    assert alpha > 0
    assert relative_output_error(weight, scaled, hessian) < 0.8 * relative_output_error(weight, plain, hessian)


def test_awq_version_records_its_scales_and_loads(source_dir, tmp_path):
    spec = CalibratedQuantizeSpec(method="awq", bits=4, group_size=32, sym=False)
    metadata = quantize_calibrated_version(source_dir, tmp_path / "v", spec, CALIBRATION_TEXTS)
    assert metadata["method"] == "awq" and set(metadata["awq_alpha"]) == set(metadata["quantized_modules"])
    assert all(0 < loss < 0.1 for loss in metadata["module_loss"].values())
    tokenizer = AutoTokenizer.from_pretrained(source_dir)
    source = AutoModelForCausalLM.from_pretrained(source_dir).eval()
    assert mean_kl(source, AutoModelForCausalLM.from_pretrained(tmp_path / "v").eval(), tokenizer) < 0.05


def test_a_cancelled_quantization_leaves_nothing_behind(source_dir, tmp_path):
    def report(percent, message):
        if "block" in message:
            raise JobCancelled()

    with pytest.raises(JobCancelled):
        quantize_calibrated_version(source_dir, tmp_path / "v", CalibratedQuantizeSpec(), CALIBRATION_TEXTS,
                                    report=report)
    assert list(tmp_path.iterdir()) == []


def test_a_model_that_does_not_fit_is_refused_before_loading(source_dir, tmp_path):
    with pytest.raises(ModelDoesNotFit, match="needs about"):
        quantize_calibrated_version(source_dir, tmp_path / "v", CalibratedQuantizeSpec(), CALIBRATION_TEXTS,
                                    available_bytes=1024)
    assert not (tmp_path / "v").exists()


@pytest.mark.parametrize("settings,field", [
    ({"method": "rtn"}, "method"),
    ({"method": "awq", "bits": 8}, "bits"),
    ({"method": "awq", "desc_act": True}, "desc_act"),
    ({"bits": 5}, "bits"),
    ({"group_size": 48}, "group_size"),
    ({"damping": 0}, "damping"),
    ({"max_length": 2}, "max_length"),
    ({"modules": "("}, "modules"),
])
def test_bad_settings_are_refused_naming_the_field(settings, field):
    with pytest.raises(PipelineInputError) as raised:
        validate_calibrated_spec(CalibratedQuantizeSpec(**settings))
    assert raised.value.field == field


def test_a_pattern_matching_no_layer_is_refused():
    names = ["model.layers.0.self_attn.q_proj", "lm_head"]
    with pytest.raises(PipelineInputError) as raised:
        plan_modules(names, CalibratedQuantizeSpec(modules="no_such_layer"))
    assert raised.value.field == "modules"
    with pytest.raises(PipelineInputError) as raised:
        plan_modules(names, CalibratedQuantizeSpec(skip_modules=("v_proj",)))
    assert raised.value.field == "skip_modules"
