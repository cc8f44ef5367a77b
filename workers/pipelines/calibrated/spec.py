"""Settings of a calibrated quantization (GPTQ, AWQ) and their checks: plain Python with no torch or Django, so the web
process judges a request when it arrives."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from workers.pipelines.errors import PipelineInputError

# Methods of the quantize job that need calibration text, and the bit widths each does (AWQ is a 4-bit method:
# its search of activation-aware scales is what makes 4 bits work; AutoAWQ and GPTQModel offer only 4).
CALIBRATED_METHODS = ("gptq", "awq")
BITS = {"gptq": (2, 3, 4, 8), "awq": (4,)}
GROUP_SIZES = (-1, 32, 64, 128)
# Embeddings, norms and the output head stay in full precision unless the request says otherwise: they are few
# parameters and the most sensitive ones (GPTQ paper, section 5; every GPTQ library's default).
DEFAULT_SKIP_MODULES = r"(^|\.)(lm_head|embed_tokens|embed_positions|wte|wpe)$|norm"
DEFAULT_CALIBRATION_SAMPLES = 128
MAX_CALIBRATION_SAMPLES = 100_000
MIN_CALIBRATION_RECORDS = 8  # fewer texts than this give a Hessian too poor to beat round-to-nearest
MIN_MAX_LENGTH, MAX_MAX_LENGTH = 8, 32_768
MAX_KEEP_SENSITIVE = 1_000
# Projections that vLLM and SGLang load as one fused module per decoder layer (qkv_proj, gate_up_proj); a fused
# module takes one quantization scheme, so its parts are quantized or kept together.
FUSED_PROJECTIONS = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))


@dataclass(frozen=True)
class CalibratedQuantizeSpec:
    """A GPTQ or AWQ request: bits, group size, damping (GPTQ's damp_percent), symmetric grid, act-order (GPTQ),
    calibration budget and which Linear layers (regular expressions searched in module names) are quantized."""

    method: str = "gptq"
    bits: int = 4
    group_size: int = 128
    damping: float = 0.01
    sym: bool = True
    desc_act: bool = False
    calibration_samples: int | None = None  # None: every record, at most DEFAULT_CALIBRATION_SAMPLES
    max_length: int = 512
    modules: str | None = None  # None: every Linear layer
    skip_modules: tuple[str, ...] = (DEFAULT_SKIP_MODULES,)
    keep: tuple[str, ...] = ()  # exact module names kept in full precision (keep_sensitive resolves to these)


def _field_error(field: str, message: str) -> PipelineInputError:
    error = PipelineInputError(message)
    error.field = field
    return error


def validate_calibrated_spec(spec: CalibratedQuantizeSpec) -> None:
    """Raise PipelineInputError (with .field) for the first setting the method cannot do."""
    if spec.method not in CALIBRATED_METHODS:
        raise _field_error("method", f"Unknown calibrated method {spec.method!r}; choose gptq or awq.")
    allowed_bits = BITS[spec.method]
    if isinstance(spec.bits, bool) or spec.bits not in allowed_bits:
        raise _field_error("bits", f"bits must be one of {', '.join(map(str, allowed_bits))} for "
                                   f"{spec.method}, not {spec.bits!r}.")
    if isinstance(spec.group_size, bool) or spec.group_size not in GROUP_SIZES:
        raise _field_error("group_size", f"group_size must be one of {', '.join(map(str, GROUP_SIZES))} "
                                         f"(-1 = one scale per output channel), not {spec.group_size!r}.")
    damping = spec.damping
    if isinstance(damping, bool) or not isinstance(damping, (int, float)) or not math.isfinite(damping) \
            or not 0 < damping <= 1:
        raise _field_error("damping", f"damping is the fraction of the Hessian's mean diagonal added to it, in "
                                      f"(0, 1] such as 0.01; got {damping!r}.")
    for name in ("sym", "desc_act"):
        if not isinstance(getattr(spec, name), bool):
            raise _field_error(name, f"{name} must be true or false, not {getattr(spec, name)!r}.")
    if spec.desc_act and spec.method != "gptq":
        raise _field_error("desc_act", "desc_act (act-order) is a GPTQ setting; AWQ rounds every column on its own "
                                       "grid. Turn it off for awq.")
    samples = spec.calibration_samples
    if samples is not None and (isinstance(samples, bool) or not isinstance(samples, int)
                                or not 1 <= samples <= MAX_CALIBRATION_SAMPLES):
        raise _field_error("calibration_samples", f"calibration_samples must be a whole number from 1 to "
                                                  f"{MAX_CALIBRATION_SAMPLES:,}; got {samples!r}.")
    length = spec.max_length
    if isinstance(length, bool) or not isinstance(length, int) or not MIN_MAX_LENGTH <= length <= MAX_MAX_LENGTH:
        raise _field_error("max_length", f"max_length (tokens per calibration sample) must be from "
                                         f"{MIN_MAX_LENGTH} to {MAX_MAX_LENGTH:,}; got {length!r}.")
    for field, patterns in (("modules", [spec.modules] if spec.modules is not None else []),
                            ("skip_modules", list(spec.skip_modules))):
        for pattern in patterns:
            if not isinstance(pattern, str) or not pattern:
                raise _field_error(field, f"{field} must hold regular expressions over module names such as "
                                          f"'mlp' or 'layers\\.0\\.'; got {pattern!r}.")
            try:
                re.compile(pattern)
            except re.error as error:
                raise _field_error(field, f"{field} {pattern!r} is not a valid regular expression ({error}).") \
                    from None


def skip_patterns(skip_modules) -> tuple[str, ...]:
    """skip_modules as given (one regex, a list of them, or nothing) as a tuple of regexes."""
    if skip_modules is None:
        return (DEFAULT_SKIP_MODULES,)
    if isinstance(skip_modules, str):
        return (skip_modules,)
    return tuple(skip_modules)


def plan_modules(linear_names: list[str], spec: CalibratedQuantizeSpec) -> tuple[list[str], dict[str, str]]:
    """(names to quantize, {kept name: reason}) for these Linear layers; PipelineInputError (with .field) for a
    pattern that matches none of them or a plan with nothing left to quantize."""
    if spec.modules is not None:
        chosen = [name for name in linear_names if re.search(spec.modules, name)]
        if not chosen:
            raise _field_error("modules", f"modules {spec.modules!r} matches no Linear layer of this model; use a "
                                          f"pattern matching names such as {', '.join(linear_names[:3])}.")
    else:
        chosen = list(linear_names)
    kept: dict[str, str] = {}
    for pattern in spec.skip_modules:
        matched = [name for name in chosen if re.search(pattern, name)]
        if not matched and pattern != DEFAULT_SKIP_MODULES:
            raise _field_error("skip_modules", f"skip_modules {pattern!r} matches none of the layers chosen for "
                                               f"quantization ({', '.join(chosen[:3])}, ...).")
        for name in matched:
            kept.setdefault(name, f"skip_modules {pattern!r}")
    for name in spec.keep:
        if name in chosen:
            kept.setdefault(name, "keep_sensitive")
    _keep_fused_siblings(chosen, kept)
    planned = [name for name in chosen if name not in kept]
    if not planned:
        raise _field_error("skip_modules", "Nothing left to quantize: modules, skip_modules and keep_sensitive "
                                           f"together exclude all {len(chosen)} chosen Linear layers.")
    return planned, kept


def _keep_fused_siblings(chosen: list[str], kept: dict[str, str]) -> None:
    """Keep, in place, every chosen projection that serving engines fuse with a kept one."""
    chosen_set = set(chosen)
    for name, reason in list(kept.items()):
        parent, _, leaf = name.rpartition(".")
        for fused in FUSED_PROJECTIONS:
            if leaf not in fused:
                continue
            for sibling in fused:
                sibling_name = f"{parent}.{sibling}"
                if sibling_name in chosen_set and sibling_name not in kept:
                    kept[sibling_name] = (f"served fused with {name} (kept: {reason}); vLLM and SGLang load "
                                          f"{'/'.join(fused)} of a layer as one module with one scheme")
