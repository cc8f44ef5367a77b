"""The serving commands of a calibrated version follow how it was written, not which method made it."""

from registry.models import ModelVersion, RegisteredModel
from registry.serving import serving_commands


def calibrated_version(method: str, format_: str) -> ModelVersion:
    return ModelVersion(model=RegisteredModel(name="credit-llm"), number=2, status=ModelVersion.Status.READY,
                        kind=ModelVersion.Kind.QUANTIZED,
                        quantization={"method": method, "bits": 4, "format": format_})


def test_a_packed_awq_version_is_served_like_a_packed_gptq_one():
    awq = serving_commands(calibrated_version("awq", "pack-quantized"))
    gptq = serving_commands(calibrated_version("gptq", "pack-quantized"))
    assert awq["command"] == gptq["command"] == "vllm serve ./credit-llm-v2"
    assert awq["sglang"] == gptq["sglang"] == "python -m sglang.launch_server --model-path ./credit-llm-v2"
    assert "AWQ 4-bit compressed-tensors pack-quantized" in awq["note"]


def test_a_dequantized_awq_version_says_it_saves_no_memory():
    note = serving_commands(calibrated_version("awq", "dequantized"))["note"]
    assert "dequantized" in note and "without a memory saving" in note
