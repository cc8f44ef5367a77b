"""Per-layer errors: where in the candidate the drift comes from, module by module.

The per-layer phase (hooks on every Linear, bitsandbytes and LoRA layers included) runs on the first
`layer_tokens` tokens of the first chunk(s) only, every position counted, because it holds the reference's
Linear inputs and outputs for one sequence at a time and runs one extra forward per ablated module. The
ablations reuse the reference logits of the capture pass and its decoder-layer outputs (held for all layer
sequences, like those logits): the layers before the ablated module replay their recorded outputs, so only the
rest of the model runs again, with results identical to a whole pass.

The candidate's modules are compared as the candidate's pass reaches them; the sums and weight errors are in
module_errors (float32 row blocks added in float64, reused buffers, read back once).
"""

from __future__ import annotations

import torch

from workers.pipelines.analysis.logits import ReferenceDistribution, model_logits
from workers.pipelines.analysis.module_errors import (
    Float32Scratch,
    ModuleOutputErrors,
    serial_on_cpu,
    weight_relative_errors,
)


def _linear_units(model) -> dict[str, torch.nn.Module]:
    """Linear layers by name, bitsandbytes' included; a LoRA-wrapped layer counts as one unit (its own name).

    Names drop PEFT's "base_model.model." prefix so a LoRA model matches its plain base model.
    """
    units: dict[str, torch.nn.Module] = {}
    inside_lora: list[str] = []
    for name, module in model.named_modules():
        if any(name.startswith(prefix + ".") for prefix in inside_lora):
            continue
        is_lora = hasattr(module, "base_layer") and hasattr(module, "lora_A")
        if is_lora:
            inside_lora.append(name)
        if is_lora or isinstance(module, torch.nn.Linear):
            units[name.removeprefix("base_model.model.")] = module
    return units


def weight_errors(reference_model, candidate_model) -> dict[str, float | None]:
    """Relative weight error of every Linear module the two models share, by name."""
    reference_units = _linear_units(reference_model)
    candidate_units = _linear_units(candidate_model)
    return weight_relative_errors({name: (unit, candidate_units[name]) for name, unit in reference_units.items()
                                   if name in candidate_units})


def layer_errors(reference_model, candidate_model, sequences, weight_errors, ablation_top_n, device,
                 report) -> list[dict]:
    """Per Linear module: local and propagated output error, weight error, and ablation KL for the worst few."""
    reference_units = _linear_units(reference_model)
    candidate_units = _linear_units(candidate_model)
    names = [name for name in reference_units if name in candidate_units]
    if not names or not sequences:
        return []
    errors = {name: ModuleOutputErrors() for name in names}
    # The capture passes' distributions (their hooks change nothing) and decoder-layer outputs, reused by the
    # ablations.
    stack, stack_positions = _decoder_stack(reference_model, reference_units) if ablation_top_n > 0 else (None, {})
    references, stack_outputs = [], []
    for index, sequence in enumerate(sequences):
        logits, outputs = _accumulate_layer_errors(reference_model, candidate_model, reference_units,
                                                   candidate_units, names, sequence.to(device), errors, stack)
        if ablation_top_n > 0:
            with serial_on_cpu(logits.device):
                references.append(ReferenceDistribution(logits, Float32Scratch.block_elements(logits.device)))
            stack_outputs.append(outputs)
        del logits, outputs
        report(int(40 * (index + 1) / len(sequences)), f"Measured layer errors on {index + 1} of {len(sequences)} "
               "sequences")

    layers = [errors[name].result(name, weight_errors.get(name)) for name in names]

    ranked = sorted(
        (layer for layer in layers if layer["relative_error"] is not None),
        key=lambda layer: layer["relative_error"],
        reverse=True,
    )[:ablation_top_n]
    if ranked:
        for number, layer in enumerate(ranked, start=1):
            name = layer["name"]
            layer["ablation_kl"] = _ablation_kl(
                reference_model, reference_units[name], candidate_units[name], errors[name].candidate_input_dtype,
                sequences, references, device, stack, stack_positions.get(name, 0), stack_outputs,
            )
            report(50 + int(50 * number / len(ranked)), f"Ablated {number} of {len(ranked)} most sensitive layers")
    return layers


def _accumulate_layer_errors(reference_model, candidate_model, reference_units, candidate_units, names, input_ids,
                             errors, stack=None) -> tuple[torch.Tensor, list]:
    """Hooked passes of both models over input_ids; returns the reference's logits (capture hooks alter nothing)
    and the outputs of the reference's decoder layers in `stack` (empty without one)."""
    # The reference's Linear inputs and outputs are kept without copying: the decoder architectures served here
    # (Llama, Mistral, Qwen) never modify them in place after the Linear returns.
    captured: dict[str, list] = {name: [] for name in names}
    busy = {"local": False}
    scratch = Float32Scratch()

    def capture(name):
        def hook(module, args, kwargs, output):
            captured[name].append((_linear_input(args, kwargs), output))

        return hook

    def compare(name):
        def hook(module, args, kwargs, output):
            if busy["local"] or not captured[name]:
                return
            reference_input, reference_output = captured[name].pop(0)
            own_input = _linear_input(args, kwargs)
            errors[name].candidate_input_dtype = own_input.dtype
            # "Local" error: this module alone, fed exactly what the reference module saw.
            local_input = reference_input.to(device=own_input.device, dtype=own_input.dtype)
            with serial_on_cpu(own_input.device):
                same_input = _same_values(local_input, own_input)
            if same_input:
                local_output = output  # it saw that already (the first layer's inputs, a version against a copy)
            else:
                busy["local"] = True
                try:
                    local_output = module(local_input)
                finally:
                    busy["local"] = False
            with serial_on_cpu(reference_output.device):
                errors[name].add(reference_output, local_output, output, scratch)

        return hook

    stack_outputs: list = []
    handles = [reference_units[name].register_forward_hook(capture(name), with_kwargs=True) for name in names]
    if stack is not None:
        handles += [layer.register_forward_hook(lambda module, args, output: stack_outputs.append(output))
                    for layer in stack]
    try:
        reference_logits = model_logits(reference_model, input_ids)
    finally:
        for handle in handles:
            handle.remove()
    handles = [candidate_units[name].register_forward_hook(compare(name), with_kwargs=True) for name in names]
    try:
        model_logits(candidate_model, input_ids)
    finally:
        for handle in handles:
            handle.remove()
        captured.clear()
    if stack is not None and len(stack_outputs) != len(stack):
        stack_outputs = []  # the layers did not run once each in order: the ablations run whole passes
    return reference_logits, stack_outputs


def _decoder_stack(model, units) -> tuple[torch.nn.ModuleList | None, dict[str, int]]:
    """The model's decoder layers (the ModuleList holding most of `units`) and, per unit name, how many of those
    layers run before the unit: an ablation need not recompute them. The output head comes after all of them;
    other units outside the stack get 0 (a whole pass)."""
    stack, positions = None, {}
    for path, module in model.named_modules():
        if not isinstance(module, torch.nn.ModuleList) or len(module) == 0:
            continue
        prefix = path.removeprefix("base_model.model.") + "."
        found = {}
        for name in units:
            if name.startswith(prefix):
                head = name[len(prefix):].split(".", 1)[0]
                if head.isdigit() and int(head) < len(module):
                    found[name] = int(head)
        if len(found) > len(positions):
            stack, positions = module, found
    if stack is None:
        return None, {}
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    for name, unit in units.items():
        if head is not None and (unit is head or getattr(unit, "base_layer", None) is head):
            positions[name] = len(stack)
    return stack, positions


class _ReplayedLayers:
    """Within the block, the first `count` layers of `stack` return their recorded outputs instead of running."""

    def __init__(self, stack, count: int, outputs: list):
        self.layers = list(stack)[:count] if outputs else []
        self.outputs = outputs
        self.saved: list = []

    def __enter__(self):
        for index, layer in enumerate(self.layers):
            self.saved.append(layer.__dict__.get("forward"))  # accelerate may have wrapped forward already
            layer.forward = self._replay(self.outputs[index], last=index == len(self.layers) - 1)
        return self

    def __exit__(self, *exc_info):
        for layer, saved in zip(self.layers, self.saved):
            if saved is None:
                del layer.forward
            else:
                layer.forward = saved
        self.saved = []

    @staticmethod
    def _replay(output, last: bool):
        def forward(*args, **kwargs):
            # The next layer gets a copy, so nothing it might do in place reaches the record.
            if last and isinstance(output, torch.Tensor):
                return output.clone()
            if last and isinstance(output, tuple):
                return tuple(item.clone() if isinstance(item, torch.Tensor) else item for item in output)
            return output

        return forward


def _same_values(first: torch.Tensor, second: torch.Tensor) -> bool:
    """Whether two inputs are equal, asked on a CPU only (on a GPU the answer would stop it at every module); the
    first position's values, which differ after the first changed layer, are compared before all of them."""
    if first is second:
        return True
    if first.device.type != "cpu" or first.shape != second.shape or first.numel() == 0:
        return False
    head = first.shape[-1]
    return torch.equal(first.reshape(-1)[:head], second.reshape(-1)[:head]) and torch.equal(first, second)


def _linear_input(args, kwargs) -> torch.Tensor:
    if args:
        return args[0]
    return next(value for value in kwargs.values() if isinstance(value, torch.Tensor))


def _ablation_kl(reference_model, reference_unit, candidate_unit, candidate_input_dtype, sequences, references,
                 device, stack=None, skipped: int = 0, stack_outputs=None) -> float:
    """Mean KL(reference || reference with this one module swapped for the candidate's) over all positions.

    The `skipped` decoder layers before the module cannot change; they replay their recorded outputs. A module
    whose swap changed no output (the candidate's is the same) scores exactly 0.
    """

    state = {"swapping": False, "changed": False}

    def swap(module, args, kwargs, output):
        if state["swapping"]:  # the candidate's module is the reference's own (a version against itself)
            return None
        layer_input = _linear_input(args, kwargs)
        dtype = candidate_input_dtype or layer_input.dtype
        state["swapping"] = True
        try:
            swapped = candidate_unit(layer_input.to(dtype=dtype)).to(output.dtype)
        finally:
            state["swapping"] = False
        if not state["changed"] and not torch.equal(swapped, output):
            state["changed"] = True
        return swapped

    total = torch.zeros((), dtype=torch.float64, device=device)
    count = 0
    handle = reference_unit.register_forward_hook(swap, with_kwargs=True)
    try:
        for index, (sequence, reference) in enumerate(zip(sequences, references)):
            outputs = stack_outputs[index] if stack is not None and stack_outputs else []
            with torch.inference_mode(), _ReplayedLayers(stack, skipped, outputs):
                ablated = model_logits(reference_model, sequence.to(device))
            with serial_on_cpu(ablated.device):
                kl = reference.kl_rows(ablated)
            total = total + kl.sum().to(total.device)
            count += kl.numel()
    finally:
        handle.remove()
    if not state["changed"] or count == 0:
        return 0.0
    return float(total) / count
