"""The denoising loop: classifier-free guidance over a pure denoiser callable.

`denoiser(latents (B', F, C, h, w), timestep (B',)) -> velocity` is all the loop knows of the
model; a torch module, an ONNX Runtime session or a TensorRT engine can stand behind it.
With guidance the batch is [negative ; positive] and the combine runs in fp32 (see docs/reference.md,
'Guidance').
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from cogvx.errors import NonFiniteError

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def dynamic_guidance(guidance_scale: float, timestep: int, num_inference_steps: int) -> float:
    """`1 + w (1 - cos(pi ((N - t) / N)^5)) / 2` with the raw timestep t, as the checkpoints were tuned.

    With t in [0, 1000) and N steps the base goes negative for most t; it is kept exactly as
    written in the reference (see docs/reference.md, 'Guidance').
    """
    return 1 + guidance_scale * (1 - math.cos(math.pi * ((num_inference_steps - timestep) / num_inference_steps) ** 5.0)) / 2


def denoise(
    denoiser: Denoiser,
    latents: torch.Tensor,
    scheduler,
    guidance_scale: float,
    use_dynamic_cfg: bool = False,
    image_latents: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    on_step: Callable[[int, int, torch.Tensor], None] | None = None,
) -> torch.Tensor:
    """Run every scheduler step. latents (B, F, C, h, w) -> (B, F, C, h, w) in the input dtype.

    image_latents (B, F, C, h, w), for image-to-video, are concatenated on channels (noisy first).
    """
    dtype = latents.dtype
    guided = guidance_scale > 1.0
    timesteps = scheduler.timesteps
    num_steps = len(timesteps)
    previous_x0 = None
    for i, t in enumerate(timesteps):
        model_input = torch.cat([latents, latents]) if guided else latents  # (B', F, C, h, w)
        if image_latents is not None:
            image_input = torch.cat([image_latents, image_latents]) if guided else image_latents
            model_input = torch.cat([model_input, image_input], dim=2)  # (B', F, 2C, h, w)
        velocity = denoiser(model_input, t.expand(model_input.shape[0])).float()
        if guided:
            scale = dynamic_guidance(guidance_scale, int(t), num_steps) if use_dynamic_cfg else guidance_scale
            unconditional, conditional = velocity.chunk(2)
            velocity = unconditional + scale * (conditional - unconditional)
        timestep_back = timesteps[i - 1] if i > 0 else None
        latents, previous_x0 = scheduler.step(velocity, previous_x0, t, timestep_back, latents, generator=generator)
        latents = latents.to(dtype)
        if not torch.isfinite(latents).all():
            raise NonFiniteError(
                f"the denoiser gave NaN or inf at step {i + 1} of {num_steps} (timestep {int(t)}); in float16 the "
                "5B and 1.5 models overflow: use bfloat16 (or float32); an engine doing this fails `cogvx validate`")
        if on_step is not None:
            on_step(i, int(t), latents)
    return latents
