"""The adapter itself: which layers it adapts, attaching it to a frozen (possibly quantized) base, saving it."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from workers.pipelines.errors import PipelineInputError
from workers.pipelines.loading import linear_module_names
from workers.pipelines.specs import LoraSpec

# Attention projections per architecture (config.json's model_type). All four rather than peft's q/v default:
# the LoRA paper's ablation (Hu et al. 2021, table 5) found more adapted weight types at a low rank better than
# fewer at a higher rank. Architectures not listed fall back to the Linear layers inside attention blocks.
ATTENTION_PROJECTIONS: dict[str, tuple[str, ...]] = {
    **dict.fromkeys(
        ("llama", "mistral", "mixtral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "granite", "olmo"),
        ("q_proj", "k_proj", "v_proj", "o_proj"),
    ),
    "phi3": ("qkv_proj", "o_proj"),
    "gpt2": ("c_attn", "attn.c_proj"),
    "gpt_neox": ("query_key_value", "attention.dense"),
    "opt": ("q_proj", "k_proj", "v_proj", "out_proj"),
}


def default_target_modules(model) -> tuple[str, ...]:
    """The attention projections to adapt when the request names none."""
    model_type = getattr(model.config, "model_type", "")
    if model_type in ATTENTION_PROJECTIONS:
        return ATTENTION_PROJECTIONS[model_type]
    # Unknown architecture: every Linear inside a module whose name says attention, as "parent.leaf" so that a
    # leaf name the MLP shares (gpt2's c_proj) does not pull the MLP in too.
    names = set()
    for qualified in linear_module_names(model):
        parts = qualified.split(".")
        if len(parts) >= 2 and ("attn" in parts[-2].lower() or "attention" in parts[-2].lower()):
            names.add(".".join(parts[-2:]))
    if not names:
        raise PipelineInputError(
            f"No attention layers were recognised in this {model_type or 'unknown'} model; name the layers to "
            f"adapt in target_modules. Its Linear layers are: {', '.join(_linear_leaf_names(model))}."
        )
    return tuple(sorted(names))


def _linear_leaf_names(model) -> list[str]:
    """Distinct last components of the Linear layer names, e.g. q_proj, up_proj, lm_head."""
    return sorted({name.rsplit(".", 1)[-1] for name in linear_module_names(model)})


def check_target_modules(model, target_modules: tuple[str, ...]) -> None:
    """Raise PipelineInputError naming every target that matches no Linear layer (peft's suffix matching)."""
    linear_names = linear_module_names(model)
    unmatched = [
        target
        for target in target_modules
        if not any(name == target or name.endswith("." + target) for name in linear_names)
    ]
    if unmatched:
        raise PipelineInputError(
            f"target_modules {unmatched} match no Linear layer of this model; choose among its Linear layers: "
            f"{', '.join(_linear_leaf_names(model))}."
        )


def quantization_of(config: dict) -> dict | None:
    """The base's quantization (bitsandbytes or compressed-tensors) from config.json, or None for full precision."""
    quantization = config.get("quantization_config")
    if not quantization:
        return None
    method = quantization.get("quant_method", "unknown")
    if method == "compressed-tensors":  # our packed GPTQ: "compressed-tensors-int4"
        bits = {group.get("weights", {}).get("num_bits") for group in quantization.get("config_groups", {}).values()}
        method = f"{method}-int{'/'.join(str(b) for b in sorted(bits, key=str))}"
    elif quantization.get("load_in_4bit"):
        method = f"{method}-{quantization.get('bnb_4bit_quant_type', '4bit')}"
    elif quantization.get("load_in_8bit"):
        method = f"{method}-int8"
    return {"method": method, "config": quantization}


def attach_adapter(
    model, spec: LoraSpec, target_modules: tuple[str, ...], *, quantized: bool, base_reference: str | None
):
    """Freeze the base in its own dtype and wrap it with fresh LoRA matrices (on a 4-bit base: QLoRA)."""
    from peft import LoraConfig, get_peft_model

    if quantized:
        _keep_4bit_weights_differentiable(model)
    # Not peft's prepare_model_for_kbit_training: it casts every bf16/fp16 parameter that is not 4-bit to float32
    # (embeddings, lm_head and norms: 3.2 GB instead of 1.6 GB for a 3B Llama). The base stays frozen in its own
    # dtype; the adapter matrices are float32 (peft's autocast_adapter_dtype) and the loss is float32.
    for parameter in model.parameters():
        parameter.requires_grad = False
    if spec.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    config = LoraConfig(
        r=spec.r,
        lora_alpha=spec.alpha,
        lora_dropout=spec.dropout,
        target_modules=list(target_modules),
        bias="none",
        task_type="CAUSAL_LM",
    )
    peft_model = get_peft_model(model, config)
    # Set after get_peft_model, which would otherwise replace it with the local scratch path of the base.
    peft_model.peft_config["default"].base_model_name_or_path = base_reference or ""
    peft_model.train()
    return peft_model


def _keep_4bit_weights_differentiable(model) -> None:
    """Stop bitsandbytes from repacking 4-bit weights for CPU inference during our evaluation passes.

    On CPUs with AVX512-BF16, bitsandbytes 0.50's Linear4bit repacks its weights at the first forward pass in
    eval mode (bfloat16 scales, a kernel without autograd). Training after such a pass backpropagates through
    that kernel without a gradient formula, so the adapters of earlier layers get wrong gradients. The
    module's own switch keeps every pass on the ordinary differentiable path.
    """
    import bitsandbytes as bnb

    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False


def save_adapter(model, tokenizer, out_dir: Path) -> list[str]:
    """Write adapter (safetensors only) and tokenizer; out_dir ends up holding all of them or nothing."""

    def write(staging: Path) -> None:
        # save_embedding_layers=False: embeddings are never adapted here, and peft's "auto" would look the base's
        # name up on the Hugging Face Hub (a network call from a worker, for a name that is ours, not the Hub's).
        model.save_pretrained(str(staging), safe_serialization=True, save_embedding_layers=False)
        # peft also writes a boilerplate model card; the registry's metadata is the version's real description.
        (staging / "README.md").unlink(missing_ok=True)
        tokenizer.save_pretrained(str(staging))

    return write_via_staging(out_dir, write)


def write_via_staging(out_dir: Path, write: Callable[[Path], None]) -> list[str]:
    """Run write() into a hidden sibling of out_dir and rename it into place, so a failure leaves nothing behind."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".partial", dir=out_dir.parent))
    try:
        write(staging)
        if out_dir.exists():
            out_dir.rmdir()  # empty, checked by the caller; rename cannot replace it on every platform
        staging.rename(out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return sorted(path.name for path in out_dir.iterdir())
