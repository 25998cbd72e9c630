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
up front, with the allowed values in the message. Every number and choice has a rule in `RULES`
(field -> what it takes): floats are finite and in range (lr > 0, betas in [0, 1), weights >= 0),
counts are whole numbers (never a bool) >= 1, or >= 0 where 0 means none, choices come from their set.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import tomllib
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cogvx.errors import CogvxError
from cogvx.modeling.configs import PRESETS
from cogvx.modeling.precision import Precision, PrecisionError

logger = logging.getLogger(__name__)

STRATEGIES = ("ddp", "fsdp2")
# float16 is refused: it overflows in CogVideoX 5B training (NaN losses); bf16 has fp32's range.
PRECISIONS = (Precision.FP32, Precision.BF16)
RECONSTRUCTIONS = ("l1", "mse")  # VAE reconstruction losses (cogvx.training.losses.RECONSTRUCTION_LOSSES)


class TrainConfigError(CogvxError):
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
    precision: Precision = Precision.FP32  # a run file writes "fp32" or "bf16"
    strategy: str = "ddp"
    device: str = "auto"
    log_every: int = 1
    save_every: int = 500
    stop_at_step: int | None = None  # leave early (a preemptible job); resume continues the same run

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "precision", Precision.parse(self.precision, allowed=PRECISIONS))
        except PrecisionError:
            raise TrainConfigError(f"precision must be one of {', '.join(p.value for p in PRECISIONS)} "
                                   f"(got {self.precision!r}); float16 overflows in CogVideoX 5B training, "
                                   "use bf16") from None
        if not self.stages:
            raise TrainConfigError("stages is empty; add at least one [[stages]] with height, width, frames, steps, lr")
        _check_section(self, "")
        for name in ("model", "data", "optimizer", "vae_loss"):
            _check_section(getattr(self, name), name)
        for k, stage in enumerate(self.stages):
            where = f"stages[{k}]"
            if not isinstance(stage, Stage):
                raise TrainConfigError(f"{where} must be a table of height, width, frames, steps, lr (got {stage!r})")
            _check_section(stage, where)
            if (stage.frames - 1) % 4:
                lower = max(1, (stage.frames - 1) // 4 * 4 + 1)
                raise TrainConfigError(f"{where}: frames must be 4k+1 (got {stage.frames}); try {lower} or {lower + 4}")
            for name in ("height", "width"):
                value = getattr(stage, name)
                if value % 16:
                    near = max(16, round(value / 16) * 16)
                    raise TrainConfigError(f"{where}: {name} must be a positive multiple of 16 (got {value}); try {near}")
        checks = [
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
        """Plain data, as a run file holds it (`config_from_dict(config.to_dict()) == config`)."""
        data = dataclasses.asdict(self)
        data["precision"] = self.precision.value  # a str enum; the plain string keeps toml/yaml writers simple
        return data


# -- what each field takes ------------------------------------------------------------------------

def _finite(value: Any) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:  # an int past float's range (YAML reads any length)
        return False


def _shown(value: Any, limit: int = 60) -> str:
    """repr(value), shortened past `limit` characters (a 400-digit number stays one readable line)."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit - 20]}... ({len(text)} characters)"


@dataclass(frozen=True)
class Rule:
    """What one field takes: `kind` int (a whole number, never a bool), float (a finite number; ints
    read as floats), str or bool, passing `test`; `optional`: None (off) too; `items`: a tuple of
    that many values, each checked."""

    kind: type
    allowed: str  # said in the refusal: "a whole number >= 1", "a finite number > 0", "one of 'l1', 'mse'"
    test: Callable[[Any], bool] = lambda value: True
    optional: str = ""  # how None reads ("null for no clipping"); empty: None is refused
    usual: str = ""  # a value that works, for the message
    items: int | None = None

    def accepts(self, value: Any) -> bool:
        if self.kind is bool:
            return isinstance(value, bool)
        if isinstance(value, bool):
            return False
        if self.kind is int:
            return isinstance(value, int) and self.test(value)
        if self.kind is float:
            return isinstance(value, (int, float)) and _finite(value) and self.test(value)
        return isinstance(value, self.kind) and self.test(value)

    def refusal(self, where: str, value: Any) -> str:
        allowed = f"{self.allowed}, or {self.optional}" if self.optional else self.allowed
        if self.items is not None and not where.endswith("]"):
            allowed = f"a list of {self.items} entries, each {self.allowed}"
        usual = f"; {self.usual} is usual" if self.usual else ""
        return f"{where} must be {allowed} (got {_shown(value)}){usual}"

    def check(self, where: str, value: Any) -> None:
        if value is None and self.optional:
            return
        if self.items is None:
            if not self.accepts(value):
                raise TrainConfigError(self.refusal(where, value))
            return
        if not isinstance(value, tuple) or len(value) != self.items:
            raise TrainConfigError(self.refusal(where, value))
        for k, item in enumerate(value):
            if not self.accepts(item):
                raise TrainConfigError(self.refusal(f"{where}[{k}]", item))


def whole(minimum: int, maximum: int | None = None, *, optional: str = "", usual: str = "") -> Rule:
    """A count: a whole number >= minimum (<= maximum)."""
    allowed = f"a whole number >= {minimum}" if maximum is None else f"a whole number in [{minimum}, {maximum}]"
    return Rule(int, allowed, lambda v: v >= minimum and (maximum is None or v <= maximum), optional, usual)


def number(low: float, high: float | None = None, *, low_open: bool = False, high_open: bool = False,
           optional: str = "", usual: str = "", items: int | None = None) -> Rule:
    """A finite number above `low` (`low_open`: strictly) and below `high` (`high_open`: strictly)."""
    if high is None:
        allowed = f"a finite number {'>' if low_open else '>='} {low:g}"
    else:
        allowed = f"a number in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"

    def test(v: float) -> bool:
        above = v > low if low_open else v >= low
        below = high is None or (v < high if high_open else v <= high)
        return above and below
    return Rule(float, allowed, test, optional, usual, items)


def one_of(options, *, optional: str = "") -> Rule:
    return Rule(str, f"one of {', '.join(map(repr, options))}", lambda v: v in options, optional)


def text(*, optional: str = "", nonempty: bool = False) -> Rule:
    if nonempty:
        return Rule(str, "a non-empty string", lambda v: bool(v.strip()), optional)
    return Rule(str, "a string", optional=optional)


FLAG = Rule(bool, "true or false")
POSITIVE_LR = number(0, low_open=True, usual="1e-4")

# field -> rule for every value of every section (the sections and `precision` have their own checks)
RULES: dict[type, dict[str, Rule]] = {
    TrainConfig: {
        "output_dir": text(nonempty=True),
        "batch_size": whole(1),
        "seed": whole(0, 2**32 - 1),  # seeds torch generators (seed * 1_000_003 + ... stays in range)
        "explicit_uniform": FLAG,
        "text_dropout": number(0, 1, usual="0.1"),
        "pack_tokens": whole(1, optional="left out to stack clips"),
        "gradient_checkpointing": FLAG,
        "strategy": one_of(STRATEGIES),
        "device": text(nonempty=True),  # which devices exist is checked when the trainer starts
        "log_every": whole(1),
        "save_every": whole(1),
        "stop_at_step": whole(1, optional="left out to run every stage"),
    },
    ModelSection: {
        "checkpoint": text(optional="left out", nonempty=True),
        "preset": one_of(tuple(PRESETS), optional="left out"),
        "overrides": Rule(dict, "a table of config fields"),
    },
    DataSection: {
        "folder": text(optional="left out", nonempty=True),
        "cache": text(optional="left out", nonempty=True),
    },
    Stage: {
        "height": whole(16, usual="480"),  # and a multiple of 16 (TrainConfig says which one is near)
        "width": whole(16, usual="720"),
        "frames": whole(1, usual="49"),  # and 4k+1
        "steps": whole(1),
        "lr": POSITIVE_LR,
        "warmup_steps": whole(0),
        "name": text(),
    },
    OptimizerSection: {
        "betas": number(0, 1, high_open=True, usual="[0.9, 0.999]", items=2),
        "weight_decay": number(0, usual="0.0 or 1e-4"),
        "eps": number(0, low_open=True, usual="1e-8"),
        "grad_clip": number(0, low_open=True, optional="null for no clipping", usual="1.0"),
    },
    VAELossSection: {
        "reconstruction": one_of(RECONSTRUCTIONS),
        "kl_weight": number(0, usual="1e-6"),
        "perceptual_weight": number(0, usual="0.1"),
        "vgg16_weights": text(optional="left out for no perceptual term", nonempty=True),
        "lpips_weights": text(optional="left out", nonempty=True),
        "gan_weight": number(0, usual="0.1"),
        "gan_start_step": whole(0, optional="left out for no discriminator"),
        "adaptive_gan_weight": FLAG,
        "discriminator_lr": POSITIVE_LR,
        "discriminator_channels": whole(1, usual="64"),
        "discriminator_layers": whole(1, usual="3"),
    },
}


def _check_section(section: Any, where: str) -> None:
    """Every field of a section against its rule, in field order; the first refusal names key and value."""
    rules = RULES.get(type(section))
    if rules is None:
        raise TrainConfigError(f"{where} must be a table of keys (got {section!r})")
    for f in dataclasses.fields(section):
        if f.name in rules:
            rules[f.name].check(f"{where}.{f.name}" if where else f.name, getattr(section, f.name))


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
    rules = RULES.get(cls, {})
    values = {name: _value(hints[name], value, f"{where}.{name}" if where else name, rules.get(name))
              for name, value in data.items()}
    try:
        return cls(**values)
    except TypeError as error:
        raise TrainConfigError(f"{where or 'the config'}: {error}") from None


def _value(hint, value: Any, where: str, rule: Rule | None = None):
    """`value` as `hint` (ints and YAML's number strings read as floats), or a refusal naming `where`;
    `rule` gives the message (what the field takes) for a value of the wrong type."""
    def refuse(kind: str):
        message = rule.refusal(where, value) if rule is not None else f"{where} must be {kind} (got {_shown(value)})"
        return TrainConfigError(message)

    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _value(inner[0], value, where, rule)
    if dataclasses.is_dataclass(hint):
        return _convert(hint, value, where)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise TrainConfigError(rule.refusal(where, value) if rule is not None
                                   else f"{where} must be a list (got {_shown(value)})")
        if args and args[-1] is Ellipsis:
            return tuple(_value(args[0], v, f"{where}[{k}]") for k, v in enumerate(value))
        if len(value) != len(args):
            raise TrainConfigError(rule.refusal(where, value) if rule is not None
                                   else f"{where} must have {len(args)} entries (got {len(value)})")
        return tuple(_value(a, v, f"{where}[{k}]", rule) for k, (a, v) in enumerate(zip(args, value)))
    if origin is dict:
        if not isinstance(value, dict):
            raise TrainConfigError(f"{where} must be a table (got {value!r})")
        return dict(value)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        try:
            return float(value)
        except OverflowError:  # past float's range: not finite
            raise refuse("a finite number") from None
    if hint is float and isinstance(value, str):  # YAML 1.1 reads 1e-4 (no dot) as a string
        try:
            return float(value)
        except ValueError:
            pass
    names = {int: "a whole number", float: "a number", str: "a string", bool: "true or false"}
    if hint in names and type(value) is not hint:
        raise refuse(names[hint])
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
        except yaml.YAMLError as error:  # PyYAML's own message spans several lines; keep its problem and place
            problem, mark = getattr(error, "problem", None) or str(error), getattr(error, "problem_mark", None)
            at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
            raise TrainConfigError(f"{path} is not valid YAML ({problem}{at})") from None
        return data if data is not None else {}
    raise TrainConfigError(f"{path}: config files end in .toml, .yaml or .yml (got {path.suffix or 'no suffix'!r})")


def load_config(path: str | Path, **overrides: Any) -> TrainConfig:
    """Read a run file; `overrides` (top-level keys, None = keep the file's value) win over it."""
    data = read_config_file(path)
    data.update({k: v for k, v in overrides.items() if v is not None})
    return config_from_dict(data)
