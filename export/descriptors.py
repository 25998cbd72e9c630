"""One export descriptor per component (STYLE.md 6): names, sample inputs, dynamic axes, shapes.

A descriptor wraps a reference module without editing it (STYLE.md 5) and reads every shape from
a `ShapeSpec` / `ShapeProfile`, so export, runtime buffers and TensorRT profiles agree.

Position tables enter the transformer graph as (T, H', W', Dh) (RoPE) or (T, H', W', D) (2B
sincos) so that every dynamic dimension is a linear function of the others; the graph flattens
them to (V, Dh). The 2B has no RoPE: its attention nodes get cos = 1, sin = 0 (exact identity),
made inside the graph, so every model exports the same `cogvx::RoPEAttention3D` node.

The denoiser batch is the CFG batch: a profile for `batch` videos covers batch (no guidance)
to 2 x batch (guidance) rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.export import Dim

from cogvx.modeling.configs import ModelConfig
from cogvx.modeling.positions import PositionTables, position_tables

from .profiles import ShapeProfile, ShapeSpec


class TransformerForExport(nn.Module):
    """The denoiser stage as a graph: tables come in 4-D and are flattened here."""

    def __init__(self, transformer: nn.Module):
        super().__init__()
        self.transformer = transformer

    def forward(self, latents, text_embeddings, timestep, ofs=None, sincos=None, rope_cos=None, rope_sin=None):
        if sincos is not None:
            table = sincos.flatten(0, 2)  # (V, D)
            cos = torch.ones(table.shape[0], self.transformer.config.attention_head_dim, dtype=torch.float32,
                             device=table.device)
            positions = PositionTables(cos, torch.zeros_like(cos), table)
        else:
            positions = PositionTables(rope_cos.flatten(0, 2), rope_sin.flatten(0, 2), None)  # (V, Dh)
        return self.transformer(latents, text_embeddings, timestep, ofs=ofs, positions=positions)


@dataclass
class TransformerDescriptor:
    """The `denoiser` stage: latents, text, timestep, [ofs], position tables -> velocity."""

    model: ModelConfig
    component: str = "transformer"

    @property
    def input_names(self) -> list[str]:
        names = ["latents", "text_embeddings", "timestep"]
        names += ["ofs"] if self.model.transformer.ofs_embed_dim else []
        names += ["sincos"] if self.model.transformer.positions == "sincos" else ["rope_cos", "rope_sin"]
        return names

    output_names = ["velocity"]

    def wrap(self, transformer: nn.Module) -> nn.Module:
        return TransformerForExport(transformer).eval()

    def latent_shape(self, spec: ShapeSpec, batch: int) -> tuple[int, ...]:
        t, vae = self.model.transformer, self.model.vae
        frames = spec.latent_frames(vae.temporal_compression)
        frames += (-frames) % (t.patch_size_t or 1)  # 1.5 pads to its temporal patch
        return (batch, frames, t.in_channels, spec.height // vae.spatial_compression, spec.width // vae.spatial_compression)

    def table_inputs(self, spec: ShapeSpec, device=None) -> dict[str, torch.Tensor]:
        """The tables for a shape, 4-D as the graph takes them."""
        t = self.model.transformer
        _, frames, _, h, w = self.latent_shape(spec, 1)
        grid = (frames // (t.patch_size_t or 1), h // t.patch_size, w // t.patch_size, -1)
        tables = position_tables(t, frames, h, w, device)
        if t.positions == "sincos":
            return {"sincos": tables.sincos.reshape(grid)}
        return {"rope_cos": tables.rope_cos.reshape(grid), "rope_sin": tables.rope_sin.reshape(grid)}

    def sample_inputs(self, spec: ShapeSpec, dtype: torch.dtype = torch.float32, batch: int | None = None,
                      seed: int = 0) -> dict[str, torch.Tensor]:
        t = self.model.transformer
        batch = 2 * spec.batch if batch is None else batch
        generator = torch.Generator().manual_seed(seed)
        inputs = {
            "latents": torch.randn(self.latent_shape(spec, batch), generator=generator).to(dtype),
            "text_embeddings": torch.randn(batch, spec.text_len, t.text_embed_dim, generator=generator).to(dtype),
            "timestep": torch.randint(0, 1000, (batch,), generator=generator),
        }
        if t.ofs_embed_dim:
            inputs["ofs"] = torch.full((batch,), 2.0, dtype=dtype)
        return inputs | self.table_inputs(spec)

    def dynamic_shapes(self, profile: ShapeProfile) -> dict[str, dict[int, Dim]] | None:
        """torch.export dims for the profile's ranges; None when static."""
        if profile.is_static:
            return None
        t = self.model.transformer
        p_t, p = t.patch_size_t or 1, t.patch_size
        low, high = (self.latent_shape(spec, 1) for spec in (profile.min, profile.max))
        dims: dict[str, dict[int, Dim]] = {name: {} for name in self.input_names}
        batch = Dim("batch", min=profile.min.batch, max=2 * profile.max.batch)  # without / with CFG
        for name in ("latents", "text_embeddings", "timestep") + (("ofs",) if t.ofs_embed_dim else ()):
            dims[name][0] = batch
        tables = [n for n in self.input_names if n in ("sincos", "rope_cos", "rope_sin")]
        for axis, (lo, hi), step, name in ((1, (low[1], high[1]), p_t, "grid_t"), (3, (low[3], high[3]), p, "grid_h"),
                                           (4, (low[4], high[4]), p, "grid_w")):
            if lo == hi:
                continue
            grid = Dim(name, min=lo // step, max=hi // step)
            dims["latents"][axis] = grid * step if step > 1 else grid
            for table in tables:
                dims[table][{1: 0, 3: 1, 4: 2}[axis]] = grid
        if profile.min.text_len != profile.max.text_len:
            dims["text_embeddings"][1] = Dim("text_len", min=profile.min.text_len, max=profile.max.text_len)
        return dims
