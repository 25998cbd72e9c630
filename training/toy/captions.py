"""The toy world's caption grammar: "a red square moving right", "a blue circle standing still"."""

from __future__ import annotations

import itertools
from pathlib import Path

COLOURS = ("red", "green", "blue", "yellow")
SHAPES = ("square", "circle", "triangle")
MOTIONS = ("moving left", "moving right", "moving up", "moving down", "standing still")


def caption(colour: str, shape: str, motion: str) -> str:
    return f"a {colour} {shape} {motion}"


def all_captions() -> list[str]:
    return [caption(*parts) for parts in itertools.product(COLOURS, SHAPES, MOTIONS)]


def train_tokenizer(directory: str | Path, vocab_size: int = 64) -> Path:
    """A T5-style sentencepiece tokenizer (pad 0, eos 1, unk 2) trained on the grammar, saved as tokenizer/."""
    import json

    import sentencepiece as spm

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(all_captions() * 4), model_prefix=str(directory / "spiece"),
        vocab_size=vocab_size, model_type="unigram", pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
        hard_vocab_limit=False, minloglevel=2,
    )
    (directory / "spiece.vocab").unlink(missing_ok=True)
    (directory / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "T5Tokenizer", "extra_ids": 0, "eos_token": "</s>", "unk_token": "<unk>",
         "pad_token": "<pad>"}, indent=2) + "\n")
    return directory
