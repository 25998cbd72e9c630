"""Per-layer quantization error: which layers cost the most.

Each quantized layer is fed the float model's own input at every denoising step of a reference
run, once as the float `nn.Linear` and once as its `QuantLinear` (smoothing as an explicit
pre-scale, so both take the same input): the SQNR of the two outputs, the worst over the steps, is
that layer's figure. Errors do not accumulate from layer to layer here, so the table points at
the layers themselves (the end-to-end figures are validation's).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .quantize import quantize


def sqnr_db(reference: torch.Tensor, candidate: torch.Tensor) -> float:
    noise = (reference.double() - candidate.double()).pow(2).sum().item()
    signal = reference.double().pow(2).sum().item()
    if noise == 0:
        return 150.0
    return 10 * math.log10(max(signal, 1e-30) / noise) if math.isfinite(noise) else math.nan


def layer_sqnr(pipe, calibration, prompt: str, steps: int, guidance: float = 6.0, seed: int = 0) -> dict[str, float]:
    """{layer: worst SQNR (dB) over the steps of one reference generation}, in module order."""
    model = pipe.modules["transformer"]
    quantized = dict(quantize(model, calibration, fold=False).named_modules())
    modules = dict(model.named_modules())
    worst: dict[str, float] = {name: math.inf for name in calibration.layers}

    def measure(module: nn.Module, inputs, output, name: str) -> None:
        with torch.no_grad():
            figure = sqnr_db(output, quantized[name](inputs[0]))
        if not math.isnan(worst[name]):  # a NaN, once seen, stays the layer's figure
            worst[name] = figure if math.isnan(figure) else min(worst[name], figure)

    handles = [modules[name].register_forward_hook(lambda m, i, o, name=name: measure(m, i, o, name))
               for name in calibration.layers]
    try:
        pipe(prompt=prompt, num_inference_steps=steps, guidance_scale=guidance, seed=seed, output_type="latent")
    finally:
        for handle in handles:
            handle.remove()
    return worst
