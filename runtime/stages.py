"""Stages and backends: the pipeline's side of the engine contract (docs/architecture.md).

The pipeline sees four stages, each a callable on torch tensors keyed by I/O name:

| stage         | inputs                                                        | outputs                      |
|---------------|---------------------------------------------------------------|------------------------------|
| text_encoder  | input_ids (B, L) int64                                        | text_embeddings (B, L, Dt)   |
| denoiser      | latents (B, F, C, h, w), text_embeddings, timestep (B,) int64, | velocity (B, F, C_out, h, w) |
|               | [ofs (B,)], [rope_cos, rope_sin (V, Dh)] or [sincos (V, D)]    |                              |
| vae_encoder   | video (B, 3, T, H, W) in [-1, 1]                              | latent_mean, latent_logvar   |
| vae_decoder   | latents (B, C, t, h, w) one chunk, [conv_cache.* of the last]  | frames (B, 3, T, H, W),      |
|               |                                                               | conv_cache.* for the next    |

A backend implements any subset and each stage may come from a different one. Torch stages
(`torch_stages`) call the reference modules and take any shape (`profile` None). Engine stages are
one `GraphStage` (runtime/graph_stage.py) over a `Runner` per graph: an ONNX Runtime session
today, a TensorRT execution context next. A new backend is one runner class.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch

from cogvx.contract.components import DECODER_CACHE
from cogvx.contract.shapes import ShapeProfile
from cogvx.modeling.precision import Precision

class Stage(Protocol):
    name: str
    profile: ShapeProfile | None  # the shapes the stage accepts; None: any the model can run
    precision: Precision | None  # an engine's precision; None: torch modules, in the pipeline's dtype

    def __call__(self, **inputs: torch.Tensor) -> dict[str, torch.Tensor]: ...


class Runner(Protocol):
    """One graph on one backend: feeds in, outputs out, torch tensors keyed by the graph's names."""

    input_dtypes: dict[str, torch.dtype]  # what the graph declares; the stage casts to it
    output_names: list[str]

    def __call__(self, feeds: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]: ...


@dataclass
class TorchStage:
    """A stage backed by eager torch modules."""

    name: str
    fn: Callable[..., dict[str, torch.Tensor]]
    required: tuple[str, ...]
    profile: ShapeProfile | None = None
    precision: Precision | None = None

    def __call__(self, **inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        missing = [name for name in self.required if name not in inputs]
        if missing:
            raise TypeError(f"stage {self.name} is missing inputs {missing} (got {sorted(inputs)})")
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
            prefix = DECODER_CACHE.input_prefix
            state = {name.removeprefix(prefix): t for name, t in cache.items()} or None
            frames, new_state = vae.decode_chunk(latents, state)
            return {"frames": frames, **{prefix + name: t for name, t in new_state.items()}}

        stages["vae_encoder"] = TorchStage("vae_encoder", encode_video, ("video",))
        stages["vae_decoder"] = TorchStage("vae_decoder", decode_chunk, ("latents",))
    return stages
