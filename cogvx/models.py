"""Where `--model` points: a checkpoint folder, or the built-in default model.

The built-in default, `toy`, is a trained tiny CogVideoX of the real architecture that ships in
`cogvx/assets/toy/` (diffusers layout). It was made by `cogvx train toy` (training/toy/build.py) and
is judged in benchmarks/results/toy/. Should the folder be missing (a source tree without the
weights), `toy` falls back to a random-weight checkpoint of the same architecture, built once into
the cache folder with a warning; tests use that builder for a model no training went into.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

from cogvx.modeling.configs import PRESETS

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "toy"
SHIPPED = Path(__file__).parent / "assets"  # trained checkpoints that ship with cogvx (toy/)


def cache_dir() -> Path:
    return Path(os.environ.get("COGVX_CACHE", Path.home() / ".cache" / "cogvx"))


def build_random_toy(directory: Path, seed: int = 0) -> Path:
    """A random-weight `toy` checkpoint in the diffusers layout."""
    import tempfile

    from transformers import AutoTokenizer

    from cogvx.modeling.model_dir import save_model
    from cogvx.modeling.text_encoder import TextEncoder
    from cogvx.modeling.transformer import CogVideoXTransformer
    from cogvx.modeling.vae import CogVideoXVAE
    from cogvx.training.toy.captions import train_tokenizer

    preset = PRESETS["toy"]
    with tempfile.TemporaryDirectory() as scratch:
        tokenizer = AutoTokenizer.from_pretrained(train_tokenizer(Path(scratch) / "tokenizer"))
    text_config = preset.text_encoder.replace(vocab_size=max(len(tokenizer), 1))
    text_encoder = TextEncoder.from_config(text_config, tokenizer, preset.max_text_len, seed=seed)
    transformer = CogVideoXTransformer.from_preset("toy", seed=seed)
    vae = CogVideoXVAE.from_preset("toy", seed=seed)
    return save_model(directory, transformer, vae, text_encoder, preset.scheduler)


def resolve_model(spec: str) -> Path:
    """A folder as given; `toy` -> the shipped toy checkpoint, else a random toy built once in the cache."""
    path = Path(spec).expanduser()
    if path.is_dir():
        return path
    if spec == DEFAULT_MODEL:
        if (SHIPPED / "toy" / "model_index.json").is_file():
            return SHIPPED / "toy"
        target = cache_dir() / "toy-random"
        logger.warning("the trained toy model is missing from %s; using random weights of its architecture (%s). "
                       "Reinstall cogvx, or make one with `cogvx train toy`", SHIPPED / "toy", target)
        if not (target / "model_index.json").is_file():
            logger.info("building the random-weight toy checkpoint in %s", target)
            with torch.random.fork_rng(devices=[]):
                build_random_toy(target)
        return target
    if spec in PRESETS:
        raise FileNotFoundError(
            f"--model {spec}: real presets need their checkpoint folder (e.g. --model ./CogVideoX-5b, "
            "downloaded in the diffusers layout); only 'toy' is built in"
        )
    raise FileNotFoundError(f"--model {spec}: no such folder, and not a preset ({', '.join(PRESETS)})")
