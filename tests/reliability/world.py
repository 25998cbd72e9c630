"""The shared material of the reliability cases, made once (tiny checkpoints by diffusers, engines by cogvx)."""

from __future__ import annotations

import shutil
from pathlib import Path

from safetensors.torch import load_file, save_file
from tiny_models import make_diffusers_pipeline

from cogvx.contract.shapes import ShapeProfile, ShapeSpec
from cogvx.engines.export_dir import export_engines

from .cases import World


def make_world(root: Path) -> World:
    root.mkdir(parents=True, exist_ok=True)
    checkpoint, i2v, other = root / "checkpoint", root / "i2v", root / "other"
    make_diffusers_pipeline("5b", checkpoint, seed=5)
    make_diffusers_pipeline("5b-i2v", i2v, seed=5)
    shutil.copytree(checkpoint, other)
    for folder in ("transformer", "vae"):  # same configs, other weights
        weights = next((other / folder).glob("*.safetensors"))
        save_file({name: tensor * 1.01 for name, tensor in load_file(weights).items()}, weights)
    engines = root / "engines"
    export_engines(checkpoint, engines, ["text_encoder", "transformer", "vae_decoder"],
                   ShapeProfile.static(ShapeSpec(1, 9, 64, 64, 7)))
    cache = root / "cache"
    cache.mkdir()
    return World(root, checkpoint, other, i2v, engines, cache)
