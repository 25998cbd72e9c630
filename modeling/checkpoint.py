"""Checkpoint files in the diffusers layout: read, validate, assign, write.

A component folder holds `config.json` and its weights as one `<prefix>.safetensors` or shards
`<prefix>-0000k-of-0000n.safetensors` listed by `<prefix>.safetensors.index.json`. Modules are
built on the meta device and the loaded tensors are assigned (`load_state_dict(assign=True)`), so
a 5B transformer never exists twice in memory. Pickle weights (`.bin`) are read only with
`torch.load(weights_only=True)`.

Every file is written to a temporary name and renamed, so a crash never leaves a half file that
looks finished.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from cogvx.errors import CogvxError


logger = logging.getLogger(__name__)

WEIGHT_PREFIXES = ("diffusion_pytorch_model", "model")
_UMASK = os.umask(0)
os.umask(_UMASK)


class CheckpointError(CogvxError):
    """A checkpoint folder or file that cannot be loaded as asked; the message says why."""


def find_weight_files(directory: str | Path) -> list[Path]:
    """The weight files of one component folder, shards in index order."""
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"checkpoint folder {directory} does not exist")
    for prefix in WEIGHT_PREFIXES:
        index = directory / f"{prefix}.safetensors.index.json"
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError) as error:
                raise CheckpointError(f"{index} is not a valid safetensors index ({error})") from None
            shards = list(dict.fromkeys(weight_map.values()))
            missing = [name for name in shards if not (directory / name).is_file()]
            if missing:
                raise CheckpointError(f"{index} lists shards that are not in {directory}: {missing}")
            return [directory / name for name in shards]
        single = directory / f"{prefix}.safetensors"
        if single.is_file():
            return [single]
    pickles = sorted(p for p in directory.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt"))
    if pickles:
        return pickles
    raise CheckpointError(
        f"no weights in {directory}: expected diffusion_pytorch_model.safetensors (or sharded with an "
        ".index.json) next to config.json"
    )


def _read_safetensors(path: Path, dtype: torch.dtype | None) -> Iterator[tuple[str, torch.Tensor]]:
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            for name in handle.keys():
                tensor = handle.get_tensor(name)
                yield name, (tensor.to(dtype) if dtype is not None and tensor.is_floating_point() else tensor)
    except (SafetensorError, OSError) as error:
        raise CheckpointError(
            f"{path} is corrupt or truncated ({error}); re-download or re-save the checkpoint"
        ) from None


def pickle_refusal(path: Path, error: BaseException) -> CheckpointError:
    """Why a pickle checkpoint was not loaded. torch's own message is left out on purpose: it
    suggests retrying with weights_only=False, which would run whatever code the file carries."""
    return CheckpointError(
        f"refusing {path}: it is not a plain tensor pickle that loads with weights_only=True "
        f"({type(error).__name__}: corrupt, truncated, or holding objects beyond tensors); cogvx never runs "
        "pickled code. Convert the checkpoint to safetensors with a tool you trust, or re-download it")


def _read_pickle(path: Path, dtype: torch.dtype | None) -> Iterator[tuple[str, torch.Tensor]]:
    logger.warning("%s is a pickle checkpoint; loading with weights_only=True (convert it to safetensors)", path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as error:  # torch raises UnpicklingError, RuntimeError, EOFError... for bad pickles
        raise pickle_refusal(path, error) from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} does not hold a state dict (got {type(state).__name__})")
    for name, tensor in state.items():
        yield name, (tensor.to(dtype) if dtype is not None and tensor.is_floating_point() else tensor)


def read_state_dict(directory: str | Path, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """All tensors of a component folder, floating ones cast to `dtype`."""
    state: dict[str, torch.Tensor] = {}
    for path in find_weight_files(directory):
        reader = _read_safetensors if path.suffix == ".safetensors" else _read_pickle
        for name, tensor in reader(path, dtype):
            if name in state:
                raise CheckpointError(f"tensor {name!r} appears in more than one shard of {directory}")
            state[name] = tensor
    return state


def _summarise(names: list[str], limit: int = 8) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" ... (+{len(names) - limit} more)" if len(names) > limit else "")


def check_state_dict(model: nn.Module, state: dict[str, torch.Tensor], where: str) -> None:
    """Missing, unexpected and mis-shaped tensors, named, in one error."""
    expected = {name: tuple(t.shape) for name, t in model.state_dict(keep_vars=True).items()}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mis_shaped = [
        f"{name} {tuple(state[name].shape)} (model wants {expected[name]})"
        for name in sorted(set(expected) & set(state))
        if tuple(state[name].shape) != expected[name]
    ]
    problems = []
    if missing:
        problems.append(f"missing {len(missing)}: {_summarise(missing)}")
    if unexpected:
        problems.append(f"unexpected {len(unexpected)}: {_summarise(unexpected)}")
    if mis_shaped:
        problems.append(f"mis-shaped {len(mis_shaped)}: {_summarise(mis_shaped)}")
    if problems:
        raise CheckpointError(
            f"weights in {where} do not fit the {type(model).__name__} built from its config.json; "
            + "; ".join(problems)
            + ". Check that config.json belongs to these weights."
        )


@contextmanager
def meta_device() -> Iterator[None]:
    """Build modules without allocating their parameters."""
    with torch.device("meta"):
        yield


def assign_state_dict(model: nn.Module, state: dict[str, torch.Tensor], where: str) -> nn.Module:
    """Validate, then assign `state` into a (meta) model; no second copy of the weights."""
    check_state_dict(model, state, where)
    model.load_state_dict(state, strict=True, assign=True)
    left_on_meta = [name for name, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if left_on_meta:
        raise CheckpointError(f"{type(model).__name__} still has tensors on the meta device: {left_on_meta}")
    return model


def load_module(build, directory: str | Path, dtype: torch.dtype | None) -> nn.Module:
    """`build()` on the meta device, then read and assign the folder's weights in `dtype`."""
    with meta_device():
        model = build()
    state = read_state_dict(directory, dtype)
    model = assign_state_dict(model, state, str(directory))
    return model.eval().requires_grad_(False)


def atomic_write(path: Path, write) -> None:
    """`write(temporary_name)` in the target folder, then rename onto `path`; no half file on failure."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    try:
        write(temporary)
        os.chmod(temporary, 0o666 & ~_UMASK)  # mkstemp makes 0600; finished files follow the umask
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


@contextmanager
def staged_directory(target: Path) -> Iterator[Path]:
    """A temporary sibling folder to fill; it replaces `target` only when the block finishes, so an
    interruption never leaves a folder that looks finished."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        yield staging
        os.chmod(staging, 0o777 & ~_UMASK)  # mkdtemp makes 0700; finished folders follow the umask
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def write_json(path: str | Path, data: dict) -> None:
    atomic_write(Path(path), lambda tmp: Path(tmp).write_text(json.dumps(data, indent=2, sort_keys=True) + "\n"))


def save_component(
    model: nn.Module,
    config_dict: dict,
    directory: str | Path,
    prefix: str = "diffusion_pytorch_model",
    max_shard_bytes: int | None = None,
) -> None:
    """Write `config.json` and safetensors (sharded past `max_shard_bytes`) in the diffusers layout."""
    save_state_dict(model.state_dict(), config_dict, directory, prefix, max_shard_bytes)


def save_state_dict(
    state: dict[str, torch.Tensor],
    config_dict: dict,
    directory: str | Path,
    prefix: str = "diffusion_pytorch_model",
    max_shard_bytes: int | None = None,
) -> None:
    """`save_component` for a state dict already gathered (e.g. the full weights of a sharded model)."""
    directory = Path(directory)
    state = {name: t.detach().contiguous().cpu() for name, t in state.items()}
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, tensor in state.items():
        nbytes = tensor.numel() * tensor.element_size()
        if max_shard_bytes is not None and shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = tensor
        size += nbytes
    if len(shards) == 1:
        atomic_write(directory / f"{prefix}.safetensors", lambda tmp: save_file(shards[0], tmp))
    else:
        weight_map = {}
        for k, shard in enumerate(shards, start=1):
            file_name = f"{prefix}-{k:05d}-of-{len(shards):05d}.safetensors"
            atomic_write(directory / file_name, lambda tmp, shard=shard: save_file(shard, tmp))
            weight_map.update(dict.fromkeys(shard, file_name))
        total = sum(t.numel() * t.element_size() for t in state.values())
        write_json(directory / f"{prefix}.safetensors.index.json",
                   {"metadata": {"total_size": total}, "weight_map": weight_map})
    # config last: a folder with a config.json is a finished component
    write_json(directory / "config.json", config_dict)
