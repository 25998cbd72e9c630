"""Training checkpoints: `output_dir/checkpoint-STEP/` in the diffusers layout plus the trainer's state.

    checkpoint-STEP/
        transformer/ (or vae/)   config.json + diffusion_pytorch_model.safetensors (save_state_dict)
        training_state.pt        step, stage, optimizer state, every rank's RNG and sampler state
        model_index.json, vae/, text_encoder/, ...   links to the base checkpoint's other components
                                                      (when the run started from one), so the folder
                                                      is a whole model for `cogvx generate` and the rest

The folder is written under a temporary name and renamed when complete: a crash never leaves a
checkpoint that looks finished. A training_state.pt that is missing, truncated, corrupt or holds
Python objects (it is read with `weights_only=True`: unpickling objects could run code) is a
`ResumeError` that names the file and the checkpoint to continue from instead.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import re
from pathlib import Path

import torch

from cogvx.errors import CogvxError
from cogvx.modeling.checkpoint import save_state_dict, staged_directory, write_json
from cogvx.modeling.configs import TransformerConfig, VAEConfig

logger = logging.getLogger(__name__)

STATE_FILE = "training_state.pt"
CONFIG_CLASSES = {"transformer": TransformerConfig, "vae": VAEConfig}
_NAME = re.compile(r"^checkpoint-(\d+)$")


class ResumeError(CogvxError):
    """A checkpoint that cannot continue this run; the message says what differs and what to do."""


def checkpoint_dir(output_dir: str | Path, step: int) -> Path:
    return Path(output_dir) / f"checkpoint-{step}"


def _checkpoint_folders(output_dir: str | Path) -> list[Path]:
    """Every checkpoint-STEP folder, finished or not, in step order."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in output_dir.iterdir() if (m := _NAME.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found)]


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """Finished checkpoints (with a training state) in step order."""
    return [p for p in _checkpoint_folders(output_dir) if (p / STATE_FILE).is_file()]


def _instead(path: Path) -> str:
    """What to do when checkpoint `path` cannot continue the run: the checkpoint before it, if any."""
    match = _NAME.match(path.name)
    earlier = [p for p in list_checkpoints(path.parent)
               if match and int(_NAME.match(p.name).group(1)) < int(match.group(1))]
    if earlier:
        return (f"move {path.name} out of {path.parent} to continue from {earlier[-1].name} with --resume latest "
                f"(or pass --resume {earlier[-1]})")
    if match:
        return f"move {path.name} out of {path.parent} and start the run again (no earlier checkpoint is there)"
    return "pass --resume another checkpoint-STEP folder, or 'latest'"


def resolve_resume(output_dir: str | Path, resume: str | Path | None) -> Path | None:
    """`None` -> fresh run (refused when checkpoints exist), 'latest' -> the newest, else that folder.

    'latest' refuses a newest checkpoint-STEP folder without its training_state.pt rather than
    falling back to an older one silently (whose run would then overwrite the newer folder)."""
    folders = _checkpoint_folders(output_dir)
    if resume is None:
        if folders:
            raise ResumeError(
                f"{output_dir} already holds {folders[-1].name}; pass --resume latest to continue that run, "
                "or choose another output_dir"
            )
        return None
    if str(resume) == "latest":
        if not folders:
            logger.info("no checkpoint in %s yet: starting fresh", output_dir)
            return None
        newest = folders[-1]
        if not (newest / STATE_FILE).is_file():
            raise ResumeError(f"{newest} has no {STATE_FILE} (the trainer's state: step, optimizer, random "
                              f"streams), so it cannot continue the run; {_instead(newest)}")
        return newest
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


STATE_KEYS = ("component", "step", "stage", "stage_step", "optimizer", "ranks", "extra")


def _why_unreadable(error: Exception) -> str:
    """A short reason in our words (torch's messages run to paragraphs and advise weights_only=False)."""
    if match := re.search(r"zip archive: ([^.]+)", str(error)):
        return match.group(1)
    if isinstance(error, EOFError):
        return "it is empty or ends early"
    return "it is not a file torch.save wrote"


def read_state(path: Path) -> dict:
    """The training_state.pt of a checkpoint (plain tensors and containers only).

    Read with `weights_only=True`: a file holding other Python objects is refused, never unpickled."""
    path = Path(path)
    file = path / STATE_FILE
    if not file.is_file():
        raise ResumeError(f"{path} has no {STATE_FILE}, so it cannot continue the run; {_instead(path)}")
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        found = re.search(r"GLOBAL ([\w.]+)", str(error))
        if found:  # objects a weights-only load refuses: cogvx never writes those
            raise ResumeError(
                f"{file} holds a Python object ({found.group(1)}), not only tensors and numbers; it was not loaded "
                f"(unpickling it could run code) and a cogvx checkpoint never holds one, so the file was replaced "
                f"or altered: {_instead(path)}"
            ) from None
        raise ResumeError(f"{file} is corrupt or truncated ({_why_unreadable(error)}); {_instead(path)}") from None
    except (PermissionError, IsADirectoryError):
        raise  # the user's file system: the CLI says so in one line
    except Exception as error:  # noqa: BLE001 -- a damaged file fails in many ways in torch.load (EOFError, KeyError)
        raise ResumeError(f"{file} is corrupt or truncated ({_why_unreadable(error)}); {_instead(path)}") from None
    missing = [key for key in STATE_KEYS if key not in state] if isinstance(state, dict) else list(STATE_KEYS)
    if missing:
        raise ResumeError(f"{file} is not a cogvx training state (no {', '.join(missing)}); {_instead(path)}")
    return state
