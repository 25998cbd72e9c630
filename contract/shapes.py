"""Shape specs and profiles: the single source of truth for shapes.

A `ShapeSpec` is one request in video units (videos, frames, height, width, text tokens). A
`ShapeProfile` is min / opt / max over specs; static when all three are equal. The same object
feeds ONNX dynamic axes, input validation before any run, runtime buffer shapes and TensorRT
optimization profiles.

CLI syntax: `--profile 49x480x720` (static), or `--profile dynamic --frames 9:49:49
--height 256:480:768 --width 256:720:1360 [--batch 1:1:2]` (min:opt:max).
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass

from cogvx.errors import CogvxError
from cogvx.modeling.configs import ModelConfig

DIMENSIONS = ("batch", "frames", "height", "width", "text_len")
MAX_DIGITS = 9  # a profile dimension of a billion or more is a typo


class ProfileError(CogvxError):
    """A profile or a request that does not fit; the message names the dimension and the range."""


@dataclass(frozen=True)
class ShapeSpec:
    """One request: `batch` videos of `frames` x `height` x `width`, prompts of `text_len` tokens."""

    batch: int = 1
    frames: int = 49
    height: int = 480
    width: int = 720
    text_len: int = 226

    def __post_init__(self) -> None:
        for dim in DIMENSIONS:
            value = getattr(self, dim)
            if not isinstance(value, int) or isinstance(value, bool):
                raise ProfileError(f"{dim} must be a whole number (got {value!r})")

    @classmethod
    def parse(cls, text: str, **defaults) -> ShapeSpec:
        """'49x480x720' (frames x height x width), optionally 'Bx' in front: '2x49x480x720'."""
        number = rf"([0-9]{{1,{MAX_DIGITS}}})"  # ASCII digits, few enough for any real size
        match = re.fullmatch(rf"\s*(?:{number}x)?{number}x{number}x{number}\s*", text)
        if not match:
            raise ProfileError(f"shape {text!r} is not FRAMESxHEIGHTxWIDTH (e.g. 49x480x720) or BATCHxFRAMESxHEIGHTxWIDTH")
        batch, frames, height, width = match.groups()
        return cls(**{**defaults, "frames": int(frames), "height": int(height), "width": int(width),
                      **({"batch": int(batch)} if batch else {})})

    def latent_frames(self, temporal_compression: int = 4) -> int:
        return (self.frames - 1) // temporal_compression + 1

    def __str__(self) -> str:
        return f"{self.batch}x{self.frames}x{self.height}x{self.width} (text {self.text_len})"


@dataclass(frozen=True)
class ShapeProfile:
    min: ShapeSpec
    opt: ShapeSpec
    max: ShapeSpec

    def __post_init__(self) -> None:
        for dim in DIMENSIONS:
            low, mid, high = (getattr(s, dim) for s in (self.min, self.opt, self.max))
            if not low <= mid <= high:
                raise ProfileError(f"profile {dim}: need min <= opt <= max (got {low}:{mid}:{high})")
            if low < 1:
                raise ProfileError(f"profile {dim}: values must be positive (got min {low})")

    @classmethod
    def static(cls, spec: ShapeSpec) -> ShapeProfile:
        return cls(spec, spec, spec)

    @property
    def is_static(self) -> bool:
        return self.min == self.opt == self.max

    def range(self, dim: str) -> tuple[int, int, int]:
        return getattr(self.min, dim), getattr(self.opt, dim), getattr(self.max, dim)

    def dynamic_dims(self) -> list[str]:
        return [dim for dim in DIMENSIONS if self.range(dim)[0] != self.range(dim)[2]]

    def check(self, spec: ShapeSpec) -> None:
        """Refuse a request outside the profile, before any work, naming the dimension and the range."""
        for dim in DIMENSIONS:
            low, _, high = self.range(dim)
            value = getattr(spec, dim)
            if not low <= value <= high:
                allowed = f"exactly {low}" if low == high else f"{low} to {high}"
                raise ProfileError(f"{dim} {value} is outside this engine's profile ({allowed}); "
                                   "export again with a profile that covers it")

    def validate_for(self, model: ModelConfig) -> None:
        """Every corner of the profile must be a shape the model can run."""
        t = model.transformer
        multiple = 8 * t.patch_size
        for name, spec in (("min", self.min), ("opt", self.opt), ("max", self.max)):
            if (spec.frames - 1) % model.vae.temporal_compression:
                raise ProfileError(f"profile {name} frames {spec.frames}: frames must be 4k+1 (e.g. 9, 49, 81)")
            for dim in ("height", "width"):
                if getattr(spec, dim) % multiple:
                    raise ProfileError(f"profile {name} {dim} {getattr(spec, dim)}: must be a multiple of {multiple}")
            if t.positions != "rope" and spec.text_len != t.max_text_seq_length:
                raise ProfileError(f"profile {name} text_len {spec.text_len}: {model.name} takes exactly "
                                   f"{t.max_text_seq_length} text tokens")
            if t.positions == "rope+learned" and (spec.height, spec.width) != (8 * t.sample_height, 8 * t.sample_width):
                raise ProfileError(f"profile {name}: {model.name} has learned positions for "
                                   f"{8 * t.sample_height}x{8 * t.sample_width} only")
            if t.rope_grid == "slice" and (spec.height > 8 * t.sample_height or spec.width > 8 * t.sample_width):
                raise ProfileError(f"profile {name}: {spec.height}x{spec.width} exceeds the RoPE grid "
                                   f"{8 * t.sample_height}x{8 * t.sample_width}")

    def to_dict(self) -> dict:
        return {name: dataclasses.asdict(getattr(self, name)) for name in ("min", "opt", "max")}

    @classmethod
    def from_dict(cls, data: dict) -> ShapeProfile:
        return cls(*(ShapeSpec(**data[name]) for name in ("min", "opt", "max")))

    def __str__(self) -> str:
        if self.is_static:
            return f"static {self.opt}"
        return "dynamic " + ", ".join(f"{d} {':'.join(map(str, self.range(d)))}" for d in self.dynamic_dims())


def _triple(text: str, dim: str) -> tuple[int, int, int]:
    parts = text.split(":")
    if len(parts) not in (1, 3) or not all(re.fullmatch(rf"\s*[0-9]{{1,{MAX_DIGITS}}}\s*", p) for p in parts):
        raise ProfileError(f"--{dim.replace('_', '-')} {text!r}: give MIN:OPT:MAX (e.g. 9:49:49) or one number")
    values = [int(p) for p in parts]
    return (values[0],) * 3 if len(values) == 1 else tuple(values)


def parse_profile(profile: str, default: ShapeSpec, **ranges: str | None) -> ShapeProfile:
    """The CLI: `profile` is 'FxHxW' (static) or 'dynamic'; `ranges` give MIN:OPT:MAX per dimension."""
    if profile != "dynamic":
        spec = ShapeSpec.parse(profile, batch=default.batch, text_len=default.text_len)
        for dim, text in ranges.items():
            if text is not None:
                value = _triple(text, dim)
                if value[0] != value[2]:
                    raise ProfileError(f"--{dim} {text} is a range, but --profile {profile} is static; "
                                       "use --profile dynamic")
                spec = dataclasses.replace(spec, **{dim: value[0]})
        return ShapeProfile.static(spec)
    unknown = sorted(set(ranges) - set(DIMENSIONS))
    if unknown:
        raise ProfileError(f"unknown profile dimensions {unknown}; use {', '.join(DIMENSIONS)}")
    corners = {dim: _triple(ranges[dim], dim) if ranges.get(dim) else (getattr(default, dim),) * 3
               for dim in DIMENSIONS}
    return ShapeProfile(*(ShapeSpec(**{dim: corners[dim][k] for dim in DIMENSIONS}) for k in range(3)))
