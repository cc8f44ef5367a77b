"""AWQ with its scales folded into the preceding norms and Linears: folding keeps the model's function, the result is
a uniform per-group grid written as a compressed-tensors pack-quantized checkpoint that plain from_pretrained
reproduces, it beats round-to-nearest where activations have outliers, and what cannot be folded or packed is
written dequantized, saying why."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM, OPTConfig, \
    OPTForCausalLM, Qwen2Config, Qwen2ForCausalLM

import workers.pipelines.calibrated.run as calibrated_run
from workers.pipelines.calibrated.awq import awq_fold_problem, decoder_scale_groups, fold_scales
from workers.pipelines.calibrated.gptq import round_to_nearest
from workers.pipelines.calibrated.run import quantize_calibrated_version
from workers.pipelines.calibrated.spec import CalibratedQuantizeSpec
from tests.workers.pipelines.conftest import CALIBRATION_TEXTS, mean_kl
from workers.pipelines.tiny_model import build_tokenizer

PROMPT_IDS = torch.tensor([[1, 17, 42, 99, 7, 250, 31, 64]])
AWQ_4BIT_G32 = CalibratedQuantizeSpec(method="awq", bits=4, group_size=32, sym=True)
TINY = {"vocab_size": 512, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
        "num_attention_heads": 2, "max_position_embeddings": 256}


def logits(model, ids=PROMPT_IDS) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits.float()


def save_with_tokenizer(model, out_dir):
    model.save_pretrained(str(out_dir))
    build_tokenizer(model.config.vocab_size).save_pretrained(str(out_dir))
    return out_dir


@pytest.fixture(scope="module")
def source_dir(trained_tiny_llama_dir):
    return trained_tiny_llama_dir


@pytest.fixture(scope="module")
def packed(source_dir, tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("awq") / "version"
    return out_dir, quantize_calibrated_version(source_dir, out_dir, AWQ_4BIT_G32, CALIBRATION_TEXTS)


@pytest.fixture(scope="module")
def same_run_dequantized(source_dir, tmp_path_factory):
    """The same AWQ run saved as the in-memory model stands (grid values, folded norms), not packed."""
    out_dir = tmp_path_factory.mktemp("awq-dequantized") / "version"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(calibrated_run, "unpackable_reason", lambda *args, **kwargs: "this test asked for it")
        metadata = quantize_calibrated_version(source_dir, out_dir, AWQ_4BIT_G32, CALIBRATION_TEXTS)
    assert metadata["format"] == "dequantized"
    return out_dir


def test_awq_version_is_packed_with_the_compressed_tensors_config(packed):
    out_dir, metadata = packed
    config = json.loads((out_dir / "config.json").read_text())["quantization_config"]
    assert config["quant_method"] == "compressed-tensors" and config["format"] == "pack-quantized"
    weights = config["config_groups"]["group_0"]["weights"]
    assert (weights["num_bits"], weights["group_size"], weights["strategy"], weights["symmetric"]) == \
        (4, 32, "group", True)
    assert config["ignore"] == ["lm_head"]
    assert metadata["format"] == "pack-quantized"
    assert metadata["size_after_bytes"] == metadata["packed_size_bytes"] < metadata["size_before_bytes"]
    assert metadata["library_versions"]["compressed_tensors"] == "0.20.0"


def test_awq_metadata_names_each_groups_alpha_and_the_op_its_scales_went_into(packed):
    _, metadata = packed
    quantized = metadata["quantized_modules"]
    assert set(metadata["awq_alpha"]) == set(metadata["awq_folded_into"]) == set(metadata["module_loss"]) == \
        set(quantized)
    into = metadata["awq_folded_into"]
    assert into["model.layers.0.self_attn.q_proj"] == into["model.layers.0.self_attn.v_proj"] == \
        "model.layers.0.input_layernorm"
    assert into["model.layers.0.self_attn.o_proj"] == "model.layers.0.self_attn.v_proj"
    assert into["model.layers.1.mlp.up_proj"] == "model.layers.1.post_attention_layernorm"
    assert into["model.layers.1.mlp.down_proj"] == "model.layers.1.mlp.up_proj"
    alpha = metadata["awq_alpha"]
    # One α per group: the members that share an input share it.
    assert alpha["model.layers.1.self_attn.q_proj"] == alpha["model.layers.1.self_attn.k_proj"] == \
        alpha["model.layers.1.self_attn.v_proj"]
    assert alpha["model.layers.0.mlp.gate_proj"] == alpha["model.layers.0.mlp.up_proj"]
    assert all(0 < loss < 0.1 for loss in metadata["module_loss"].values())


def test_from_pretrained_reproduces_the_in_memory_awq_result(source_dir, packed, same_run_dequantized):
    out_dir, metadata = packed
    loaded = AutoModelForCausalLM.from_pretrained(out_dir).eval()
    expected = AutoModelForCausalLM.from_pretrained(same_run_dequantized).eval()
    assert torch.allclose(logits(loaded), logits(expected), atol=1e-5, rtol=0)
    # A real per-group grid: every group of 32 input columns of a row holds at most 2**4 distinct values.
    weight = loaded.model.layers[0].mlp.down_proj.weight.detach()
    assert max(len(torch.unique(weight[row, :32])) for row in range(weight.shape[0])) <= 16
    # The scales live in the checkpoint's norms (where a group's α > 0 made them differ from 1).
    source = dict(AutoModelForCausalLM.from_pretrained(source_dir).named_parameters())
    scaled_norms = {metadata["awq_folded_into"][name] for name, alpha in metadata["awq_alpha"].items()
                    if alpha > 0 and metadata["awq_folded_into"][name].endswith("layernorm")}
    assert scaled_norms
    parameters = dict(loaded.named_parameters())
    assert all(not torch.allclose(parameters[f"{norm}.weight"], source[f"{norm}.weight"]) for norm in scaled_norms)


@pytest.mark.parametrize("model_class, config_class, kv_heads", [
    (LlamaForCausalLM, LlamaConfig, 2),
    (LlamaForCausalLM, LlamaConfig, 1),  # grouped-query attention: o_proj gets no scale
    (Qwen2ForCausalLM, Qwen2Config, 2),  # q/k/v carry biases: v_proj's is divided too
])
def test_folding_scales_into_the_preceding_op_keeps_the_models_function(model_class, config_class, kv_heads):
    torch.manual_seed(0)
    model = model_class(config_class(**TINY, num_key_value_heads=kv_heads)).eval()
    if config_class is Qwen2Config:
        for layer in model.model.layers:  # freshly built biases are zero; make them matter
            torch.nn.init.normal_(layer.self_attn.v_proj.bias)
    before = logits(model)
    modules = dict(model.named_modules())
    norm_before = model.model.layers[0].input_layernorm.weight.detach().clone()
    for index in range(TINY["num_hidden_layers"]):
        groups, unscaled = decoder_scale_groups(modules, f"model.layers.{index}")
        assert (unscaled == [f"model.layers.{index}.self_attn.o_proj"]) is (kv_heads == 1)
        for group in groups:
            width = modules[group.members[0]].in_features
            scales = torch.exp(0.5 * torch.randn(width))  # a random positive s per input channel
            fold_scales(modules[group.previous], [modules[name] for name in group.members], scales)
    assert not torch.allclose(model.model.layers[0].input_layernorm.weight, norm_before)
    assert torch.allclose(logits(model), before, atol=1e-4, rtol=1e-4)


def test_awq_beats_round_to_nearest_where_activations_have_outliers(source_dir, tmp_path):
    # Real LLMs have a few input channels with activations far larger than the rest (what AWQ protects); give the
    # tiny model some without changing its function: those norm weights ×10, the matching columns ÷10.
    model = AutoModelForCausalLM.from_pretrained(source_dir).eval()
    salient = torch.tensor([3, 17, 40, 51])
    with torch.no_grad():
        for layer in model.model.layers:
            for norm, members in ((layer.input_layernorm, (layer.self_attn.q_proj, layer.self_attn.k_proj,
                                                           layer.self_attn.v_proj)),
                                  (layer.post_attention_layernorm, (layer.mlp.gate_proj, layer.mlp.up_proj))):
                norm.weight[salient] *= 10
                for member in members:
                    member.weight[:, salient] /= 10
    outliers_dir = save_with_tokenizer(model, tmp_path / "outliers")
    metadata = quantize_calibrated_version(outliers_dir, tmp_path / "awq", AWQ_4BIT_G32, CALIBRATION_TEXTS)
    assert metadata["format"] == "pack-quantized"
    source = AutoModelForCausalLM.from_pretrained(outliers_dir).eval()
    same_grid = AutoModelForCausalLM.from_pretrained(outliers_dir).eval()
    modules = dict(same_grid.named_modules())
    for name in metadata["quantized_modules"]:
        modules[name].weight.data = round_to_nearest(modules[name].weight.data, 4, 32, sym=True)
    tokenizer = AutoTokenizer.from_pretrained(outliers_dir)
    awq = AutoModelForCausalLM.from_pretrained(tmp_path / "awq").eval()
    assert 0 < mean_kl(source, awq, tokenizer) < 0.5 * mean_kl(source, same_grid, tokenizer)


def test_grouped_query_attention_leaves_o_proj_unscaled_and_still_packs(tmp_path):
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**TINY, num_key_value_heads=1, tie_word_embeddings=False)).eval()
    source_dir = save_with_tokenizer(model, tmp_path / "gqa")
    metadata = quantize_calibrated_version(source_dir, tmp_path / "awq", AWQ_4BIT_G32, CALIBRATION_TEXTS)
    assert metadata["format"] == "pack-quantized"
    assert metadata["awq_folded_into"]["model.layers.0.self_attn.o_proj"] is None
    assert metadata["awq_alpha"]["model.layers.0.self_attn.o_proj"] == 0.0
    assert metadata["awq_folded_into"]["model.layers.0.mlp.down_proj"] == "model.layers.0.mlp.up_proj"
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "awq").eval()
    assert torch.isfinite(logits(loaded)).all()


def test_asymmetric_awq_is_folded_but_written_dequantized_saying_why(source_dir, tmp_path):
    spec = CalibratedQuantizeSpec(method="awq", bits=4, group_size=32, sym=False)
    metadata = quantize_calibrated_version(source_dir, tmp_path / "v", spec, CALIBRATION_TEXTS)
    assert metadata["format"] == "dequantized" and "asymmetric" in metadata["format_note"]
    assert "quantization_config" not in json.loads((tmp_path / "v" / "config.json").read_text())
    assert metadata["awq_folded_into"]["model.layers.0.mlp.gate_proj"] == "model.layers.0.post_attention_layernorm"


def test_awq_on_another_architecture_keeps_per_weight_scales_and_says_why(tmp_path):
    torch.manual_seed(0)
    model = OPTForCausalLM(OPTConfig(vocab_size=512, hidden_size=64, ffn_dim=128, num_hidden_layers=2,
                                     num_attention_heads=2, word_embed_proj_dim=64, max_position_embeddings=256))
    source_dir = save_with_tokenizer(model.eval(), tmp_path / "opt")
    metadata = quantize_calibrated_version(source_dir, tmp_path / "awq", AWQ_4BIT_G32, CALIBRATION_TEXTS)
    assert metadata["format"] == "dequantized"
    assert "only for llama, mistral, qwen2 and qwen3 decoder layers; this model is opt" in metadata["format_note"]
    assert "awq_folded_into" not in metadata
    assert set(metadata["awq_alpha"]) == set(metadata["quantized_modules"])
    assert "quantization_config" not in json.loads((tmp_path / "awq" / "config.json").read_text())
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "awq").eval()
    assert torch.isfinite(logits(loaded)).all()


def test_a_planned_layer_outside_the_decoder_layers_cannot_be_folded():
    model = LlamaForCausalLM(LlamaConfig(**TINY))
    modules = dict(model.named_modules())
    problem = awq_fold_problem("llama", modules, [("model.layers.0", ["model.layers.0.mlp.up_proj"]),
                                                  ("", ["lm_head"])])
    assert problem and "lm_head" in problem
    assert awq_fold_problem("llama", modules, [("model.layers.0", ["model.layers.0.mlp.up_proj"])]) is None
