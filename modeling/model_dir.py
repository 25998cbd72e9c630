"""A whole model folder in the diffusers layout: model_index.json + one folder per component.

Written into a temporary sibling folder and renamed at the end, so an interrupted save never
leaves a folder that looks like a finished checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from .checkpoint import CheckpointError, staged_directory, write_json
from .configs import (
    ModelConfig, SchedulerConfig, TextEncoderConfig, TransformerConfig, VAEConfig, _from_dict, model_config,
)

MODEL_INDEX = {
    "_class_name": "CogVideoXPipeline",
    "scheduler": ["diffusers", "CogVideoXDDIMScheduler"],
    "text_encoder": ["transformers", "T5EncoderModel"],
    "tokenizer": ["transformers", "T5Tokenizer"],
    "transformer": ["diffusers", "CogVideoXTransformer3DModel"],
    "vae": ["diffusers", "AutoencoderKLCogVideoX"],
}


def save_model(directory: str | Path, transformer, vae, text_encoder, scheduler: SchedulerConfig,
               overwrite: bool = False) -> Path:
    """Write transformer/, vae/, text_encoder/, tokenizer/, scheduler/ and model_index.json."""
    directory = Path(directory)
    if directory.exists() and not overwrite:
        raise FileExistsError(f"{directory} already exists; choose another folder or pass overwrite=True")
    with staged_directory(directory) as staging:
        transformer.save_pretrained(staging / "transformer")
        vae.save_pretrained(staging / "vae")
        text_encoder.model.save_pretrained(staging / "text_encoder")
        text_encoder.tokenizer.save_pretrained(staging / "tokenizer")
        write_json(staging / "scheduler" / "scheduler_config.json", scheduler.to_dict())
        write_json(staging / "model_index.json", MODEL_INDEX)
    return directory


REQUIRED_FOLDERS = ("transformer", "vae", "scheduler")


def load_model_config(directory: str | Path) -> ModelConfig:
    """A checkpoint folder's model, from its configs alone (no weights read).

    transformer/, vae/ and scheduler/ are required; text_encoder/config.json (a transformers T5
    config, of which the keys that shape the encoder are kept) is read when present.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"checkpoint folder {directory} does not exist")
    missing = [folder for folder in REQUIRED_FOLDERS if not (directory / folder).is_dir()]
    if missing:
        raise CheckpointError(f"{directory} has no {', '.join(f + '/' for f in missing)}: not a CogVideoX "
                              "checkpoint in the diffusers layout (transformer/, vae/, scheduler/, text_encoder/, "
                              "tokenizer/)")
    transformer = TransformerConfig.from_file(directory / "transformer" / "config.json")
    vae = VAEConfig.from_file(directory / "vae" / "config.json")
    scheduler = SchedulerConfig.from_file(directory / "scheduler" / "scheduler_config.json")
    text = None
    text_config = directory / "text_encoder" / "config.json"
    if text_config.is_file():
        try:
            data = json.loads(text_config.read_text())
        except json.JSONDecodeError as error:
            raise CheckpointError(f"{text_config} is not valid JSON ({error})") from None
        if not isinstance(data, dict):
            raise CheckpointError(f"{text_config} is not a config object")
        known = {f.name for f in dataclasses.fields(TextEncoderConfig)}
        text = _from_dict(TextEncoderConfig, {k: v for k, v in data.items() if k in known})
    return model_config(transformer, vae, scheduler, text)


def read_model_index(directory: str | Path) -> dict:
    path = Path(directory) / "model_index.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: is {directory} a CogVideoX checkpoint in the diffusers layout?")
    return json.loads(path.read_text())
