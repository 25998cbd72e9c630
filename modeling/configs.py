"""Configs of every CogVideoX part, and the named presets.

One frozen dataclass per part. Field names follow the diffusers `config.json` keys, so a
checkpoint's config reads in with `from_dict` and writes back with `to_dict` unchanged; keys we
do not model (diffusers bookkeeping such as `_class_name`) are dropped, unknown keys that would
change the architecture are refused by name.

Presets are an exact lookup: `PRESETS["cogvideox-5b"]`. Their values are the published models'
(see docs/reference.md, 'Model families').
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from cogvx.errors import CogvxError

from .precision import Precision


# Keys diffusers / transformers write into config.json that carry no architecture.
_BOOKKEEPING_KEYS = {"_class_name", "_diffusers_version", "_name_or_path", "_use_default_values"}


class ConfigError(CogvxError):
    """A config that matches no known CogVideoX variant, or a bad config value."""


def _from_dict(cls, data: dict[str, Any], ignored: set[str] = frozenset()):
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(k for k in data if k not in names and k not in _BOOKKEEPING_KEYS and k not in ignored)
    if unknown:
        raise ConfigError(
            f"{cls.__name__}: unknown config keys {unknown}; this is not a CogVideoX "
            f"{cls.component} config (known keys: {sorted(names)})"
        )
    kwargs = {k: (tuple(v) if isinstance(v, list) else v) for k, v in data.items() if k in names}
    hints = typing.get_type_hints(cls)
    for key, value in kwargs.items():
        if not _matches(value, hints[key]):
            raise ConfigError(f"{cls.__name__}: {key} = {value!r} is not {_describe(hints[key])}; this config file "
                              "was edited or is not a CogVideoX config")
    return cls(**kwargs)


def _matches(value: Any, hint: Any) -> bool:
    """A config value of the annotated type: counts are non-negative whole numbers, reals are finite."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return any(_matches(value, arg) for arg in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if typing.get_origin(hint) is tuple:
        item = typing.get_args(hint)[0]
        return isinstance(value, tuple) and all(_matches(v, item) for v in value)
    if hint is bool or isinstance(value, bool):
        return hint is bool and isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and value >= 0
    if hint is float:
        return isinstance(value, (int, float)) and math.isfinite(value)
    return isinstance(value, hint)


def _describe(hint: Any) -> str:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " or ".join(_describe(arg) for arg in typing.get_args(hint))
    if typing.get_origin(hint) is tuple:
        return f"a list of {_describe(typing.get_args(hint)[0])}"
    return {int: "a whole number >= 0", float: "a finite number", bool: "true or false", str: "a string",
            type(None): "null"}.get(hint, str(hint))


class _ConfigIO:
    """from_dict / to_dict / from_file / save for the part configs."""

    component: ClassVar[str] = ""
    class_name: ClassVar[str] = ""
    ignored_keys: ClassVar[frozenset[str]] = frozenset()

    @classmethod
    def from_dict(cls, data: dict[str, Any]):
        return _from_dict(cls, data, cls.ignored_keys)

    @classmethod
    def from_file(cls, path: str | Path):
        path = Path(path)
        if path.is_dir():
            path = path / "config.json"
        if not path.is_file():
            raise FileNotFoundError(f"no {cls.component} config at {path}: expected a diffusers-layout config.json")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise ConfigError(f"{path} is not valid JSON ({error})") from None
        return cls.from_dict(data)

    def to_dict(self) -> dict[str, Any]:
        data = {"_class_name": self.class_name}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            data[f.name] = list(value) if isinstance(value, tuple) else value
        return data

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class TransformerConfig(_ConfigIO):
    """The expert diffusion transformer (diffusers `CogVideoXTransformer3DModel` keys).

    `sample_height` / `sample_width` are in latent pixels (60 x 90 for 480 x 720); `sample_frames`
    is in video frames (49), as diffusers keeps it for backwards compatibility.
    """

    component: ClassVar[str] = "transformer"
    class_name: ClassVar[str] = "CogVideoXTransformer3DModel"
    ignored_keys: ClassVar[frozenset[str]] = frozenset({"dropout"})

    num_attention_heads: int = 30
    attention_head_dim: int = 64
    in_channels: int = 16
    out_channels: int = 16
    flip_sin_to_cos: bool = True
    freq_shift: int = 0
    time_embed_dim: int = 512
    ofs_embed_dim: int | None = None
    text_embed_dim: int = 4096
    num_layers: int = 30
    attention_bias: bool = True
    sample_width: int = 90
    sample_height: int = 60
    sample_frames: int = 49
    patch_size: int = 2
    patch_size_t: int | None = None
    temporal_compression_ratio: int = 4
    max_text_seq_length: int = 226
    activation_fn: str = "gelu-approximate"
    timestep_activation_fn: str = "silu"
    norm_elementwise_affine: bool = True
    norm_eps: float = 1e-5
    spatial_interpolation_scale: float = 1.875
    temporal_interpolation_scale: float = 1.0
    use_rotary_positional_embeddings: bool = False
    use_learned_positional_embeddings: bool = False
    patch_bias: bool = True

    def __post_init__(self) -> None:
        if self.use_learned_positional_embeddings and not self.use_rotary_positional_embeddings:
            raise ConfigError(
                "learned positional embeddings without 3D RoPE match no CogVideoX variant "
                "(5B-I2V has both); set use_rotary_positional_embeddings=true"
            )
        if self.activation_fn != "gelu-approximate" or self.timestep_activation_fn != "silu":
            raise ConfigError(
                f"activation_fn={self.activation_fn!r}, timestep_activation_fn={self.timestep_activation_fn!r}: "
                "every CogVideoX uses 'gelu-approximate' and 'silu'"
            )
        if self.patch_size_t is not None and not self.use_rotary_positional_embeddings:
            raise ConfigError("temporal patching (patch_size_t) exists only in CogVideoX 1.5, which uses 3D RoPE")
        if self.use_rotary_positional_embeddings and self.attention_head_dim % 16:
            raise ConfigError(
                f"attention_head_dim={self.attention_head_dim}: 3D RoPE splits the head dim 2/8, 3/8, 3/8 "
                "(time, height, width) and each part must be even, so it must be a multiple of 16"
            )
        if not self.use_rotary_positional_embeddings and self.hidden_size % 4:
            raise ConfigError(f"3D sincos positions need hidden size divisible by 4 (got {self.hidden_size})")
        if not self.norm_elementwise_affine:
            raise ConfigError("norm_elementwise_affine=false matches no CogVideoX checkpoint")

    @property
    def hidden_size(self) -> int:
        return self.num_attention_heads * self.attention_head_dim

    @property
    def positions(self) -> str:
        """'sincos' (2B), 'rope' (5B, 1.5) or 'rope+learned' (5B-I2V)."""
        if not self.use_rotary_positional_embeddings:
            return "sincos"
        return "rope+learned" if self.use_learned_positional_embeddings else "rope"

    @property
    def rope_grid(self) -> str:
        """1.0 places RoPE positions by resize-and-crop of the base grid; 1.5 slices it."""
        return "slice" if self.patch_size_t is not None else "crop"

    @property
    def sample_latent_frames(self) -> int:
        return (self.sample_frames - 1) // self.temporal_compression_ratio + 1

    @property
    def out_patch_dim(self) -> int:
        return self.patch_size * self.patch_size * (self.patch_size_t or 1) * self.out_channels


@dataclass(frozen=True)
class VAEConfig(_ConfigIO):
    """The 3D causal VAE (diffusers `AutoencoderKLCogVideoX` keys)."""

    component: ClassVar[str] = "vae"
    class_name: ClassVar[str] = "AutoencoderKLCogVideoX"

    in_channels: int = 3
    out_channels: int = 3
    down_block_types: tuple[str, ...] = ("CogVideoXDownBlock3D",) * 4
    up_block_types: tuple[str, ...] = ("CogVideoXUpBlock3D",) * 4
    block_out_channels: tuple[int, ...] = (128, 256, 256, 512)
    latent_channels: int = 16
    layers_per_block: int = 3
    act_fn: str = "silu"
    norm_eps: float = 1e-6
    norm_num_groups: int = 32
    temporal_compression_ratio: float = 4
    sample_height: int = 480
    sample_width: int = 720
    scaling_factor: float = 1.15258426
    shift_factor: float | None = None
    latents_mean: tuple[float, ...] | None = None
    latents_std: tuple[float, ...] | None = None
    force_upcast: bool = True
    use_quant_conv: bool = False
    use_post_quant_conv: bool = False
    invert_scale_latents: bool = False

    def __post_init__(self) -> None:
        if self.act_fn != "silu":
            raise ConfigError(f"act_fn={self.act_fn!r}: the CogVideoX VAE uses 'silu'")
        if self.use_quant_conv or self.use_post_quant_conv:
            raise ConfigError("quant_conv / post_quant_conv match no CogVideoX VAE checkpoint")
        if len(self.block_out_channels) != len(self.down_block_types) or len(self.up_block_types) != len(
            self.down_block_types
        ):
            raise ConfigError("block_out_channels, down_block_types and up_block_types must have the same length")
        bad = [c for c in self.block_out_channels if c % self.norm_num_groups]
        if bad:
            raise ConfigError(f"block_out_channels {bad} are not divisible by norm_num_groups={self.norm_num_groups}")
        if self.temporal_compression_ratio not in (1, 2, 4, 8) or int(self.temporal_compression_ratio) != self.temporal_compression_ratio:
            raise ConfigError(f"temporal_compression_ratio must be a power of two (got {self.temporal_compression_ratio})")

    @property
    def spatial_compression(self) -> int:
        return 2 ** (len(self.block_out_channels) - 1)

    @property
    def temporal_compression(self) -> int:
        return int(self.temporal_compression_ratio)


@dataclass(frozen=True)
class TextEncoderConfig(_ConfigIO):
    """The T5 encoder (transformers `T5Config` keys that shape the encoder)."""

    component: ClassVar[str] = "text_encoder"
    class_name: ClassVar[str] = "T5EncoderModel"

    vocab_size: int = 32128
    d_model: int = 4096
    d_kv: int = 64
    d_ff: int = 10240
    num_layers: int = 24
    num_heads: int = 64
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    feed_forward_proj: str = "gated-gelu"
    layer_norm_epsilon: float = 1e-6
    dropout_rate: float = 0.1

    def to_transformers(self):
        from transformers import T5Config

        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return T5Config(**data, is_encoder_decoder=False, use_cache=False)


@dataclass(frozen=True)
class SchedulerConfig(_ConfigIO):
    """The CogVideoX DDIM / DPM schedule (diffusers `scheduler_config.json` keys)."""

    component: ClassVar[str] = "scheduler"
    class_name: ClassVar[str] = "CogVideoXDDIMScheduler"
    ignored_keys: ClassVar[frozenset[str]] = frozenset(
        {"trained_betas", "clip_sample", "clip_sample_range", "sample_max_value", "thresholding",
         "dynamic_thresholding_ratio"}
    )

    num_train_timesteps: int = 1000
    beta_start: float = 0.00085
    beta_end: float = 0.012
    beta_schedule: str = "scaled_linear"
    prediction_type: str = "v_prediction"
    rescale_betas_zero_snr: bool = True
    set_alpha_to_one: bool = True
    snr_shift_scale: float = 3.0
    steps_offset: int = 0
    timestep_spacing: str = "trailing"

    def __post_init__(self) -> None:
        if self.prediction_type != "v_prediction":
            raise ConfigError(f"prediction_type={self.prediction_type!r}: CogVideoX predicts v ('v_prediction')")
        if self.beta_schedule != "scaled_linear":
            raise ConfigError(f"beta_schedule={self.beta_schedule!r}: CogVideoX uses 'scaled_linear'")
        if self.timestep_spacing not in ("trailing", "leading", "linspace"):
            raise ConfigError(f"timestep_spacing={self.timestep_spacing!r}: use 'trailing', 'leading' or 'linspace'")


@dataclass(frozen=True)
class ModelConfig:
    """A whole model: its parts plus what the pipeline defaults to."""

    name: str
    transformer: TransformerConfig
    vae: VAEConfig
    text_encoder: TextEncoderConfig
    scheduler: SchedulerConfig
    num_frames: int = 49
    height: int = 480
    width: int = 720
    fps: int = 8
    recommended_precision: Precision = Precision.BF16
    image_to_video: bool = False

    @property
    def max_text_len(self) -> int:
        return self.transformer.max_text_seq_length

    @property
    def family(self) -> str:
        """'1.0' or '1.5' (temporal patching)."""
        return "1.5" if self.transformer.patch_size_t is not None else "1.0"


def latent_frames(num_frames: int, temporal_compression: int = 4) -> int:
    """49 video frames -> 13 latent frames; frames must be 4k+1."""
    if num_frames < 1 or (num_frames - 1) % temporal_compression:
        lower = max(1, (num_frames - 1) // temporal_compression * temporal_compression + 1)
        raise ConfigError(
            f"frames must be {temporal_compression}k+1 (got {num_frames}); try {lower} or {lower + temporal_compression}"
        )
    return (num_frames - 1) // temporal_compression + 1


def check_video_size(height: int, width: int, multiple: int = 16) -> None:
    """Height and width must be multiples of 8 x patch size (16 for every CogVideoX)."""
    for name, value in (("height", height), ("width", width)):
        if value < multiple or value % multiple:
            near = max(multiple, round(value / multiple) * multiple)
            raise ConfigError(f"{name} must be a positive multiple of {multiple} (got {value}); try {near}")


_T5_XXL = TextEncoderConfig()
_VAE_2B = VAEConfig(scaling_factor=1.15258426)
_VAE_5B = VAEConfig(scaling_factor=0.7)
_VAE_15 = VAEConfig(scaling_factor=0.7, sample_height=768, sample_width=1360)
_VAE_15_I2V = _VAE_15.replace(invert_scale_latents=True)
_TRANSFORMER_2B = TransformerConfig()
_TRANSFORMER_5B = TransformerConfig(num_attention_heads=48, num_layers=42, use_rotary_positional_embeddings=True)
_TRANSFORMER_15 = _TRANSFORMER_5B.replace(
    patch_size_t=2, patch_bias=False, sample_height=300, sample_width=300, sample_frames=81
)

PRESETS: dict[str, ModelConfig] = {
    "cogvideox-2b": ModelConfig(
        "cogvideox-2b", _TRANSFORMER_2B, _VAE_2B, _T5_XXL, SchedulerConfig(snr_shift_scale=3.0),
        recommended_precision=Precision.FP16,
    ),
    "cogvideox-5b": ModelConfig(
        "cogvideox-5b", _TRANSFORMER_5B, _VAE_5B, _T5_XXL, SchedulerConfig(snr_shift_scale=1.0)
    ),
    "cogvideox-5b-i2v": ModelConfig(
        "cogvideox-5b-i2v",
        _TRANSFORMER_5B.replace(in_channels=32, use_learned_positional_embeddings=True),
        _VAE_5B, _T5_XXL, SchedulerConfig(snr_shift_scale=1.0), image_to_video=True,
    ),
    "cogvideox1.5-5b": ModelConfig(
        "cogvideox1.5-5b", _TRANSFORMER_15, _VAE_15, _T5_XXL, SchedulerConfig(snr_shift_scale=1.0),
        num_frames=81, height=768, width=1360, fps=16,
    ),
    "cogvideox1.5-5b-i2v": ModelConfig(
        "cogvideox1.5-5b-i2v",
        _TRANSFORMER_15.replace(in_channels=32, ofs_embed_dim=512),
        _VAE_15_I2V, _T5_XXL, SchedulerConfig(snr_shift_scale=1.0),
        num_frames=81, height=768, width=1360, fps=16, image_to_video=True,
    ),
    # Same architecture as the 5B (3D RoPE, expert AdaLN), tiny widths: 17 frames at 64 x 64.
    "toy": ModelConfig(
        "toy",
        TransformerConfig(
            num_attention_heads=8, attention_head_dim=16, time_embed_dim=64, text_embed_dim=64,
            num_layers=4, sample_width=8, sample_height=8, sample_frames=17, max_text_seq_length=32,
            use_rotary_positional_embeddings=True,
        ),
        VAEConfig(
            block_out_channels=(16, 32, 32, 64), layers_per_block=1, norm_num_groups=8,
            sample_height=64, sample_width=64, scaling_factor=1.0,
        ),
        TextEncoderConfig(vocab_size=256, d_model=64, d_kv=16, d_ff=128, num_layers=2, num_heads=4,
                          feed_forward_proj="gated-gelu", dropout_rate=0.0),
        SchedulerConfig(snr_shift_scale=1.0),
        num_frames=17, height=64, width=64, fps=8, recommended_precision=Precision.FP32,
    ),
}


def model_config(transformer: TransformerConfig, vae: VAEConfig, scheduler: SchedulerConfig,
                 text_encoder: TextEncoderConfig | None = None) -> ModelConfig:
    """A whole model from its part configs: the preset whose transformer this is (for its default
    video), else defaults read from the configs."""
    image_to_video = transformer.in_channels == 2 * vae.latent_channels
    for preset in PRESETS.values():
        if preset.transformer == transformer:
            return ModelConfig(preset.name, transformer, vae, text_encoder or preset.text_encoder, scheduler,
                               preset.num_frames, preset.height, preset.width, preset.fps,
                               preset.recommended_precision, image_to_video)
    height, width = 8 * transformer.sample_height, 8 * transformer.sample_width
    if transformer.patch_size_t is not None:
        # 1.5's sample size is the RoPE grid's maximum (2400 x 2400), not a size to generate at.
        height, width = min(height, 768), min(width, 1360)
    return ModelConfig("custom", transformer, vae, text_encoder or TextEncoderConfig(), scheduler,
                       transformer.sample_frames, height, width, 16 if transformer.patch_size_t else 8,
                       image_to_video=image_to_video)


def get_preset(name: str) -> ModelConfig:
    """Exact preset lookup with the allowed names in the error."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ConfigError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}") from None

