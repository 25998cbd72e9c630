"""Training-run configs: one dataclass per section, read from TOML (stdlib) or YAML (PyYAML).

A run file looks like this (TOML; YAML has the same keys):

    output_dir = "runs/toy-transformer"
    batch_size = 2
    seed = 0

    [model]
    checkpoint = "checkpoints/toy"      # diffusers layout: weights to start from, and the encoders
    preset = "toy"                      # or: random weights of a preset (overrides change fields)
    overrides = { num_layers = 2 }

    [data]
    folder = "data/toy"                 # videos + captions, or `cache` = a latent cache

    [[stages]]                          # progressive: low resolution first, then high
    height = 32
    width = 32
    frames = 9
    steps = 200
    lr = 1e-4

Unknown keys are refused with the section, the key and the allowed keys; values are checked once,
up front, with the allowed values in the message.
"""

from __future__ import annotations

import dataclasses
import logging
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

STRATEGIES = ("ddp", "fsdp2")
PRECISIONS = ("fp32", "bf16")
RECONSTRUCTIONS = ("l1", "mse")  # VAE reconstruction losses (cogvx.training.losses.RECONSTRUCTION_LOSSES)


class TrainConfigError(ValueError):
    """A training config that cannot run as written; the message says what to change."""


@dataclass(frozen=True)
class ModelSection:
    """Where the weights come from.

    checkpoint: a diffusers-layout model folder; the trained component starts from its weights
    (unless `preset` is also set) and the other components (VAE, text encoder, scheduler) come from
    it. preset: random weights of a named preset's architecture, `overrides` changing fields.
    """

    checkpoint: str | None = None
    preset: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class DataSection:
    """folder: clips with captions; cache: precomputed latents + text embeddings (one of the two)."""

    folder: str | None = None
    cache: str | None = None


@dataclass(frozen=True)
class Stage:
    """One progressive stage: clips of `frames` x `height` x `width` for `steps` steps at `lr`."""

    height: int
    width: int
    frames: int
    steps: int
    lr: float
    warmup_steps: int = 0
    name: str = ""


@dataclass(frozen=True)
class OptimizerSection:
    """AdamW settings shared by every stage (the learning rate is per stage)."""

    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    eps: float = 1e-8
    grad_clip: float | None = 1.0


@dataclass(frozen=True)
class VAELossSection:
    """The VAE objective: L1 + kl_weight KL + perceptual_weight LPIPS + gan_weight GAN (from gan_start_step).

    reconstruction: "l1" (the paper's) or "mse" (for sparse scenes where L1's median is the background)."""

    reconstruction: str = "l1"
    kl_weight: float = 1e-6
    perceptual_weight: float = 0.1
    vgg16_weights: str | None = None  # torchvision VGG16 state dict; no path -> no perceptual term
    lpips_weights: str | None = None  # LPIPS' linear layers (optional)
    gan_weight: float = 0.1
    gan_start_step: int | None = None  # None -> no discriminator at all
    adaptive_gan_weight: bool = True
    discriminator_lr: float = 1e-4
    discriminator_channels: int = 64
    discriminator_layers: int = 3


@dataclass(frozen=True)
class TrainConfig:
    """A whole training run (VAE or transformer)."""

    output_dir: str
    stages: tuple[Stage, ...]
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    optimizer: OptimizerSection = field(default_factory=OptimizerSection)
    vae_loss: VAELossSection = field(default_factory=VAELossSection)
    batch_size: int = 1
    seed: int = 0
    explicit_uniform: bool = True
    text_dropout: float = 0.1
    pack_tokens: int | None = None  # frame pack: clips packed into rows of at most this many tokens
    gradient_checkpointing: bool = False
    precision: str = "fp32"
    strategy: str = "ddp"
    device: str = "auto"
    log_every: int = 1
    save_every: int = 500
    stop_at_step: int | None = None  # leave early (a preemptible job); resume continues the same run

    def __post_init__(self) -> None:
        if not self.stages:
            raise TrainConfigError("stages is empty; add at least one [[stages]] with height, width, frames, steps, lr")
        for k, stage in enumerate(self.stages):
            where = f"stages[{k}]"
            if stage.steps < 1 or stage.lr <= 0 or stage.warmup_steps < 0:
                raise TrainConfigError(f"{where}: steps must be >= 1, lr > 0 and warmup_steps >= 0 "
                                       f"(got steps={stage.steps}, lr={stage.lr}, warmup_steps={stage.warmup_steps})")
            if stage.frames < 1 or (stage.frames - 1) % 4:
                lower = max(1, (stage.frames - 1) // 4 * 4 + 1)
                raise TrainConfigError(f"{where}: frames must be 4k+1 (got {stage.frames}); try {lower} or {lower + 4}")
            for name in ("height", "width"):
                value = getattr(stage, name)
                if value < 16 or value % 16:
                    near = max(16, round(value / 16) * 16)
                    raise TrainConfigError(f"{where}: {name} must be a positive multiple of 16 (got {value}); try {near}")
        checks = [
            (self.strategy in STRATEGIES, f"strategy must be one of {STRATEGIES} (got {self.strategy!r})"),
            (self.precision in PRECISIONS, f"precision must be one of {PRECISIONS} (got {self.precision!r}); "
                                           "float16 overflows in CogVideoX 5B training, use bf16"),
            (0.0 <= self.text_dropout <= 1.0, f"text_dropout must be in [0, 1] (got {self.text_dropout}); 0.1 is usual"),
            (self.batch_size >= 1, f"batch_size must be >= 1 (got {self.batch_size})"),
            (self.log_every >= 1 and self.save_every >= 1,
             f"log_every and save_every must be >= 1 (got {self.log_every}, {self.save_every})"),
            (self.vae_loss.reconstruction in RECONSTRUCTIONS,
             f"vae_loss.reconstruction must be 'l1' or 'mse' (got {self.vae_loss.reconstruction!r})"),
            (self.pack_tokens is None or self.pack_tokens > 0, f"pack_tokens must be > 0 (got {self.pack_tokens})"),
            (self.model.checkpoint is not None or self.model.preset is not None,
             "[model] needs checkpoint (a diffusers model folder) or preset (e.g. 'toy') or both"),
            (not (self.data.folder and self.data.cache), "[data] takes folder or cache, not both"),
            (not (self.strategy == "fsdp2" and self.vae_loss.adaptive_gan_weight and self.vae_loss.gan_start_step is not None),
             "the adaptive GAN weight differentiates the decoder's last layer, which fsdp2 shards; "
             "set vae_loss.adaptive_gan_weight = false or strategy = 'ddp'"),
        ]
        for ok, message in checks:
            if not ok:
                raise TrainConfigError(message)

    @property
    def total_steps(self) -> int:
        return sum(stage.steps for stage in self.stages)

    def replace(self, **changes) -> TrainConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# -- reading --------------------------------------------------------------------------------------

def _convert(cls, data: Any, where: str):
    """A dict -> dataclass `cls`, recursively, refusing unknown keys and wrong types by name."""
    if not isinstance(data, dict):
        raise TrainConfigError(f"{where or 'the config'} must be a table of keys (got {type(data).__name__})")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise TrainConfigError(
            f"unknown key{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))} in "
            f"{where or 'the top level'}; allowed keys: {', '.join(sorted(fields))}"
        )
    missing = sorted(name for name, f in fields.items() if name not in data
                     and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING)
    if missing:
        raise TrainConfigError(f"{where or 'the top level'} is missing {', '.join(missing)}")
    values = {name: _value(hints[name], value, f"{where}.{name}" if where else name) for name, value in data.items()}
    try:
        return cls(**values)
    except TypeError as error:
        raise TrainConfigError(f"{where or 'the config'}: {error}") from None


def _value(hint, value: Any, where: str):
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _value(inner[0], value, where)
    if dataclasses.is_dataclass(hint):
        return _convert(hint, value, where)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise TrainConfigError(f"{where} must be a list (got {value!r})")
        if args and args[-1] is Ellipsis:
            return tuple(_value(args[0], v, f"{where}[{k}]") for k, v in enumerate(value))
        if len(value) != len(args):
            raise TrainConfigError(f"{where} must have {len(args)} entries (got {len(value)})")
        return tuple(_value(a, v, f"{where}[{k}]") for k, (a, v) in enumerate(zip(args, value)))
    if origin is dict:
        if not isinstance(value, dict):
            raise TrainConfigError(f"{where} must be a table (got {value!r})")
        return dict(value)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str):  # YAML 1.1 reads 1e-4 (no dot) as a string
        try:
            return float(value)
        except ValueError:
            pass
    if hint in (int, float, str, bool) and (type(value) is not hint):
        raise TrainConfigError(f"{where} must be {hint.__name__} (got {value!r})")
    return value


def config_from_dict(data: dict[str, Any]) -> TrainConfig:
    """Build and validate a TrainConfig from plain data (what a TOML / YAML file holds)."""
    return _convert(TrainConfig, data, "")


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The raw table of a .toml, .yaml or .yml file."""
    path = Path(path)
    if not path.is_file():
        raise TrainConfigError(f"config file {path} does not exist")
    text = path.read_text()
    if path.suffix == ".toml":
        try:
            return tomllib.loads(text)
        except tomllib.TOMLDecodeError as error:
            raise TrainConfigError(f"{path} is not valid TOML ({error})") from None
    if path.suffix in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise TrainConfigError(f"{path}: reading YAML needs PyYAML (pip install pyyaml); or write the config as TOML") from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as error:
            raise TrainConfigError(f"{path} is not valid YAML ({error})") from None
        return data if data is not None else {}
    raise TrainConfigError(f"{path}: config files end in .toml, .yaml or .yml (got {path.suffix or 'no suffix'!r})")


def load_config(path: str | Path, **overrides: Any) -> TrainConfig:
    """Read a run file; `overrides` (top-level keys, None = keep the file's value) win over it."""
    data = read_config_file(path)
    data.update({k: v for k, v in overrides.items() if v is not None})
    return config_from_dict(data)
