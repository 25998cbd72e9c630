"""A whole model folder in the diffusers layout: model_index.json + one folder per component.

Written into a temporary sibling folder and renamed at the end, so an interrupted save never
leaves a folder that looks like a finished checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path

from .checkpoint import staged_directory, write_json
from .configs import SchedulerConfig

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


def read_model_index(directory: str | Path) -> dict:
    path = Path(directory) / "model_index.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: is {directory} a CogVideoX checkpoint in the diffusers layout?")
    return json.loads(path.read_text())
