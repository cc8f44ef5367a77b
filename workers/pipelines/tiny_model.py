"""A tiny Llama and tokenizer the project builds itself, so tests and demos never download a model.

Usage: python -m workers.pipelines.tiny_model OUT_DIR [--train-steps N] [--seed N]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

# Short English and finance sentences: the tokenizer's training corpus, the tiny model's training data, and
# calibration / evaluation text for the pipelines' tests.
SAMPLE_TEXTS: list[str] = [
    "The bank raised its interest rate by a quarter of a percentage point.",
    "Inflation slowed for the third month in a row, according to the central bank.",
    "The bond market rallied after the jobs report came in weaker than expected.",
    "Quarterly revenue grew by eight percent while operating costs stayed flat.",
    "The credit committee approved the loan after reviewing the borrower's cash flow.",
    "Liquidity coverage ratios must stay above one hundred percent at all times.",
    "The auditor found no material weakness in the internal controls over reporting.",
    "Our risk model estimates the probability of default for each counterparty.",
    "The portfolio manager reduced exposure to long dated government bonds.",
    "Equity markets fell sharply as investors priced in higher rates for longer.",
    "The regulator asked the firm to document every change to its pricing models.",
    "A stress test measures how capital holds up in a severe recession scenario.",
    "The trading desk hedged its currency exposure with forward contracts.",
    "Net interest margin widened because deposit costs rose more slowly than loan yields.",
    "The customer disputed a card payment and the bank opened an investigation.",
    "Anti money laundering checks flagged three transfers for manual review.",
    "The fund reported a small loss after fees for the first half of the year.",
    "Mortgage applications dropped as borrowing costs reached a ten year high.",
    "The treasury team forecasts cash needs for the next ninety days.",
    "Capital requirements depend on the risk weight assigned to each asset.",
    "The board approved a dividend of forty cents per share.",
    "Market makers quote a bid and an ask price for every listed security.",
    "The compliance officer signed the report before it was sent to the supervisor.",
    "Credit spreads widened on fears that corporate earnings would disappoint.",
    "The model validation team compared the new version against the approved baseline.",
    "Every model change needs an approval from a second reviewer before deployment.",
    "The insurance company increased its reserves for expected claims.",
    "Savings accounts now pay a higher rate than they did a year ago.",
    "The analyst lowered her price target after the company cut its guidance.",
    "Foreign exchange volatility rose ahead of the central bank meeting.",
    "The pension fund rebalanced its assets toward fixed income.",
    "Loan losses stayed low because unemployment remained near record lows.",
    "The clearing house requires members to post collateral every day.",
    "A rollback restores the previous model version when a release misbehaves.",
    "The annual report describes the main risks the business faces.",
    "Short term yields rose faster than long term yields, flattening the curve.",
    "The startup raised new funding at a higher valuation than last year.",
    "Payment volumes grew as more customers switched to mobile banking.",
    "The fraud team blocked the card after several suspicious purchases.",
    "Operational risk includes losses from failed processes, people and systems.",
    "The company issued new bonds to refinance debt that matures next year.",
    "Investors moved money into money market funds as rates went up.",
    "The sun was shining and the children played in the park after school.",
    "She read the letter twice before she answered it.",
    "The train to the city leaves every hour from the main station.",
    "We walked along the river and talked about the weekend.",
    "The cat slept on the warm window sill all afternoon.",
    "He bought fresh bread and cheese at the market on Saturday.",
    "The meeting starts at nine and should end before lunch.",
    "Please send the signed contract back to us by Friday.",
    "The weather will turn colder later this week.",
    "They painted the kitchen a pale shade of green.",
    "The library is open late on Tuesdays and Thursdays.",
    "Our team finished the project a week ahead of schedule.",
    "The price of coffee went up again this month.",
    "A good report explains what changed, why it changed and who approved it.",
    "The dog waited by the door until its owner came home.",
    "The museum opened a new exhibition about the history of money.",
    "Write down the numbers carefully and check them twice.",
    "The market closed higher on Friday after a volatile week.",
    "The loan officer explained the terms of the mortgage in plain words.",
    "Every quarter the bank publishes its capital and liquidity figures.",
    "The audit trail records who changed what and when.",
    "Interest is charged on the outstanding balance at the end of each month.",
]

CORPUS = "\n".join(SAMPLE_TEXTS)

BOS_TOKEN, EOS_TOKEN, PAD_TOKEN, UNK_TOKEN = "<s>", "</s>", "<pad>", "<unk>"
SPECIAL_TOKENS = [PAD_TOKEN, BOS_TOKEN, EOS_TOKEN, UNK_TOKEN]


def build_tokenizer(vocab_size: int):
    """A byte-level BPE tokenizer trained on CORPUS with exactly vocab_size entries, as a transformers tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE(unk_token=UNK_TOKEN))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(SAMPLE_TEXTS, trainer=trainer)
    # A small corpus may run out of merges before vocab_size; reserved tokens fill the rest (as real models
    # do) so the tokenizer and the embedding matrix always have the same size.
    shortfall = vocab_size - tokenizer.get_vocab_size()
    if shortfall > 0:
        tokenizer.add_special_tokens([f"<reserved_{index}>" for index in range(shortfall)])
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS_TOKEN} $A",
        pair=f"{BOS_TOKEN} $A {BOS_TOKEN} $B",
        special_tokens=[(BOS_TOKEN, tokenizer.token_to_id(BOS_TOKEN))],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        unk_token=UNK_TOKEN,
        model_max_length=None,
    )


def build_tiny_llama(
    out_dir: Path,
    *,
    seed: int = 0,
    hidden_size: int = 64,
    intermediate_size: int = 128,
    num_layers: int = 2,
    num_heads: int = 2,
    vocab_size: int = 512,
    max_position_embeddings: int = 256,
    train_steps: int = 0,
) -> Path:
    """Write a tiny Llama (config, safetensors weights, tokenizer) to out_dir; train it briefly if asked."""
    from transformers import LlamaConfig, LlamaForCausalLM

    # bitsandbytes' 4-bit blocks and most GPU kernels want dimensions in multiples of 32.
    for name, value in {
        "hidden_size": hidden_size,
        "intermediate_size": intermediate_size,
        "vocab_size": vocab_size,
    }.items():
        if value <= 0 or value % 32:
            raise ValueError(f"{name}={value} must be a positive multiple of 32")
    if hidden_size % num_heads or (hidden_size // num_heads) % 2:
        raise ValueError(f"hidden_size={hidden_size} must split into {num_heads} heads of even size")

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(vocab_size)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        max_position_embeddings=max_position_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
        dtype="float32",
    )
    # fork_rng keeps the caller's global random state untouched while making the weights depend on seed only.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
        if train_steps > 0:
            train_on_sample_texts(model, tokenizer, steps=train_steps)
    model.eval()
    model.save_pretrained(str(out_dir), safe_serialization=True)
    tokenizer.save_pretrained(str(out_dir))
    return out_dir


def train_on_sample_texts(model, tokenizer, *, steps: int, learning_rate: float = 3e-3) -> list[float]:
    """Fit the model to SAMPLE_TEXTS for a few full-batch steps on CPU so its predictions become peaked."""
    batch = tokenizer(
        [text + tokenizer.eos_token for text in SAMPLE_TEXTS],
        return_tensors="pt",
        padding=True,
    )
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=0.0)
    model.train()
    losses = []
    for _ in range(steps):
        loss = model(**batch, labels=labels).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    model.eval()
    return losses


def main(argv: list[str] | None = None) -> None:
    """Command line: build a tiny Llama into OUT_DIR."""
    parser = argparse.ArgumentParser(description="Build a tiny Llama model directory (no downloads).")
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--train-steps", type=int, default=0, help="full-batch training steps on SAMPLE_TEXTS")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    path = build_tiny_llama(args.out_dir, seed=args.seed, train_steps=args.train_steps)
    print(path)


if __name__ == "__main__":
    main()
