"""The per-layer numbers of the analysis pinned against a plain float64 computation from captured activations."""

import copy
import math

import pytest
import torch

from workers.pipelines.analysis import chunks, layers, module_errors
from workers.pipelines.analysis.logits import ReferenceDistribution
from workers.pipelines.analysis.run import _output_vocab_size
from workers.pipelines.loading import load_causal_lm
from workers.pipelines.tiny_model import SAMPLE_TEXTS, build_tiny_llama


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    return load_causal_lm(build_tiny_llama(tmp_path_factory.mktemp("reference") / "model", train_steps=10),
                          device="cpu")


def perturbed_copy(model, *, scale, dtype):
    """Noise on the Linear weights only, as a quantization would leave embeddings and norms."""
    candidate = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for module in candidate.modules():
            if isinstance(module, torch.nn.Linear):
                module.weight.add_(torch.randn(module.weight.shape, generator=generator) * scale)
    return candidate.to(dtype)


def direct_layer_numbers(reference_model, candidate_model, sequences):
    """Every Linear's output in float64, hooked in plain passes; the local output by calling the candidate's module
    on the reference module's input; every sum over all positions of all sequences at once."""
    linears = {name: module for name, module in reference_model.named_modules()
               if isinstance(module, torch.nn.Linear)}
    candidate_modules = dict(candidate_model.named_modules())
    outputs = {name: {"reference": [], "local": [], "own": []} for name in linears}

    def record(model_modules, role):
        def hooks(name):
            def hook(module, args, output):
                outputs[name][role].append(output.double().reshape(-1, output.shape[-1]))
                if role == "reference":
                    local = candidate_modules[name](args[0].to(candidate_model.dtype))
                    outputs[name]["local"].append(local.double().reshape(-1, local.shape[-1]))
            return hook

        return [model_modules[name].register_forward_hook(hooks(name)) for name in linears]

    with torch.no_grad():
        for model, role in ((reference_model, "reference"), (candidate_model, "own")):
            handles = record(dict(model.named_modules()), role)
            for sequence in sequences:
                model(input_ids=sequence, use_cache=False)
            for handle in handles:
                handle.remove()
    numbers = {}
    for name, recorded in outputs.items():
        reference, local, own = (torch.cat(recorded[role]) for role in ("reference", "local", "own"))
        relative_error = ((local - reference) ** 2).sum() / (reference ** 2).sum()
        weight_reference = linears[name].weight.double()
        weight_candidate = candidate_modules[name].weight.double()
        numbers[name] = {
            "relative_error": relative_error.item(),
            "relative_error_propagated": (((own - reference) ** 2).sum() / (reference ** 2).sum()).item(),
            "cosine": ((local * reference).sum() / (local.norm() * reference.norm())).item(),
            "sqnr_db": -10 * math.log10(relative_error.item()),
            "max_error_channel": int(((local - reference) ** 2).sum(0).argmax()),
            "weight_relative_error": ((weight_candidate - weight_reference).norm() / weight_reference.norm()).item(),
        }
    return numbers


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("block_elements", [None, 1000])  # one block per module and sequence, or many
def test_layer_numbers_match_a_direct_float64_computation(reference, monkeypatch, dtype, block_elements):
    model, tokenizer = reference
    candidate = perturbed_copy(model, scale=0.003, dtype=dtype)
    if block_elements:
        monkeypatch.setattr(module_errors.Float32Scratch, "block_elements", staticmethod(lambda device: block_elements))
    sequences = chunks.layer_sequences(
        chunks.EvaluationChunks(tokenizer, SAMPLE_TEXTS, context_length=64, max_tokens=1024,
                                vocab_size=_output_vocab_size(model)), 100)
    assert [sequence.shape[1] for sequence in sequences] == [64, 36]

    with torch.no_grad():
        weights = layers.weight_errors(model, candidate)
        reported = layers.layer_errors(model, candidate, sequences, weights, 0, torch.device("cpu"),
                                       lambda percent, message: None)
    expected = direct_layer_numbers(model, candidate, sequences)

    assert [layer["name"] for layer in reported] == list(expected)
    for layer in reported:
        direct = expected[layer["name"]]
        for key in ("relative_error", "relative_error_propagated", "sqnr_db", "weight_relative_error"):
            assert layer[key] == pytest.approx(direct[key], rel=1e-6), (layer["name"], key)
        # float32 products and sums within a block: the cosine to a few float32 units (1.2e-7 each).
        assert layer["cosine"] == pytest.approx(direct["cosine"], abs=5e-7), layer["name"]
        assert layer["max_error_channel"] == direct["max_error_channel"], layer["name"]
        assert layer["ablation_kl"] is None
    if dtype == torch.float32:
        # The first layer's attention sees the same inputs in both models: local and propagated errors coincide.
        first = next(layer for layer in reported if layer["name"] == "model.layers.0.self_attn.q_proj")
        assert first["relative_error"] == pytest.approx(first["relative_error_propagated"], rel=1e-6)
        assert first["relative_error"] > 0


def direct_ablation_kl(reference_model, candidate_model, name, sequences):
    """Mean KL(P || Q) over every position, Q from a whole pass of a copy of the reference holding the candidate's
    module `name`, both log-softmaxes in float64."""
    ablated = copy.deepcopy(reference_model)
    parent_name, _, child = name.rpartition(".")
    setattr(ablated.get_submodule(parent_name), child, copy.deepcopy(candidate_model.get_submodule(name)))
    values = []
    with torch.no_grad():
        for sequence in sequences:
            log_p = torch.log_softmax(reference_model(input_ids=sequence).logits.double(), dim=-1)
            log_q = torch.log_softmax(ablated(input_ids=sequence).logits.double(), dim=-1)
            values.append((log_p.exp() * (log_p - log_q)).sum(dim=-1).reshape(-1))
    return torch.cat(values).mean().item()


@pytest.mark.parametrize("block_elements", [None, 1000])
def test_ablation_kl_matches_whole_float64_passes_and_is_zero_for_an_unchanged_module(reference, monkeypatch,
                                                                                       block_elements):
    model, tokenizer = reference
    candidate = perturbed_copy(model, scale=0.003, dtype=torch.float32)
    unchanged = "model.layers.1.self_attn.k_proj"
    candidate.get_submodule(unchanged).weight.data.copy_(model.get_submodule(unchanged).weight)
    if block_elements:
        monkeypatch.setattr(module_errors.Float32Scratch, "block_elements", staticmethod(lambda device: block_elements))
    sequences = chunks.layer_sequences(
        chunks.EvaluationChunks(tokenizer, SAMPLE_TEXTS, context_length=64, max_tokens=1024,
                                vocab_size=_output_vocab_size(model)), 100)
    units = layers._linear_units(model)

    with torch.no_grad():
        reported = layers.layer_errors(model, candidate, sequences, {}, len(units), torch.device("cpu"),
                                       lambda percent, message: None)

    by_name = {layer["name"]: layer["ablation_kl"] for layer in reported}
    assert by_name[unchanged] == 0.0
    for name in ("model.layers.0.self_attn.q_proj", "model.layers.1.mlp.down_proj", "lm_head"):
        direct = direct_ablation_kl(model, candidate, name, sequences)
        assert direct > 0
        assert by_name[name] == pytest.approx(direct, rel=1e-4), name


def test_reference_distribution_kl_is_infinite_where_the_candidate_rules_out_a_likely_token():
    reference_logits = torch.tensor([[2.0, 1.0, float("-inf")], [0.5, 0.5, 0.5]])
    candidate_logits = torch.tensor([[2.0, 1.0, 3.0], [0.5, float("-inf"), 0.5]])
    kl = ReferenceDistribution(reference_logits, 1 << 17).kl_rows(candidate_logits)
    log_p = torch.log_softmax(reference_logits.double()[0, :2], dim=-1)
    log_q = torch.log_softmax(candidate_logits.double()[0], dim=-1)[:2]
    assert kl[0].item() == pytest.approx((log_p.exp() * (log_p - log_q)).sum().item(), rel=1e-6)
    assert kl[1].item() == math.inf
