"""The evaluation tokens both models read, cut into chunks as llama.cpp's `perplexity --kl-divergence` does.

The dataset's texts are tokenized (each whole, without special tokens, lazily as chunks are needed) and joined
with EOS; the token stream is cut into chunks of `context_length` tokens (the first one BOS when the tokenizer has
one); only the second half of each chunk is scored (logits at positions n_ctx//2 .. n_ctx-2 predicting the next
token), so every scored token has at least n_ctx/2 tokens of context. A chunk of 512 therefore scores 255 tokens.
`max_tokens` caps the tokens fed to each model (chunks x context_length; `tokens` in the result counts the scored
ones); a trailing partial chunk is dropped, and a dataset shorter than one context is analysed as a single
shorter chunk.
"""

from __future__ import annotations

import torch

from workers.pipelines.errors import PipelineInputError
from workers.pipelines.specs import MIN_CHUNK_LENGTH

# llama.cpp needs two scored tokens per chunk for its statistics; a chunk of n tokens scores n - 1 - n // 2.
MIN_SCORED_PER_CHUNK = 2


class EvaluationChunks:
    """The chunks to score, cut as llama.cpp does (see the module docstring), tokenized as they are read.

    Only the current chunk and the text being read are held, so memory does not grow with max_tokens.
    """

    def __init__(self, tokenizer, texts: list[str], *, context_length: int, max_tokens: int, vocab_size: int):
        self._bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
        self._eos = tokenizer.eos_token_id
        self._tokenizer = tokenizer
        self._texts = iter(texts)
        self._vocab_size = vocab_size
        self._buffer: list[int] = []
        self._started = False
        self.length = min(context_length, max_tokens)
        self.planned = max_tokens // self.length
        self._per_chunk = self.length - len(self._bos)

        self._fill(self._per_chunk)
        if len(self._buffer) < self._per_chunk:
            # Shorter than one context: one shorter chunk, as long as it still scores enough tokens.
            self._per_chunk = len(self._buffer)
            self.length = self._per_chunk + len(self._bos)
            self.planned = 1
        if _scored_per_chunk(self.length) < MIN_SCORED_PER_CHUNK:
            needed = MIN_CHUNK_LENGTH - len(self._bos)
            raise PipelineInputError(
                f"The evaluation dataset gave {len(self._buffer)} tokens; at least {needed} are needed "
                f"({MIN_SCORED_PER_CHUNK} scored tokens in the second half of a chunk). Upload a dataset with "
                "more text (a few thousand tokens give stable statistics)."
            )

    def _fill(self, wanted: int) -> None:
        while len(self._buffer) < wanted:
            text = next(self._texts, None)
            if text is None:
                return
            if not isinstance(text, str) or not text.strip():
                continue
            if self._started and self._eos is not None:
                self._buffer.append(self._eos)
            self._started = True
            self._buffer.extend(self._tokenizer.encode(text, add_special_tokens=False))

    def __iter__(self):
        for _ in range(self.planned):
            self._fill(self._per_chunk)
            if len(self._buffer) < self._per_chunk:
                return  # a trailing partial chunk is dropped, as llama.cpp does
            chunk = torch.tensor(self._bos + self._buffer[: self._per_chunk], dtype=torch.long)
            del self._buffer[: self._per_chunk]
            largest = int(chunk.max())
            if largest >= self._vocab_size:
                raise PipelineInputError(
                    f"The tokenizer produced token id {largest} but the model has only {self._vocab_size:,} "
                    "tokens; the tokenizer does not belong to this model."
                )
            yield chunk


def _scored_per_chunk(n_ctx: int) -> int:
    return n_ctx - 1 - n_ctx // 2


def layer_sequences(chunks: EvaluationChunks, layer_tokens: int) -> list[torch.Tensor]:
    """The first `layer_tokens` tokens of the evaluation chunks, as (1, length) sequences."""
    sequences = []
    remaining = layer_tokens
    for chunk in chunks:
        if remaining < 2:
            break
        sequence = chunk[:remaining]
        sequences.append(sequence.unsqueeze(0))
        remaining -= sequence.numel()
    return sequences
