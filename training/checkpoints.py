"""Training checkpoints: `output_dir/checkpoint-STEP/` in the diffusers layout plus the trainer's state.

    checkpoint-STEP/
        transformer/ (or vae/)   config.json + diffusion_pytorch_model.safetensors (save_state_dict)
        training_state.pt        step, stage, optimizer state, every rank's RNG and sampler state
        model_index.json, vae/, text_encoder/, ...   links to the base checkpoint's other components
                                                      (when the run started from one), so the folder
                                                      is a whole model for `cogvx generate` and the rest

The folder is written under a temporary name and renamed when complete: a crash never leaves a
checkpoint that looks finished.
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path

import torch

from cogvx.modeling.checkpoint import save_state_dict, staged_directory, write_json
from cogvx.modeling.configs import TransformerConfig, VAEConfig

logger = logging.getLogger(__name__)

STATE_FILE = "training_state.pt"
CONFIG_CLASSES = {"transformer": TransformerConfig, "vae": VAEConfig}
_NAME = re.compile(r"^checkpoint-(\d+)$")


class ResumeError(ValueError):
    """A checkpoint that cannot continue this run; the message says what differs and what to do."""


def checkpoint_dir(output_dir: str | Path, step: int) -> Path:
    return Path(output_dir) / f"checkpoint-{step}"


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """Finished checkpoints (with a training state) in step order."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in output_dir.iterdir()
             if (m := _NAME.match(p.name)) and (p / STATE_FILE).is_file()]
    return [p for _, p in sorted(found)]


def resolve_resume(output_dir: str | Path, resume: str | Path | None) -> Path | None:
    """`None` -> fresh run (refused when checkpoints exist), 'latest' -> the newest, else that folder."""
    existing = list_checkpoints(output_dir)
    if resume is None:
        if existing:
            raise ResumeError(
                f"{output_dir} already holds {existing[-1].name}; pass --resume latest to continue that run, "
                "or choose another output_dir"
            )
        return None
    if str(resume) == "latest":
        if not existing:
            logger.info("no checkpoint in %s yet: starting fresh", output_dir)
            return None
        return existing[-1]
    path = Path(resume)
    if not (path / STATE_FILE).is_file():
        raise ResumeError(f"{path} is not a training checkpoint (no {STATE_FILE}); give a checkpoint-STEP folder or 'latest'")
    return path


def check_architecture(path: Path, component: str, config_dict: dict) -> None:
    """Refuse a checkpoint whose component or config differs from the model this run builds."""
    others = sorted(name for name in CONFIG_CLASSES if name != component and (path / name / "config.json").is_file())
    if not (path / component / "config.json").is_file():
        holds = f"holds a {others[0]}" if others else "holds no model weights"
        raise ResumeError(f"{path} {holds}, not a {component}; resume the {component} run from its own checkpoint")
    theirs = CONFIG_CLASSES[component].from_file(path / component).to_dict()
    differing = sorted(k for k in set(theirs) | set(config_dict) if theirs.get(k) != config_dict.get(k))
    if differing:
        shown = ", ".join(f"{k}: checkpoint {theirs.get(k)!r}, this run {config_dict.get(k)!r}" for k in differing[:6])
        raise ResumeError(
            f"{path} holds a {component} of another architecture ({shown}"
            f"{' ...' if len(differing) > 6 else ''}); resume with the [model] settings of that run, "
            "or start a new output_dir"
        )


def write_checkpoint(output_dir: str | Path, step: int, component: str, weights: dict[str, torch.Tensor],
                     config_dict: dict, state: dict, base_checkpoint: str | Path | None = None) -> Path:
    """Write checkpoint-STEP atomically (call on one rank only); returns its path."""
    target = checkpoint_dir(output_dir, step)
    with staged_directory(target) as staging:
        save_state_dict(weights, config_dict, staging / component)
        torch.save(state, staging / STATE_FILE)
        if base_checkpoint is not None:
            _link_other_components(Path(base_checkpoint), staging, component)
    logger.info("saved %s", target)
    return target


def _link_other_components(base: Path, staging: Path, component: str) -> None:
    """Link the base model's other components so the checkpoint is a whole diffusers model folder."""
    index = base / "model_index.json"
    if not index.is_file():
        return
    for entry in sorted(base.iterdir()):
        if entry.is_dir() and entry.name != component and not entry.name.startswith((".", "checkpoint-")):
            try:
                os.symlink(entry.resolve(), staging / entry.name, target_is_directory=True)
            except OSError as error:  # filesystems without symlinks: the weights are still there
                logger.warning("could not link %s into the checkpoint (%s); copy it by hand to generate from it", entry, error)
    write_json(staging / "model_index.json", json.loads(index.read_text()))


def read_state(path: Path) -> dict:
    """The training_state.pt of a checkpoint (plain tensors and containers only)."""
    return torch.load(path / STATE_FILE, map_location="cpu", weights_only=True)
