"""Calibration over the real denoising trajectory: prepare observers -> run the pipeline -> reduce.

`calibrate(pipe, prompts, config)` runs the reference pipeline (torch, CFG batch included) on the
calibration prompts with observers on the input of every layer `quantize` will replace. Activation
ranges move with the timestep, so each observer keeps, per denoising step: the per-channel
maximum |x| (for SmoothQuant and for the per-tensor maximum after smoothing) and a strided sample
of whole token rows (for the percentile and MSE methods). `reduce` turns them into one amax per
layer with a named method:

| method | amax |
|---|---|
| `max` | the largest |x| over every step and prompt |
| `percentile` | the `percentile`-th percentile of the sampled |x| (default 99.99) |
| `mse` | the clip in [0.3, 1] x max that minimises the quantization error of the samples |
| `early-steps` | the largest |x| over the first `fraction` of the steps (ModelOpt's diffusion recipe, which it calls "percentile") |

The result is a `Calibration` (calibration/artifact.py), written as a content-keyed JSON file.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from cogvx.errors import CogvxError, NonFiniteError
from cogvx.modeling.precision import Precision

from .artifact import Calibration, LayerCalibration
from .qdq import KINDS
from .quantize import DEFAULT_SKIP, quantized_layers, smoothing_groups, smoothing_scales

logger = logging.getLogger(__name__)

METHODS = ("max", "percentile", "mse", "early-steps")
SAMPLE_BYTES = 256 * 2**20  # sampled rows kept over the whole calibration, all layers together


class CalibrationError(CogvxError):
    """A calibration that cannot run as asked; the message says what to change."""


@dataclass(frozen=True)
class QuantConfig:
    precision: Precision
    method: str = "max"
    alpha: float = 0.8  # SmoothQuant migration strength (INT8 only); ModelOpt's value for diffusion transformers
    percentile: float = 99.99
    fraction: float = 0.5  # early-steps: the share of the first steps that counts
    skip: tuple[str, ...] = DEFAULT_SKIP

    def __post_init__(self) -> None:
        if not self.precision.is_quantized:
            raise CalibrationError(f"calibration is for int8 or fp8 (got {self.precision.value})")
        if self.method not in METHODS:
            raise CalibrationError(f"method must be one of {', '.join(METHODS)} (got {self.method!r})")
        for name, value, low, high in (("alpha", self.alpha, 0.0, 1.0), ("percentile", self.percentile, 50.0, 100.0),
                                       ("fraction", self.fraction, 1e-9, 1.0)):
            if not (isinstance(value, (int, float)) and math.isfinite(value) and low <= value <= high):
                raise CalibrationError(f"{name} must be a number in [{low:g}, {high:g}] (got {value!r})")

    @property
    def kind(self) -> str:
        return self.precision.value


@dataclass
class Observer:
    """What one layer's input looked like, per denoising step."""

    channels: int
    rows_per_call: int
    channel_amax: dict[int, torch.Tensor] = field(default_factory=dict)  # step -> (in,)
    samples: dict[int, list[torch.Tensor]] = field(default_factory=dict)  # step -> [(rows, in)]

    def record(self, step: int, x: torch.Tensor) -> None:
        rows = x.detach().reshape(-1, self.channels).float()  # (tokens, in)
        if not torch.isfinite(rows).all():
            raise NonFiniteError(f"NaN or inf entered a quantized layer at denoising step {step + 1}: the reference "
                                 "itself is not finite; calibrate in float32")
        amax = rows.abs().amax(dim=0)  # (in,)
        previous = self.channel_amax.get(step)
        self.channel_amax[step] = amax if previous is None else torch.maximum(previous, amax)
        stride = max(1, rows.shape[0] // self.rows_per_call)
        self.samples.setdefault(step, []).append(rows[::stride][: self.rows_per_call].clone())


def observe(transformer: nn.Module, skip: tuple[str, ...], total_calls: int) -> tuple[dict[str, Observer], list, dict]:
    """Observers on the input of every layer to quantize; `state['step']` says which step is running."""
    modules = dict(transformer.named_modules())
    layers = quantized_layers(transformer, skip)
    if not layers:
        raise CalibrationError(f"the skip list {list(skip)} leaves no linear layer to quantize")
    width = sum(modules[name].in_features for name in layers)
    rows = int(max(1, min(64, SAMPLE_BYTES // (4 * width * max(1, total_calls)))))
    observers = {name: Observer(modules[name].in_features, rows) for name in layers}
    state = {"step": 0}
    handles = [modules[name].register_forward_pre_hook(
        lambda module, inputs, name=name: observers[name].record(state["step"], inputs[0])) for name in layers]
    return observers, handles, state


def calibrate(pipe, prompts: list[str], config: QuantConfig, steps: int = 50, guidance: float = 6.0,
              seed: int = 0, progress: Callable[[int, int], None] | None = None) -> Calibration:
    """Run the reference pipeline on `prompts` and reduce what the observers saw to a Calibration.

    `progress(done, total)` is told after each prompt."""
    from cogvx.runtime.stages import TorchStage

    model = _transformer_of(pipe)
    observers, handles, state = observe(model, config.skip, len(prompts) * steps)
    denoiser = pipe.stages["denoiser"]

    def counted(**inputs):
        out = denoiser(**inputs)
        state["step"] += 1
        return out

    image = conditioning_image(pipe.config.height, pipe.config.width) if pipe.config.image_to_video else None
    pipe.stages = pipe.stages | {"denoiser": TorchStage("denoiser", counted, ())}
    try:
        for index, prompt in enumerate(prompts):
            state["step"] = 0
            pipe(prompt=prompt, image=image, num_inference_steps=steps, guidance_scale=guidance, seed=seed + index,
                 output_type="latent")
            if progress:
                progress(index + 1, len(prompts))
    finally:
        pipe.stages = pipe.stages | {"denoiser": denoiser}
        for handle in handles:
            handle.remove()
    return reduce(model, observers, config, prompts, steps, guidance, seed)


def conditioning_image(height: int, width: int) -> torch.Tensor:
    """A smooth, fixed (3, H, W) image in [-1, 1] for image-to-video calibration runs."""
    y, x = torch.meshgrid(torch.linspace(-1, 1, height), torch.linspace(-1, 1, width), indexing="ij")
    return torch.stack([x, -y, x * y])


def _transformer_of(pipe) -> nn.Module:
    model = getattr(pipe, "modules", {}).get("transformer")
    if model is None:
        raise CalibrationError("calibration needs the torch reference pipeline (CogVideoXPipeline.from_pretrained)")
    return model


def reduce(model: nn.Module, observers: dict[str, Observer], config: QuantConfig, prompts: list[str], steps: int,
           guidance: float, seed: int) -> Calibration:
    """Smoothing scales (INT8) and one amax per layer, by the configured method."""
    modules = dict(model.named_modules())
    smooth: dict[str, torch.Tensor] = {}
    if config.precision == Precision.INT8 and config.alpha > 0:
        for members, _ in smoothing_groups(model, list(observers)):
            activation = torch.stack([torch.stack(list(observers[m].channel_amax.values())).amax(dim=0)
                                      for m in members]).amax(dim=0)  # (in,)
            s = smoothing_scales(activation, [modules[m].weight.detach().float() for m in members], config.alpha)
            smooth |= {m: s for m in members}
    layers = {}
    for name, observer in observers.items():
        s = smooth.get(name)
        per_step = {step: float((amax / s).max() if s is not None else amax.max())
                    for step, amax in sorted(observer.channel_amax.items())}
        samples = torch.cat([rows for step in sorted(observer.samples) for rows in observer.samples[step]])
        if s is not None:
            samples = samples / s
        amax = _reduce_one(config, per_step, samples.abs().flatten().numpy())
        layers[name] = LayerCalibration(amax=amax, per_step_amax=[per_step[k] for k in sorted(per_step)],
                                        smooth=s.tolist() if s is not None else None)
    prompt_hash = hashlib.sha256("\n".join(prompts).encode()).hexdigest()
    return Calibration(precision=config.precision.value, method=config.method, alpha=config.alpha
                       if config.precision == Precision.INT8 else 0.0, percentile=config.percentile,
                       fraction=config.fraction, steps=steps, guidance=guidance, seed=seed,
                       num_prompts=len(prompts), prompts_sha256=prompt_hash, skip=list(config.skip), layers=layers)


def _reduce_one(config: QuantConfig, per_step: dict[int, float], magnitudes: np.ndarray) -> float:
    if config.method == "max":
        return max(per_step.values())
    if config.method == "early-steps":
        keep = max(1, math.ceil(config.fraction * len(per_step)))
        return max(per_step[step] for step in sorted(per_step)[:keep])
    if config.method == "percentile":
        return float(np.percentile(magnitudes, config.percentile))
    return _mse_clip(magnitudes, max(per_step.values()), config.kind)


def _mse_clip(magnitudes: np.ndarray, amax: float, kind: str) -> float:
    """The clip minimising the mean squared quantization error of the samples (|x| suffices: symmetric)."""
    x = torch.from_numpy(magnitudes.astype(np.float32))
    best, best_error = amax, math.inf
    for fraction in np.linspace(0.3, 1.0, 71):
        clip = float(amax * fraction)
        scale = clip / KINDS[kind]
        if kind == "int8":
            quantized = torch.clamp(torch.round(x / scale), -128, 127) * scale
        else:
            quantized = (x / scale).clamp(-448, 448).to(torch.float8_e4m3fn).float() * scale
        error = float(((x - quantized) ** 2).mean())
        if error < best_error:
            best, best_error = clip, error
    return best
