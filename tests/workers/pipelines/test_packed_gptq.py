"""GPTQ versions written as compressed-tensors pack-quantized checkpoints: the config.json serving engines read,
plain from_pretrained reproducing the grid GPTQ rounded to, and the pipelines that load versions (analysis, LoRA)
working on them."""

import json

import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM, AutoTokenizer

from workers.pipelines.analysis import AnalysisSpec, analyse_versions
from workers.pipelines.calibrated.gptq import gptq_quantize_weight
from workers.pipelines.calibrated.packing import pack_model, write_packed
from workers.pipelines.calibrated.run import quantize_calibrated_version
from workers.pipelines.calibrated.spec import CalibratedQuantizeSpec
from workers.pipelines.lora import LoraSpec, merge_lora, train_lora
from workers.pipelines.errors import PipelineInputError
from workers.pipelines.tiny_model import SAMPLE_TEXTS

PROMPT_IDS = torch.tensor([[1, 17, 42, 99, 7, 250, 31, 64]])


@pytest.fixture(scope="module")
def source_dir(trained_tiny_llama_dir):
    return trained_tiny_llama_dir


@pytest.fixture(scope="module")
def packed(source_dir, tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("gptq") / "version"
    spec = CalibratedQuantizeSpec(bits=4, group_size=32)
    return out_dir, quantize_calibrated_version(source_dir, out_dir, spec, SAMPLE_TEXTS[::2])


def logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=PROMPT_IDS).logits.float()


def test_config_json_carries_the_compressed_tensors_quantization_config(packed):
    out_dir, metadata = packed
    config = json.loads((out_dir / "config.json").read_text())["quantization_config"]
    assert config["quant_method"] == "compressed-tensors" and config["format"] == "pack-quantized"
    weights = config["config_groups"]["group_0"]["weights"]
    assert (weights["num_bits"], weights["group_size"], weights["strategy"], weights["symmetric"]) == \
        (4, 32, "group", True)
    assert config["config_groups"]["group_0"]["targets"] == ["Linear"]
    assert config["ignore"] == ["lm_head"]
    with safe_open(str(out_dir / "model.safetensors"), framework="pt") as handle:
        packed_weight = handle.get_tensor("model.layers.0.self_attn.q_proj.weight_packed")
        assert packed_weight.dtype == torch.int32 and packed_weight.shape == (64, 64 * 4 // 32)
        assert "model.layers.0.self_attn.q_proj.weight" not in handle.keys()
    assert metadata["format"] == "pack-quantized"
    assert metadata["size_after_bytes"] == metadata["packed_size_bytes"] < metadata["size_before_bytes"]
    assert metadata["library_versions"]["compressed_tensors"] == "0.20.0"


@pytest.mark.parametrize("dtype, tolerance", [(torch.float32, 1e-5), (torch.bfloat16, 8e-2)])
@pytest.mark.parametrize("bits, group_size, desc_act", [(4, 32, False), (8, 32, True), (4, -1, False)])
def test_from_pretrained_reproduces_the_dequantized_grid(source_dir, tmp_path, dtype, tolerance, bits, group_size,
                                                         desc_act):
    spec = CalibratedQuantizeSpec(bits=bits, group_size=group_size, desc_act=desc_act)
    model = AutoModelForCausalLM.from_pretrained(source_dir, dtype=dtype).eval()
    grids = {}
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and name != "lm_head":
            inputs = torch.randn(256, module.in_features, generator=torch.Generator().manual_seed(0))
            grids[name] = gptq_quantize_weight(module.weight.data, inputs.T @ inputs, bits=bits,
                                               group_size=group_size, damping=0.01, sym=True, desc_act=desc_act)
            module.weight.data = grids[name][0].to(dtype)
    expected = logits(model)

    write_packed(model, pack_model(model, grids, spec, ["lm_head"]), tmp_path, max_shard_size="5GB")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()

    assert loaded.dtype == dtype
    assert torch.allclose(logits(loaded), expected, atol=tolerance, rtol=0)


def test_analysis_loads_the_packed_version(source_dir, packed):
    out_dir, _ = packed
    spec = AnalysisSpec(max_tokens=256, context_length=64, layer_tokens=32, ablation_top_n=1)
    result = analyse_versions(source_dir, out_dir, SAMPLE_TEXTS, spec)
    layers = {layer["name"]: layer for layer in result["layers"]}
    assert result["kl"]["mean"] > 0
    assert layers["model.layers.0.self_attn.q_proj"]["weight_relative_error"] > 0
    assert layers["lm_head"]["weight_relative_error"] == 0.0  # kept in full precision


def test_lora_trains_on_the_frozen_packed_base_and_refuses_to_merge_into_it(source_dir, packed, tmp_path):
    from workers.pipelines.loading import load_causal_lm

    out_dir, _ = packed
    records = [{"prompt": f"Q: rating of bank {index}?\nA:", "completion": " A1."} for index in range(24)]
    metadata = train_lora(out_dir, records, tmp_path / "adapter",
                          LoraSpec(steps=6, learning_rate=1e-2, batch_size=4))
    assert metadata["base_quantization"]["method"] == "compressed-tensors-int4"
    assert metadata["settings"]["qlora"] is True
    assert metadata["eval_loss_after"] < metadata["eval_loss_before"]
    model, _ = load_causal_lm(out_dir, adapter_dir=tmp_path / "adapter", device="cpu")
    base = AutoModelForCausalLM.from_pretrained(out_dir).eval()
    assert not torch.allclose(logits(model), logits(base))
    with pytest.raises(PipelineInputError, match="quantized"):
        merge_lora(out_dir, tmp_path / "adapter", tmp_path / "merged")
    assert AutoTokenizer.from_pretrained(out_dir) is not None


def test_memory_estimate_counts_the_weights_unpacked(source_dir, packed):
    from workers.pipelines.loading import load_causal_lm, resident_bytes

    out_dir, _ = packed
    model, _ = load_causal_lm(out_dir, device="cpu")
    loaded = sum(p.numel() * p.element_size() for p in model.parameters())
    # The source holds the same float32 weights, unpacked: the estimate is what the dequantized model takes.
    assert resident_bytes(out_dir) == pytest.approx(loaded, rel=0.05)
    assert resident_bytes(out_dir) == pytest.approx(resident_bytes(source_dir), rel=0.05)
