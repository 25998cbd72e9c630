"""The T5 text encoder (transformers' `T5EncoderModel`) and its tokenizer, as CogVideoX uses them.

Prompts are tokenized to exactly `max_length` tokens (226 for the real models): padded to that
length, truncated past it, and encoded WITHOUT an attention mask, so padding rows carry the
encoder's pad embeddings that the transformer was trained to attend to (see docs/reference.md,
'Text encoder').

Letters: B prompts, L = max_length tokens, Dt = T5 width (4096 for T5 v1.1 XXL).
"""

from __future__ import annotations

import logging
import pickle
from pathlib import Path

import torch

from .checkpoint import CheckpointError, pickle_refusal
from .configs import TextEncoderConfig

logger = logging.getLogger(__name__)


def tokenize_prompts(tokenizer, prompts: list[str], max_length: int) -> torch.Tensor:
    """(B,) strings -> (B, L) token ids, padded and truncated to L; warns with the count of dropped tokens."""
    ids = tokenizer(
        prompts, padding="max_length", max_length=max_length, truncation=True,
        add_special_tokens=True, return_tensors="pt",
    ).input_ids  # (B, L)
    for prompt, tokens in zip(prompts, tokenizer(prompts, add_special_tokens=True).input_ids):
        if len(tokens) > max_length:
            logger.warning(
                "prompt truncated: %d tokens, the model reads %d; dropped %d tokens (%r...)",
                len(tokens), max_length, len(tokens) - max_length, prompt[:40],
            )
    return ids


class TextEncoder:
    """`encode_prompt(prompts) -> (B, L, Dt)`; the model runs in its own dtype (fp32 is safest: T5 in fp16 overflows)."""

    def __init__(self, model, tokenizer, max_length: int = 226):
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.max_length = max_length

    @classmethod
    def from_pretrained(
        cls,
        text_encoder_dir: str | Path,
        tokenizer_dir: str | Path | None = None,
        dtype: torch.dtype = torch.float32,
        max_length: int = 226,
    ) -> TextEncoder:
        """Read diffusers' `text_encoder/` (T5EncoderModel, possibly sharded) and `tokenizer/` folders."""
        from transformers import AutoTokenizer, T5EncoderModel

        text_encoder_dir = Path(text_encoder_dir)
        tokenizer_dir = Path(tokenizer_dir) if tokenizer_dir else text_encoder_dir.parent / "tokenizer"
        if not (text_encoder_dir / "config.json").is_file():
            raise CheckpointError(f"no text encoder at {text_encoder_dir}: expected text_encoder/config.json + weights")
        if not tokenizer_dir.is_dir():
            raise CheckpointError(f"no tokenizer at {tokenizer_dir}: expected tokenizer/spiece.model (or tokenizer.json)")
        try:
            model = T5EncoderModel.from_pretrained(text_encoder_dir, dtype=dtype)
        except (OSError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError) as error:
            # transformers loads .bin weights with torch.load(weights_only=True): a pickle with code in
            # it (or a corrupt file) fails there, with torch's advice to disable the check
            pickles = sorted(text_encoder_dir.glob("*.bin"))
            if pickles and not any(text_encoder_dir.glob("*.safetensors")):
                raise pickle_refusal(pickles[0], error) from None
            raise CheckpointError(f"cannot load the text encoder in {text_encoder_dir} ({type(error).__name__}: "
                                  f"{str(error).splitlines()[0][:200]}); re-download or re-save it") from None
        if dtype == torch.float16:
            logger.warning("T5 in float16 can overflow (inf/NaN embeddings); prefer float32 or bfloat16")
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
        return cls(model, tokenizer, max_length)

    @classmethod
    def from_config(cls, config: TextEncoderConfig, tokenizer, max_length: int, seed: int = 0) -> TextEncoder:
        """Random weights for a config (tests, benchmarks) with a given tokenizer."""
        from transformers import T5EncoderModel

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = T5EncoderModel(config.to_transformers())
        return cls(model, tokenizer, max_length)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def tokenize(self, prompts: list[str]) -> torch.Tensor:
        return tokenize_prompts(self.tokenizer, prompts, self.max_length)

    def count_tokens(self, prompt: str) -> int:
        return len(self.tokenizer(prompt, add_special_tokens=True).input_ids)

    @torch.no_grad()
    def encode_prompt(self, prompts: str | list[str], dtype: torch.dtype | None = None) -> torch.Tensor:
        """(B,) strings -> (B, L, Dt) embeddings, no attention mask."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        ids = self.tokenize(prompts).to(self.device)  # (B, L)
        embeddings = self.model(ids)[0]  # (B, L, Dt)
        return embeddings.to(dtype) if dtype is not None else embeddings
