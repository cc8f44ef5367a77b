"""The settings of each pipeline and their checks: plain dataclasses and validators with no torch or Django, so
the web process checks a request when it arrives without loading the ML stack (each web worker stays ~400 MB
lighter). The pipelines import their spec from here."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from workers.pipelines.errors import PipelineInputError

# --- quantization ------------------------------------------------------------------------------------------

METHODS = ("nf4", "fp4", "int8")
COMPUTE_DTYPES = ("float16", "bfloat16", "float32")


@dataclass
class QuantizeSpec:
    """What the user asked for: the bitsandbytes method and its settings."""

    method: str
    compute_dtype: str = "float32"
    double_quant: bool = False
    skip_modules: list[str] = field(default_factory=lambda: ["lm_head"])


def validate_quantize_spec(spec: QuantizeSpec) -> None:
    """Raise PipelineInputError when the spec names an unknown method or dtype or contradicts itself."""
    if spec.method not in METHODS:
        raise PipelineInputError(f"Unknown quantization method {spec.method!r}; choose one of {', '.join(METHODS)}.")
    if spec.compute_dtype not in COMPUTE_DTYPES:
        raise PipelineInputError(
            f"Unknown compute dtype {spec.compute_dtype!r}; choose one of {', '.join(COMPUTE_DTYPES)}."
        )
    if not isinstance(spec.double_quant, bool):
        raise PipelineInputError(f"double_quant must be true or false, not {spec.double_quant!r}.")
    if spec.double_quant and spec.method == "int8":
        raise PipelineInputError(
            "double_quant applies only to the 4-bit methods (nf4, fp4); turn it off for int8."
        )
    if not isinstance(spec.skip_modules, list) or not all(
        isinstance(name, str) and name.strip() for name in spec.skip_modules
    ):
        raise PipelineInputError(
            f"skip_modules must be a list of module names such as ['lm_head'], not {spec.skip_modules!r}."
        )
    for pattern in spec.skip_modules:
        try:
            re.compile(pattern)
        except re.error as error:
            raise PipelineInputError(
                f"skip_modules entry {pattern!r} is not a valid module name or pattern ({error})."
            ) from error


def is_skipped(module_name: str, skip_modules: list[str]) -> bool:
    """Whether transformers leaves module_name unquantized for these skip_modules (its own matching rules)."""
    # Reuse transformers' matcher (prefix, regex or suffix) so the check agrees exactly with what it skips.
    from transformers.quantizers.quantizers_utils import should_convert_module

    return not should_convert_module(module_name, skip_modules)


# --- analysis ----------------------------------------------------------------------------------------------

MIN_MAX_TOKENS = 16
MAX_MAX_TOKENS = 1_000_000
MAX_TOP_K = 100
DEFAULT_CONTEXT_LENGTH = 512
MAX_CONTEXT_LENGTH = 131_072
MAX_LAYER_TOKENS = 65_536
MAX_ABLATION_TOP_N = 64
MAX_BATCH_SIZE = 256
# The shortest chunk worth scoring: BOS, a context half and at least two scored positions (see analysis.chunks).
MIN_CHUNK_LENGTH = 6


@dataclass(frozen=True)
class AnalysisSpec:
    """What to analyse: token budget, top-k, context, and the bounds of the per-layer phase."""

    max_tokens: int = 4096
    top_k: int = 5
    context_length: int | None = None  # None: min(model's max positions, 512)
    layer_tokens: int = 256  # tokens of the first chunk(s) the per-layer phase runs on; 0 skips it
    ablation_top_n: int = 4  # most sensitive modules (by local relative error) that get ablation_kl
    batch_size: int = 1  # chunks per forward pass


def validate_analysis_spec(spec: AnalysisSpec) -> None:
    """Raise PipelineInputError for settings out of range; cheap enough to call when the request arrives."""
    checks = (
        ("max_tokens", spec.max_tokens, MIN_MAX_TOKENS, MAX_MAX_TOKENS),
        ("top_k", spec.top_k, 1, MAX_TOP_K),
        ("layer_tokens", spec.layer_tokens, 0, MAX_LAYER_TOKENS),
        ("ablation_top_n", spec.ablation_top_n, 0, MAX_ABLATION_TOP_N),
        ("batch_size", spec.batch_size, 1, MAX_BATCH_SIZE),
    )
    if spec.context_length is not None:
        checks += (("context_length", spec.context_length, MIN_CHUNK_LENGTH, MAX_CONTEXT_LENGTH),)
    for name, value, low, high in checks:
        if isinstance(value, bool) or not isinstance(value, int):
            raise PipelineInputError(f"{name} must be a whole number between {low:,} and {high:,}; got {value!r}.")
        if not low <= value <= high:
            raise PipelineInputError(f"{name} must be between {low:,} and {high:,}; got {value:,}.")


# --- LoRA updates ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class LoraSpec:
    """Settings of one LoRA update. `epochs`, when given, replaces `steps` (one step = one optimizer update)."""

    r: int = 8
    alpha: float = 16
    dropout: float = 0.05
    target_modules: tuple[str, ...] | None = None  # None: the attention projections of the architecture
    steps: int = 50
    epochs: int | None = None
    learning_rate: float = 2e-4
    batch_size: int = 4
    gradient_accumulation: int = 1
    max_length: int = 128
    seed: int = 0
    eval_fraction: float = 0.2
    gradient_checkpointing: bool = False  # trades ~30% speed for activation memory on long sequences


def validate_lora_spec(spec: LoraSpec) -> None:
    """Raise PipelineInputError naming every setting out of range; cheap, so usable when the request arrives."""
    problems: list[str] = []

    def check_integer(name: str, low: int, high: int) -> None:
        value = getattr(spec, name)
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            problems.append(f"{name} must be an integer from {low} to {high}, got {value!r}")

    def check_number(name: str, low: float, high: float, *, low_open: bool, high_open: bool) -> None:
        value = getattr(spec, name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            problems.append(f"{name} must be a number, got {value!r}")
            return
        above_low = value > low if low_open else value >= low
        below_high = value < high if high_open else value <= high
        if not (above_low and below_high):
            interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
            problems.append(f"{name} must be in {interval}, got {value!r}")

    check_integer("r", 1, 256)
    check_number("alpha", 0, 4096, low_open=True, high_open=False)
    check_number("dropout", 0, 1, low_open=False, high_open=True)
    check_integer("steps", 1, 100_000)
    if spec.epochs is not None:
        check_integer("epochs", 1, 1_000)
    check_number("learning_rate", 0, 1, low_open=True, high_open=False)
    check_integer("batch_size", 1, 1_024)
    check_integer("gradient_accumulation", 1, 1_024)
    check_integer("max_length", 2, 131_072)
    check_integer("seed", 0, 2**32 - 1)
    check_number("eval_fraction", 0, 0.5, low_open=False, high_open=False)
    if not isinstance(spec.gradient_checkpointing, bool):
        problems.append(f"gradient_checkpointing must be true or false, got {spec.gradient_checkpointing!r}")
    targets = spec.target_modules
    if targets is not None:
        if isinstance(targets, str) or not isinstance(targets, (list, tuple)) or not targets:
            problems.append(
                f"target_modules must be a non-empty list of layer names such as ['q_proj', 'v_proj'], "
                f"or left out for the architecture's attention projections; got {targets!r}"
            )
        elif not all(isinstance(name, str) and name.strip() for name in targets):
            problems.append(f"target_modules must hold non-empty layer names, got {list(targets)!r}")
    if problems:
        raise PipelineInputError("Invalid LoRA settings: " + "; ".join(problems) + ".")
