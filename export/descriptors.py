"""One export descriptor per component: how its checkpoint folder becomes graphs.

Every descriptor has the same two methods, and one export loop (export/onnx_export.py
`export_component`) runs them all:

- `load(model_dir, dtype)`: the reference module from the component's source folder;
- `graphs(module, profile, dtype)`: the graphs the profile needs, each a `Graph`: its role, file
  name, the wrapper module to trace, sample inputs at the profile's opt shape, dynamic shapes for
  torch.export, input and output names.

A descriptor wraps a reference module without editing it and reads every shape from a
`ShapeSpec` / `ShapeProfile`, so export, runtime buffers and TensorRT profiles agree. What the
runtime must know about the graphs (roles, grid inputs, cache prefixes) is the component's row in
contract/components.py; nothing here restates it.

Position tables enter the transformer graph as (T', H', W', Dh) (RoPE) or (T', H', W', D) (2B
sincos) so that every dynamic dimension is a linear function of the others; the graph flattens
them to (V, Dh). The 2B has no RoPE: its attention nodes get cos = 1, sin = 0 (exact identity),
made inside the graph, so every model exports the same `cogvx::RoPEAttention3D` node.

The denoiser batch is the CFG batch: a profile for `batch` videos covers batch (no guidance)
to 2 x batch (guidance) rows.

Adding a component: a row in contract/components.py and a class here decorated `@describes(name)`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

import torch
from torch import nn
from torch.export import Dim

from cogvx.contract.components import COMPONENTS, MAIN, NEXT, Component, position_grid
from cogvx.contract.shapes import ShapeProfile, ShapeSpec
from cogvx.modeling.configs import ModelConfig
from cogvx.modeling.positions import PositionTables, position_tables


@dataclass
class Graph:
    """One graph of a component, ready to trace."""

    role: str  # how the runtime picks it (contract/components.py)
    file_name: str
    module: nn.Module  # the export wrapper around the reference module
    args: tuple = ()
    kwargs: dict[str, torch.Tensor] = field(default_factory=dict)
    dynamic_shapes: Any = None  # torch.export's, matching args / kwargs; None: static
    input_names: list[str] = field(default_factory=list)
    output_names: list[str] = field(default_factory=list)


class Descriptor(Protocol):
    component: ClassVar[Component]
    model: ModelConfig

    def load(self, model_dir: Path, dtype: torch.dtype) -> nn.Module: ...

    def graphs(self, module: nn.Module, profile: ShapeProfile, dtype: torch.dtype) -> list[Graph]: ...


DESCRIPTORS: dict[str, type] = {}


def describes(component: str):
    """Register a descriptor class for a component of the table."""
    def register(cls):
        cls.component = COMPONENTS[component]
        DESCRIPTORS[component] = cls
        return cls
    return register


def descriptor_for(component: str, model: ModelConfig) -> Descriptor:
    return DESCRIPTORS[component](model)


class SingleGraph:
    """A component exported as one graph (role `main`): `wrap`, `sample_inputs` and `dynamic_shapes`
    say how."""

    component: ClassVar[Component]
    model: ModelConfig

    @property
    def input_names(self) -> list[str]:
        return list(self.component.inputs)

    @property
    def output_names(self) -> list[str]:
        return list(self.component.outputs)

    def graphs(self, module: nn.Module, profile: ShapeProfile, dtype: torch.dtype) -> list[Graph]:
        inputs = self.sample_inputs(profile.opt, dtype)
        return [Graph(MAIN, f"{self.component.name}.onnx", self.wrap(module),
                      kwargs={name: inputs[name] for name in self.input_names},
                      dynamic_shapes=self.dynamic_shapes(profile), input_names=self.input_names,
                      output_names=self.output_names)]


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


@describes("transformer")
@dataclass
class TransformerDescriptor(SingleGraph):
    """The `denoiser` stage: latents, text, timestep, [ofs], position tables -> velocity."""

    model: ModelConfig

    def load(self, model_dir: Path, dtype: torch.dtype) -> nn.Module:
        from cogvx.modeling.transformer import CogVideoXTransformer

        return CogVideoXTransformer.from_pretrained(Path(model_dir) / self.component.source_folder, dtype)

    @property
    def input_names(self) -> list[str]:
        t = self.model.transformer
        rope = t.positions != "sincos"
        present = {"ofs": bool(t.ofs_embed_dim), "sincos": not rope, "rope_cos": rope, "rope_sin": rope}
        return [name for name in self.component.inputs if present.get(name, True)]

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
        grid = position_grid(frames, h, w, t.patch_size, t.patch_size_t)
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

    def dynamic_shapes(self, profile: ShapeProfile) -> dict[str, dict[int, Dim]]:
        """torch.export dims for the profile's ranges. The batch is always dynamic, from the
        smallest batch without guidance to twice the largest (CFG), even in a static profile."""
        t = self.model.transformer
        p_t, p = t.patch_size_t or 1, t.patch_size
        low, high = (self.latent_shape(spec, 1) for spec in (profile.min, profile.max))
        dims: dict[str, dict[int, Dim]] = {name: {} for name in self.input_names}
        batch = Dim("batch", min=profile.min.batch, max=2 * profile.max.batch)  # without / with CFG
        for name in ("latents", "text_embeddings", "timestep") + (("ofs",) if t.ofs_embed_dim else ()):
            dims[name][0] = batch
        tables = [n for n in self.input_names if n in self.component.grid_inputs]
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


def latent_axes(profile: ShapeProfile, spatial_compression: int) -> dict[int, Dim]:
    """torch.export dims of a (B, C, F, h, w) VAE tensor: batch and the latent height / width,
    where the profile lets them vary."""
    axes: dict[int, Dim] = {}
    if profile.min.batch != profile.max.batch:
        axes[0] = Dim("batch", min=profile.min.batch, max=profile.max.batch)
    for axis, dim in ((3, "height"), (4, "width")):
        low, high = (getattr(spec, dim) // spatial_compression for spec in (profile.min, profile.max))
        if low != high:
            axes[axis] = Dim(f"latent_{dim}", min=low, max=high)
    return axes


def first_chunk_sizes(profile: ShapeProfile, temporal_compression: int = 4) -> list[int]:
    """The first-chunk graph lengths a profile needs: 1 (a single latent frame), 2 (even), 3 (odd >= 3)."""
    low, high = (spec.latent_frames(temporal_compression) for spec in (profile.min, profile.max))
    return sorted({1 if frames == 1 else 2 + frames % 2 for frames in range(low, high + 1)})


class DecoderChunkForExport(nn.Module):
    """One decoder step as a graph: (latents, *cache) -> (frames, *new cache), cache in a fixed order."""

    def __init__(self, vae: nn.Module, cache_names: list[str]):
        super().__init__()
        self.vae = vae
        self.cache_names = cache_names

    def forward(self, latents, *cache):
        state = dict(zip(self.cache_names, cache)) if cache else None
        frames, new_state = self.vae.decode_chunk(latents, state)
        return (frames, *(new_state[name] for name in self.cache_names))


def load_vae(model_dir: Path, folder: str, dtype: torch.dtype) -> nn.Module:
    from cogvx.modeling.vae import CogVideoXVAE

    return CogVideoXVAE.from_pretrained(Path(model_dir) / folder, dtype)


@describes("vae_decoder")
@dataclass
class VAEDecoderDescriptor:
    """The streaming `vae_decoder`: first-chunk graphs (no cache in, replicate padding) and one
    next-chunk graph (cache in), every causal-conv cache an explicit input / output.

    The first chunk of F latent frames has 2 + F % 2 frames (1 when F = 1), the next ones 2, so a
    profile needs one first-chunk graph per length it covers, and a next-chunk graph when it
    reaches past 3 latent frames."""

    model: ModelConfig

    def load(self, model_dir: Path, dtype: torch.dtype) -> nn.Module:
        return load_vae(model_dir, self.component.source_folder, dtype)

    def graphs(self, vae: nn.Module, profile: ShapeProfile, dtype: torch.dtype) -> list[Graph]:
        cache = self.component.cache
        vae_config = self.model.vae
        spec = profile.opt
        h, w = spec.height // vae_config.spatial_compression, spec.width // vae_config.spatial_compression
        generator = torch.Generator().manual_seed(0)
        first = torch.randn(spec.batch, vae_config.latent_channels, 2, h, w, generator=generator).to(dtype)
        with torch.no_grad():
            _, state = vae.decode_chunk(first, None)  # the cache layout, from a real chunk
        names = list(state)
        outputs = list(self.component.outputs) + [cache.output_prefix + n for n in names]
        lengths = [(cache.first_role(size), size) for size in first_chunk_sizes(profile, vae_config.temporal_compression)]
        if profile.max.latent_frames(vae_config.temporal_compression) > 3:  # more than the first chunk
            lengths.append((NEXT, 2))
        graphs = []
        for role, frames in lengths:
            latents = torch.randn(spec.batch, vae_config.latent_channels, frames, h, w, generator=generator).to(dtype)
            cached = [state[n] for n in names] if role == NEXT else []
            inputs = [cache.chunk_input] + ([cache.input_prefix + n for n in names] if role == NEXT else [])
            graphs.append(Graph(role, f"{self.component.name}_{role}.onnx", DecoderChunkForExport(vae, names).eval(),
                                args=(latents, *cached), dynamic_shapes=self.dynamic_shapes(profile, latents, cached),
                                input_names=inputs, output_names=outputs))
        return graphs

    def dynamic_shapes(self, profile: ShapeProfile, latents: torch.Tensor, cache: list[torch.Tensor]) -> tuple | None:
        """(latents axes, cache axes...) for torch.export: batch and latent height / width; each cache
        entry's spatial size is a fixed multiple of the latent's."""
        if profile.is_static:
            return None
        axes = latent_axes(profile, self.model.vae.spatial_compression)
        cache_axes = []
        for tensor in cache:
            entry = {0: axes[0]} if 0 in axes else {}
            for axis in (3, 4):
                if axis in axes:
                    factor = tensor.shape[axis] // latents.shape[axis]
                    entry[axis] = axes[axis] * factor if factor > 1 else axes[axis]
            cache_axes.append(entry)
        return (axes, tuple(cache_axes)) if cache_axes else (axes,)


class T5EncoderForExport(nn.Module):
    """transformers' T5 encoder, same weights, with an attention written for export.

    transformers 5's T5 attention reshapes a transposed tensor (`reshape` after `transpose`), which
    torch.export cannot do with a dynamic batch. This wrapper calls the model's own modules (layer
    norms, q / k / v / o, relative position bias, feed-forward) and only writes the head split and
    merge itself. No padding mask: CogVideoX encodes prompts padded to the full length without one.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """(B, L) int64 -> (B, L, Dt)."""
        encoder = self.model.encoder
        x = encoder.embed_tokens(input_ids)  # (B, L, Dt)
        L = input_ids.shape[1]
        bias = encoder.block[0].layer[0].SelfAttention.compute_bias(L, L, device=x.device)  # (1, N, L, L)
        for block in encoder.block:
            attention = block.layer[0].SelfAttention
            heads, head_dim = attention.n_heads, attention.key_value_proj_dim
            h = block.layer[0].layer_norm(x)
            q, k, v = (proj(h).unflatten(-1, (heads, head_dim)).transpose(1, 2)
                       for proj in (attention.q, attention.k, attention.v))  # (B, N, L, Dh)
            weights = torch.softmax(q @ k.transpose(-1, -2) + bias, dim=-1)  # (B, N, L, L), T5: no 1/sqrt(Dh)
            out = (weights @ v).transpose(1, 2).flatten(2)  # (B, L, N*Dh)
            x = x + attention.o(out)
            x = block.layer[-1](x)  # pre-norm feed-forward with its residual
        return encoder.final_layer_norm(x)


@describes("text_encoder")
@dataclass
class TextEncoderDescriptor(SingleGraph):
    """The `text_encoder` stage: input_ids (B, L) -> text_embeddings (B, L, Dt), always fp32 (T5
    overflows in fp16). B covers the CFG batch (prompts and negative prompts)."""

    model: ModelConfig

    def load(self, model_dir: Path, dtype: torch.dtype) -> nn.Module:
        from transformers import T5EncoderModel

        return T5EncoderModel.from_pretrained(Path(model_dir) / self.component.source_folder,
                                              dtype=self.component.precision.torch_dtype).eval()

    def wrap(self, text_model: nn.Module) -> nn.Module:
        return T5EncoderForExport(text_model).eval()

    def sample_inputs(self, spec: ShapeSpec, dtype: torch.dtype = torch.float32, batch: int | None = None,
                      seed: int = 0) -> dict[str, torch.Tensor]:
        batch = 2 * spec.batch if batch is None else batch
        generator = torch.Generator().manual_seed(seed)
        vocab = self.model.text_encoder.vocab_size
        return {"input_ids": torch.randint(0, vocab, (batch, spec.text_len), generator=generator)}

    def dynamic_shapes(self, profile: ShapeProfile) -> dict[str, dict[int, Dim]]:
        """Batch always dynamic (prompts alone, or prompts and negative prompts together)."""
        axes = {0: Dim("batch", min=profile.min.batch, max=2 * profile.max.batch)}
        if profile.min.text_len != profile.max.text_len:
            axes[1] = Dim("text_len", min=profile.min.text_len, max=profile.max.text_len)
        return {"input_ids": axes}


class VAEEncoderForExport(nn.Module):
    def __init__(self, vae: nn.Module):
        super().__init__()
        self.vae = vae

    def forward(self, video: torch.Tensor):
        posterior = self.vae.encode(video, tiled=False)
        return posterior.mean, posterior.logvar


@describes("vae_encoder")
@dataclass
class VAEEncoderDescriptor(SingleGraph):
    """The `vae_encoder` stage for image-to-video: video (B, 3, 1, H, W) -> latent_mean, latent_logvar
    (B, C, 1, h, w). One frame (the conditioning image); dynamic batch, height and width."""

    model: ModelConfig
    frames: int = 1

    def load(self, model_dir: Path, dtype: torch.dtype) -> nn.Module:
        return load_vae(model_dir, self.component.source_folder, dtype)

    def wrap(self, vae: nn.Module) -> nn.Module:
        return VAEEncoderForExport(vae).eval()

    def sample_inputs(self, spec: ShapeSpec, dtype: torch.dtype = torch.float32, seed: int = 0) -> dict:
        generator = torch.Generator().manual_seed(seed)
        video = torch.rand(spec.batch, 3, self.frames, spec.height, spec.width, generator=generator) * 2 - 1
        return {"video": video.to(dtype)}

    def dynamic_shapes(self, profile: ShapeProfile) -> dict[str, dict[int, Dim]] | None:
        if profile.is_static:
            return None
        s = self.model.vae.spatial_compression
        # pixels are s x latent pixels: the same dims, scaled, so the encoder's downsampling divides
        axes = {axis: dim * s if axis in (3, 4) else dim for axis, dim in latent_axes(profile, s).items()}
        return {"video": axes}
