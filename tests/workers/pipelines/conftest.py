"""What several pipeline test modules share: one trained tiny Llama, built once per run, and the KL they judge
quantizations by."""

import pytest
import torch

from workers.pipelines.tiny_model import SAMPLE_TEXTS, build_tiny_llama

# Calibrate on one half of the texts, judge on the other: a gain must carry over to text the method did not see.
CALIBRATION_TEXTS = SAMPLE_TEXTS[::2]
EVALUATION_TEXTS = SAMPLE_TEXTS[1::2]


@pytest.fixture(scope="session")
def trained_tiny_llama_dir(tmp_path_factory):
    """A tiny Llama trained 30 steps, so its predictions are peaked: an untrained model's near-uniform outputs hide
    quantization error. Read-only: tests write their versions elsewhere."""
    return build_tiny_llama(tmp_path_factory.mktemp("trained-tiny-llama") / "model", train_steps=30)


def mean_kl(reference, candidate, tokenizer, texts=EVALUATION_TEXTS) -> float:
    """Mean KL(reference || candidate) per token over `texts`, in float64."""
    values = []
    with torch.no_grad():
        for text in texts:
            ids = tokenizer(text, return_tensors="pt")["input_ids"]
            p = reference(input_ids=ids).logits.double().log_softmax(-1)
            q = candidate(input_ids=ids).logits.double().log_softmax(-1)
            values.append((p.exp() * (p - q)).sum(-1).flatten())
    return float(torch.cat(values).mean())
