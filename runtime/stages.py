"""Stages and backends (DESIGN.md seam 4).

The pipeline sees four stages, each a callable on torch tensors keyed by I/O name:

| stage         | inputs                                                        | outputs                      |
|---------------|---------------------------------------------------------------|------------------------------|
| text_encoder  | input_ids (B, L) int64                                        | text_embeddings (B, L, Dt)   |
| denoiser      | latents (B, F, C, h, w), text_embeddings, timestep (B,) int64, | velocity (B, F, C_out, h, w) |
|               | [ofs (B,)], [rope_cos, rope_sin (V, Dh)] or [sincos (V, D)]    |                              |
| vae_encoder   | video (B, 3, T, H, W) in [-1, 1]                              | latent_mean, latent_logvar   |
| vae_decoder   | latents (B, C, t, h, w) one chunk, [conv_cache.* of the last]  | frames (B, 3, T, H, W),      |
|               |                                                               | conv_cache.* for the next    |

A backend (torch modules here; ONNX Runtime sessions and TensorRT engines later) implements any
subset; each stage may come from a different backend.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch

CACHE_PREFIX = "conv_cache."
STAGE_NAMES = ("text_encoder", "denoiser", "vae_encoder", "vae_decoder")


class Stage(Protocol):
    name: str

    def __call__(self, **inputs: torch.Tensor) -> dict[str, torch.Tensor]: ...


@dataclass
class TorchStage:
    """A stage backed by eager torch modules."""

    name: str
    fn: Callable[..., dict[str, torch.Tensor]]
    required: tuple[str, ...]

    def __call__(self, **inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        missing = [name for name in self.required if name not in inputs]
        if missing:
            raise ValueError(f"stage {self.name} is missing inputs {missing} (got {sorted(inputs)})")
        with torch.inference_mode():
            return self.fn(**inputs)


def torch_stages(text_encoder=None, transformer=None, vae=None) -> dict[str, Stage]:
    """The torch backend: stages over our reference modules (any of them may be None)."""
    stages: dict[str, Stage] = {}
    if text_encoder is not None:
        def encode_text(input_ids):
            return {"text_embeddings": text_encoder.model(input_ids.to(text_encoder.device))[0]}

        stages["text_encoder"] = TorchStage("text_encoder", encode_text, ("input_ids",))
    if transformer is not None:
        from cogvx.modeling.positions import PositionTables

        def denoise(latents, text_embeddings, timestep, ofs=None, rope_cos=None, rope_sin=None, sincos=None):
            positions = PositionTables(rope_cos, rope_sin, sincos)
            return {"velocity": transformer(latents, text_embeddings, timestep, ofs=ofs, positions=positions)}

        stages["denoiser"] = TorchStage("denoiser", denoise, ("latents", "text_embeddings", "timestep"))
    if vae is not None:
        def encode_video(video):
            posterior = vae.encode(video)
            return {"latent_mean": posterior.mean, "latent_logvar": posterior.logvar}

        def decode_chunk(latents, **cache):
            state = {name.removeprefix(CACHE_PREFIX): t for name, t in cache.items()} or None
            frames, new_state = vae.decode_chunk(latents, state)
            return {"frames": frames, **{CACHE_PREFIX + name: t for name, t in new_state.items()}}

        stages["vae_encoder"] = TorchStage("vae_encoder", encode_video, ("video",))
        stages["vae_decoder"] = TorchStage("vae_decoder", decode_chunk, ("latents",))
    return stages
