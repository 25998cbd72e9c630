"""Shared fixtures: tiny random CogVideoX checkpoints written by diffusers' own `save_pretrained`."""

from __future__ import annotations

import pytest
from tiny_models import make_diffusers_transformer


@pytest.fixture(scope="session")
def tiny_transformer_dir(tmp_path_factory):
    """variant -> (folder with a diffusers-saved tiny transformer, the diffusers model)."""
    made: dict[str, tuple] = {}

    def get(variant: str):
        if variant not in made:
            model = make_diffusers_transformer(variant, seed=len(made) + 1)
            folder = tmp_path_factory.mktemp(f"transformer-{variant}")
            model.save_pretrained(folder)
            made[variant] = (folder, model)
        return made[variant]

    return get


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """family -> a tiny random checkpoint folder in the diffusers layout (written by diffusers)."""
    from tiny_models import make_diffusers_pipeline

    made: dict[str, object] = {}

    def get(family: str):
        if family not in made:
            folder = tmp_path_factory.mktemp(f"checkpoint-{family}")
            make_diffusers_pipeline(family, folder, seed=5)
            made[family] = folder
        return made[family]

    return get
