"""The training loop: seeded batches, optimizer steps, evaluation passes and the loss curve."""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import torch

from workers.pipelines.errors import PipelineInputError
from workers.pipelines.lora.records import IGNORE_INDEX, EncodedRecord
from workers.pipelines.specs import LoraSpec

# Evaluation passes over the held-out records during training (the last one is eval_loss_after). Few enough that
# evaluation stays a small share of the run time, enough to draw the evaluation curve.
EVALUATIONS_DURING_TRAINING = 5
# At most this many training-loss points in the curve, so a 100,000-step run still gives a small JSON result.
MAX_CURVE_POINTS = 100
# Report progress (and so give cancellation a chance) at least this often.
REPORT_INTERVAL_SECONDS = 1.0
# Gradient clipping as in the HF Trainer's default; it keeps one unlucky batch from wrecking a small adapter.
MAX_GRAD_NORM = 1.0

ProgressCallback = Callable[[int, str], None]


def _collate(batch: list[EncodedRecord], *, pad_id: int, device: str) -> dict[str, torch.Tensor]:
    """Right-padded tensors; `targets` are the labels shifted by one, so the loss needs no shifted logits copy."""
    width = max(len(item.input_ids) for item in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
    targets = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
    for row, item in enumerate(batch):
        length = len(item.input_ids)
        input_ids[row, :length] = torch.tensor(item.input_ids)
        attention_mask[row, :length] = 1
        targets[row, : length - 1] = torch.tensor(item.labels[1:])
    return {
        "input_ids": input_ids.to(device, non_blocking=True),
        "attention_mask": attention_mask.to(device, non_blocking=True),
        "targets": targets.to(device, non_blocking=True),
    }


def _summed_loss(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Sum of the token cross-entropies over the batch's supervised tokens (float32)."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits
    return torch.nn.functional.cross_entropy(
        logits.float().view(-1, logits.shape[-1]),
        batch["targets"].view(-1),
        ignore_index=IGNORE_INDEX,
        reduction="sum",
    )


def _training_step(model, optimizer, micro_batches: list[dict[str, torch.Tensor]], token_count: int) -> torch.Tensor:
    """One optimizer update over the micro-batches; returns the mean token loss (detached, not synchronised)."""
    total = None
    for batch in micro_batches:
        # Dividing each micro-batch by the step's total token count weights every token equally under accumulation.
        loss = _summed_loss(model, batch) / token_count
        loss.backward()
        total = loss.detach() if total is None else total + loss.detach()
    parameters = [parameter for group in optimizer.param_groups for parameter in group["params"]]
    torch.nn.utils.clip_grad_norm_(parameters, MAX_GRAD_NORM)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return total


@torch.no_grad()
def _evaluation_loss(model, examples: list[EncodedRecord], *, batch_size: int, pad_id: int, device: str) -> float:
    """Mean token loss over the held-out records, dropout off."""
    model.eval()
    total = torch.zeros((), device=device)
    tokens = 0
    for start in range(0, len(examples), batch_size):
        chunk = examples[start : start + batch_size]
        total += _summed_loss(model, _collate(chunk, pad_id=pad_id, device=device))
        tokens += sum(item.supervised_tokens for item in chunk)
    model.train()
    return total.item() / tokens


def _batch_order(count: int, generator: torch.Generator):
    """Endless record indices: a fresh seeded permutation per epoch, so the order depends on the seed only."""
    while True:
        yield from torch.randperm(count, generator=generator).tolist()


def resolve_steps(spec: LoraSpec, train_count: int) -> int:
    """Optimizer steps of the run: `steps`, or enough for `epochs` passes over the training records."""
    if spec.epochs is None:
        return spec.steps
    records_per_step = spec.batch_size * spec.gradient_accumulation
    steps = math.ceil(spec.epochs * train_count / records_per_step)
    if steps > 100_000:
        raise PipelineInputError(
            f"epochs {spec.epochs} over {train_count} training records is {steps} steps, more than 100000; "
            "lower epochs or raise batch_size."
        )
    return steps


def _non_finite_loss_error(value: float, *, step: int, spec: LoraSpec) -> PipelineInputError:
    """The user-facing error for a loss that became NaN or infinite during training."""
    return PipelineInputError(
        f"Training stopped: the loss became {value} at step {step} with learning_rate {spec.learning_rate:g}; "
        f"nothing was saved. Lower learning_rate (e.g. {spec.learning_rate / 10:g}) and check the dataset "
        "for unusual content."
    )


def run_training(
    model,
    spec: LoraSpec,
    *,
    steps: int,
    train_examples: list[EncodedRecord],
    eval_examples: list[EncodedRecord],
    pad_id: int,
    device: str,
    report: ProgressCallback,
) -> dict:
    """The training loop: evaluation before, a few times during and at the end; loss read back only at log points."""
    eval_seconds = 0.0

    def evaluate() -> float | None:
        nonlocal eval_seconds
        if not eval_examples:
            return None
        eval_started = time.perf_counter()
        loss = _evaluation_loss(model, eval_examples, batch_size=spec.batch_size, pad_id=pad_id, device=device)
        eval_seconds += time.perf_counter() - eval_started
        return loss

    report(5, f"Evaluating the base on {len(eval_examples)} held-out records")
    eval_loss_before = evaluate()
    if eval_loss_before is not None and not math.isfinite(eval_loss_before):
        raise PipelineInputError(
            f"The base model's loss on the held-out records is {eval_loss_before} before any training, so its "
            "weights or their dtype overflow; check the base version (analyse it) before training an adapter on it."
        )

    trainable = [p for p in model.parameters() if p.requires_grad]
    # The fused CUDA kernel updates all adapter matrices in one launch; the CPU has no fused AdamW.
    fused = {"fused": True} if device.startswith("cuda") else {}
    optimizer = torch.optim.AdamW(trainable, lr=spec.learning_rate, weight_decay=0.0, **fused)
    generator = torch.Generator().manual_seed(spec.seed)
    order = _batch_order(len(train_examples), generator)
    log_every = max(1, math.ceil(steps / MAX_CURVE_POINTS))
    eval_steps = {
        max(1, round(steps * k / EVALUATIONS_DURING_TRAINING)) for k in range(1, EVALUATIONS_DURING_TRAINING + 1)
    }

    curve: list[dict] = []
    pending: list[torch.Tensor] = []  # losses since the last log point, still on the device
    tokens_per_step: list[int] = []
    loop_started = last_report = time.perf_counter()
    seconds_before_loop = eval_seconds
    eval_loss = eval_loss_before
    for step in range(1, steps + 1):
        micro = [
            [train_examples[next(order)] for _ in range(spec.batch_size)] for _ in range(spec.gradient_accumulation)
        ]
        token_count = sum(item.supervised_tokens for batch in micro for item in batch)
        tokens_per_step.append(token_count)
        batches = [_collate(batch, pad_id=pad_id, device=device) for batch in micro]
        pending.append(_training_step(model, optimizer, batches, token_count))

        is_eval_step = step in eval_steps
        if step % log_every == 0 or is_eval_step:
            losses = torch.stack(pending).tolist()  # the one device sync per log interval
            for offset, value in enumerate(losses):
                if not math.isfinite(value):
                    raise _non_finite_loss_error(value, step=step - len(losses) + 1 + offset, spec=spec)
            point = {"step": step, "loss": round(sum(losses) / len(losses), 6)}
            pending = []
            if is_eval_step and eval_examples:
                eval_loss = evaluate()
                if not math.isfinite(eval_loss):
                    raise _non_finite_loss_error(eval_loss, step=step, spec=spec)
                point["eval_loss"] = round(eval_loss, 6)
            curve.append(point)
        now = time.perf_counter()
        if now - last_report >= REPORT_INTERVAL_SECONDS or step == steps or is_eval_step:
            last_report = now
            suffix = f", eval loss {eval_loss:.4f}" if eval_loss is not None else ""
            report(10 + int(85 * step / steps), f"Training step {step}/{steps}{suffix}")

    training_seconds = time.perf_counter() - loop_started - (eval_seconds - seconds_before_loop)
    _check_adapter_finite(model, spec)
    model.eval()
    return {
        "curve": curve,
        "eval_loss_before": eval_loss_before,
        "eval_loss_after": eval_loss if eval_examples else None,
        "training_seconds": training_seconds,
        "eval_seconds": eval_seconds,
        "tokens_per_step": round(sum(tokens_per_step) / len(tokens_per_step), 1),
    }


def _check_adapter_finite(model, spec: LoraSpec) -> None:
    """A finite loss with non-finite adapter weights would still be a broken result; refuse to save it."""
    for name, parameter in model.named_parameters():
        if parameter.requires_grad and not torch.isfinite(parameter).all():
            raise PipelineInputError(
                f"Training produced non-finite values in {name} with learning_rate {spec.learning_rate:g}; nothing "
                f"was saved. Lower learning_rate (e.g. {spec.learning_rate / 10:g})."
            )
