"""Load a model version directory (plain, bitsandbytes- or compressed-tensors-quantized, or base + LoRA adapter).

Also where a pipeline learns what it loads onto and with: the device it picks, that device in words and the
library versions, both recorded in a new version's metadata.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import torch

from workers.pipelines.errors import PipelineInputError
from workers.pipelines.memory import TORCH_DTYPE_BYTES, checkpoint_dtype, loaded_bytes, stored_tensors

# Files save_pretrained of a tokenizer may write. An adapter directory holding any of them carries its own
# tokenizer (one trained with new tokens does); a derived version copies them so it tokenizes identically.
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
    "chat_template.json",
)
WEIGHT_FILE_PATTERNS = ("*.safetensors", "*.safetensors.index.json")
# Written weights (quantized versions, merged LoRA) come in shards of at most this size (a 70B model in NF4 is
# ~35 GB): uploads, downloads and the seal's header checks then go file by file, and a cut transfer repeats one
# shard only.
MAX_SHARD_SIZE = "5GB"
# The libraries whose code decides the weights every pipeline writes, recorded for the audit trail.
RECORDED_LIBRARIES = ("torch", "transformers", "bitsandbytes")


def pick_device() -> str:
    """The device pipelines run on: the GPU when there is one, else the CPU."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def device_description(device: str) -> str:
    """The device in words for the metadata, e.g. 'cuda (NVIDIA H100 80GB HBM3)' or 'cpu'."""
    if device.startswith("cuda"):
        return f"{device} ({torch.cuda.get_device_name(torch.device(device))})"
    return device


def library_versions(*extra: str) -> dict[str, str]:
    """Versions of RECORDED_LIBRARIES and of `extra` (e.g. "peft", whose code defines an adapter), by name."""
    return {name: importlib.import_module(name).__version__ for name in (*RECORDED_LIBRARIES, *extra)}


def read_model_config(model_dir: Path) -> dict:
    """config.json of a version directory, or a PipelineInputError that says what is missing."""
    config_path = Path(model_dir) / "config.json"
    if not config_path.is_file():
        raise PipelineInputError(
            f"{config_path.name} is missing from {model_dir}; upload the config.json written by "
            "save_pretrained together with the weights."
        )
    try:
        return json.loads(config_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise PipelineInputError(f"config.json in {model_dir} is not valid JSON ({error}); re-upload it.") from error


def weight_files(model_dir: Path) -> list[Path]:
    """The safetensors weight files of a version directory, or a PipelineInputError naming what was found."""
    model_dir = Path(model_dir)
    files = sorted(path for pattern in WEIGHT_FILE_PATTERNS for path in model_dir.glob(pattern))
    if not files:
        pickles = sorted(path.name for path in model_dir.glob("*.bin")) + sorted(
            path.name for path in model_dir.glob("*.pt")
        )
        if pickles:
            raise PipelineInputError(
                f"{', '.join(pickles)} in {model_dir} is a pickle file; upload safetensors weights instead "
                "(save_pretrained(..., safe_serialization=True))."
            )
        raise PipelineInputError(
            f"No model.safetensors in {model_dir}; upload the weights written by save_pretrained."
        )
    return files


def check_weight_files_readable(model_dir: Path) -> list[Path]:
    """Open every safetensors header so a truncated or corrupt file is named before the slow load starts."""
    from safetensors import safe_open

    files = weight_files(model_dir)
    for path in files:
        if path.name.endswith(".index.json"):
            continue
        try:
            with safe_open(str(path), framework="pt") as handle:
                handle.keys()
        except Exception as error:  # safetensors raises its own SafetensorError, OSError or ValueError
            raise PipelineInputError(
                f"{path.name} in {model_dir} cannot be read as safetensors ({error}); the file is corrupt or "
                "truncated, re-upload it."
            ) from error
    return files


def build_skeleton(model_dir: Path):
    """The model config.json describes, built on the meta device: module names and shapes, no weights."""
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        config = AutoConfig.from_pretrained(str(model_dir))
        with torch.device("meta"):
            return AutoModelForCausalLM.from_config(config)
    except Exception as error:  # unknown model_type, an architecture that is not a causal LM
        raise PipelineInputError(
            f"config.json in {model_dir} does not describe a causal language model transformers can build "
            f"({type(error).__name__}: {error})."
        ) from error


def check_tensor_shapes(model_dir: Path, skeleton) -> None:
    """Compare the weight files' tensor shapes (headers only) with what config.json implies.

    transformers 5 does not check the shape of a weight it quantizes while loading: a checkpoint that does not
    match its config would be quantized into a broken model without any error.
    """
    from safetensors import safe_open

    expected = {name: tuple(tensor.shape) for name, tensor in skeleton.state_dict().items()}
    for path in weight_files(model_dir):
        if path.name.endswith(".index.json"):
            continue
        with safe_open(str(path), framework="pt") as handle:
            for name in handle.keys():
                shape = tuple(handle.get_slice(name).get_shape())
                if name in expected and shape != expected[name]:
                    raise PipelineInputError(
                        f"{name} in {path.name} has shape {list(shape)} but config.json in {model_dir} implies "
                        f"{list(expected[name])}; upload the config.json saved together with these weights."
                    )


def from_pretrained_checked(model_dir: Path, **from_pretrained_kwargs):
    """AutoModelForCausalLM.from_pretrained that turns bad checkpoints into PipelineInputError.

    transformers silently re-initialises weights missing from the checkpoint with random values; a registry
    must refuse such a model instead of quantizing or evaluating noise.
    """
    from transformers import AutoModelForCausalLM

    model_dir = Path(model_dir)
    try:
        model, loading_info = AutoModelForCausalLM.from_pretrained(
            str(model_dir), output_loading_info=True, **from_pretrained_kwargs
        )
    except (MemoryError, torch.OutOfMemoryError):
        raise  # not the user's input: the worker needs more memory
    except Exception as error:  # corrupt tensors, shape mismatches, unknown architectures
        raise PipelineInputError(
            f"The model in {model_dir} cannot be loaded ({type(error).__name__}: {error}); check that "
            "config.json and the .safetensors weights come from the same save_pretrained call."
        ) from error
    missing = sorted(loading_info.get("missing_keys") or ())
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise PipelineInputError(
            f"The weights in {model_dir} lack {len(missing)} tensor(s) that config.json requires ({shown}); "
            "upload the complete model.safetensors (all shards) written by save_pretrained."
        )
    return model


def load_tokenizer(model_dir: Path, *, adapter_dir: Path | None = None):
    """The tokenizer of an adapter directory when it ships one, else that of the model directory."""
    from transformers import AutoTokenizer

    source = Path(model_dir)
    if adapter_dir is not None and any((Path(adapter_dir) / name).is_file() for name in TOKENIZER_FILES):
        source = Path(adapter_dir)
    try:
        return AutoTokenizer.from_pretrained(str(source))
    except Exception as error:  # transformers raises OSError, ValueError or tokenizers' Exception
        raise PipelineInputError(
            f"The tokenizer in {source} cannot be loaded ({error}); upload tokenizer.json and "
            "tokenizer_config.json as written by save_pretrained."
        ) from error


def load_dtype(model_dir: Path, config: dict, dtype=None) -> str | None:
    """The dtype a version loads in: `dtype` when given, else the checkpoint's own (bf16 stays bf16).

    The weights' headers decide, not config.json's `dtype`/`torch_dtype`: a config that says float32 beside
    bfloat16 weights would otherwise upcast the whole model to twice its size. A quantized checkpoint returns
    None: transformers' "auto" then restores the dtype its own save_pretrained recorded.
    """
    if dtype is not None:
        return str(dtype).removeprefix("torch.")
    if "quantization_config" in config:
        return None
    return checkpoint_dtype(stored_tensors(model_dir))


def floating_dtype(model, *, frozen_only: bool = False) -> str | None:
    """The floating dtype holding most of the model's parameters ("bfloat16"); 4-bit weights (uint8) do not count.

    frozen_only: the base's parameters only, not the adapter being trained.
    """
    counts: dict[torch.dtype, int] = {}
    for parameter in model.parameters():
        if parameter.dtype.is_floating_point and not (frozen_only and parameter.requires_grad):
            counts[parameter.dtype] = counts.get(parameter.dtype, 0) + parameter.numel()
    return str(max(counts, key=counts.get)).removeprefix("torch.") if counts else None


def resident_bytes(model_dir: Path, *, adapter_dir: Path | None = None, dtype=None) -> int:
    """Bytes the version's weights (and adapter) take once load_causal_lm has loaded them, from the headers."""
    config = read_model_config(model_dir)
    tensors = stored_tensors(model_dir)
    total = loaded_bytes(tensors, load_dtype(model_dir, config, dtype))
    if is_compressed_tensors(config):
        total += _unpacking_growth(tensors, config)
    if adapter_dir is not None:
        total += loaded_bytes(stored_tensors(adapter_dir))
    return total


def load_causal_lm(
    model_dir: Path,
    *,
    adapter_dir: Path | None = None,
    device: str | None = None,
    dtype=None,
):
    """Load a version directory (and optionally a LoRA adapter on top) in eval mode; return (model, tokenizer).

    Weights load in the checkpoint's own dtype (load_dtype) straight onto `device`: on a GPU, device_map places
    each tensor there as it is read, so host memory never holds the whole model.
    """
    model_dir = Path(model_dir)
    device = device or pick_device()
    config = read_model_config(model_dir)
    check_weight_files_readable(model_dir)

    kwargs = {}
    chosen = load_dtype(model_dir, config, dtype)
    if chosen is not None:
        kwargs["dtype"] = getattr(torch, chosen)
    quantized = "quantization_config" in config
    if is_compressed_tensors(config):
        # Packed GPTQ (compressed-tensors) loads dequantized: plain Linear layers holding the grid values, which
        # the analysis hooks, evaluation and peft's LoRA layers all handle (peft has no compressed-tensors layer).
        from transformers import CompressedTensorsConfig

        kwargs["quantization_config"] = CompressedTensorsConfig(dequantize=True)
    if quantized or device != "cpu":
        # bitsandbytes layers must be created on their final device (moving them afterwards is not supported),
        # and a plain model read straight onto the GPU never has a full copy in host memory.
        kwargs["device_map"] = {"": device}
    model = from_pretrained_checked(model_dir, **kwargs)

    if adapter_dir is not None:
        model = load_adapter(model, Path(adapter_dir))

    model.eval()
    tokenizer = load_tokenizer(model_dir, adapter_dir=adapter_dir)
    return model, tokenizer


def _unpacking_growth(tensors, config: dict) -> int:
    """Bytes a packed checkpoint gains when load_causal_lm dequantizes it: each int32 of `weight_packed` holds
    32/bits weights, which become floats of the checkpoint's dtype (that of its scales)."""
    groups = (config.get("quantization_config") or {}).get("config_groups") or {}
    bits = min((group.get("weights") or {}).get("num_bits") or 8 for group in groups.values()) if groups else 8
    element_bytes = TORCH_DTYPE_BYTES.get(checkpoint_dtype(tensors) or "float32", 4)
    return sum(tensor.elements * (32 // bits) * element_bytes - tensor.stored_bytes
               for tensor in tensors if tensor.name.endswith(".weight_packed"))


def is_compressed_tensors(config: dict) -> bool:
    """Whether config.json describes a compressed-tensors checkpoint (our packed GPTQ versions)."""
    return (config.get("quantization_config") or {}).get("quant_method") == "compressed-tensors"


def load_adapter(model, adapter_dir: Path):
    """Wrap a loaded base model with the PEFT adapter in adapter_dir."""
    from peft import PeftModel

    if not (adapter_dir / "adapter_config.json").is_file():
        raise PipelineInputError(
            f"adapter_config.json is missing from {adapter_dir}; upload the files written by the PEFT "
            "model's save_pretrained."
        )
    adapter_weights = adapter_dir / "adapter_model.safetensors"
    if not adapter_weights.is_file():
        raise PipelineInputError(
            f"adapter_model.safetensors is missing from {adapter_dir}; upload the adapter weights as safetensors."
        )
    try:
        return PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=False)
    except Exception as error:  # mismatched target modules or shapes, corrupt file
        raise PipelineInputError(
            f"The adapter in {adapter_dir} cannot be applied to this model ({type(error).__name__}: {error}); "
            "check that it was trained on this base version and that adapter_model.safetensors is intact."
        ) from error


def linear_module_names(model) -> list[str]:
    """Qualified names of the model's Linear layers, bitsandbytes' quantized Linear layers included."""
    linear_types: tuple[type, ...] = (torch.nn.Linear,)
    try:
        import bitsandbytes as bnb

        linear_types += (bnb.nn.Linear4bit, bnb.nn.Linear8bitLt)
    except ImportError:
        pass
    return [name for name, module in model.named_modules() if isinstance(module, linear_types)]
