"""The CogVideoX 3D causal VAE: frame-batched encode and decode, streaming chunks, optional tiling.

Letters: B batch, T video frames (4k+1), H, W video size, t = (T-1)/4 + 1 latent frames,
h, w = H/8, W/8, Cz latent channels (16).

Encode runs 8 video frames at a time and decode 2 latent frames at a time (the first chunk also
takes the remainder), carrying the causal-conv cache between chunks: memory stays bounded and
the numbers are the reference's (GroupNorm statistics are per chunk, as in training).
`decode_chunk` / `encode_chunk` expose one step of that loop as a pure function of
(frames, cache), which is what the pipeline streams and what the exporter turns into graphs.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

from . import checkpoint as ckpt
from .configs import VAEConfig, get_preset, latent_frames
from .vae_blocks import Cache, CausalConv3d, Decoder3D, Encoder3D

ENCODE_CHUNK = 8  # video frames per encoder step
DECODE_CHUNK = 2  # latent frames per decoder step


class DiagonalGaussian:
    """The posterior: mean and logvar (clamped to [-30, 20]) of (B, Cz, t, h, w)."""

    def __init__(self, moments: torch.Tensor):
        self.mean, logvar = moments.chunk(2, dim=1)
        self.logvar = logvar.clamp(-30.0, 20.0)
        self.std = torch.exp(0.5 * self.logvar)

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        device = generator.device if generator is not None else self.mean.device
        noise = torch.randn(self.mean.shape, generator=generator, device=device, dtype=self.mean.dtype)
        return self.mean + self.std * noise.to(self.mean.device)

    def mode(self) -> torch.Tensor:
        return self.mean


def chunk_bounds(num_frames: int, chunk: int) -> list[tuple[int, int]]:
    """The reference frame batches: `chunk` frames each, the first also takes the remainder."""
    remainder = num_frames % chunk
    return [(0 if i == 0 else chunk * i + remainder, min(chunk * (i + 1) + remainder, num_frames))
            for i in range(max(num_frames // chunk, 1))]


class CogVideoXVAE(nn.Module):
    """`encode(video (B,3,T,H,W) in [-1,1]) -> DiagonalGaussian`, `decode(latents (B,Cz,t,h,w)) -> video`."""

    def __init__(self, config: VAEConfig):
        super().__init__()
        self.config = config
        levels = int(math.log2(config.temporal_compression))
        args = (list(config.block_out_channels), config.layers_per_block, config.norm_num_groups, config.norm_eps, levels)
        self.encoder = Encoder3D(config.in_channels, config.latent_channels, *args)
        self.decoder = Decoder3D(config.latent_channels, config.out_channels, *args)
        for name, module in self.named_modules():
            if isinstance(module, CausalConv3d):
                module.cache_key = name
        self.enable_tiling()
        self.use_tiling = False  # off by default; the tile sizes above are the defaults it will use

    # -- loading -----------------------------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, directory: str | Path, dtype: torch.dtype = torch.float32) -> CogVideoXVAE:
        config = VAEConfig.from_file(directory)
        return ckpt.load_module(lambda: cls(config), directory, dtype)

    @classmethod
    def from_preset(cls, name: str, dtype: torch.dtype = torch.float32, seed: int = 0) -> CogVideoXVAE:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = cls(get_preset(name).vae)
        return model.to(dtype).eval().requires_grad_(False)

    def save_pretrained(self, directory: str | Path, max_shard_bytes: int | None = None) -> None:
        ckpt.save_component(self, self.config.to_dict(), directory, max_shard_bytes=max_shard_bytes)

    def enable_tiling(self, tile_sample_min_height: int | None = None, tile_sample_min_width: int | None = None,
                      tile_overlap_factor_height: float = 1 / 6, tile_overlap_factor_width: float = 1 / 5) -> None:
        """Tile encode / decode spatially (defaults: half the sample size, overlap 1/6 and 1/5)."""
        self.use_tiling = True
        self.tile_sample_min_height = tile_sample_min_height or self.config.sample_height // 2
        self.tile_sample_min_width = tile_sample_min_width or self.config.sample_width // 2
        self.tile_latent_min_height = int(self.tile_sample_min_height / self.config.spatial_compression)
        self.tile_latent_min_width = int(self.tile_sample_min_width / self.config.spatial_compression)
        self.tile_overlap_factor_height = tile_overlap_factor_height
        self.tile_overlap_factor_width = tile_overlap_factor_width

    def disable_tiling(self) -> None:
        self.use_tiling = False

    # -- chunks ------------------------------------------------------------------------------------

    def encode_chunk(self, video: torch.Tensor, cache: Cache | None) -> tuple[torch.Tensor, Cache]:
        """(B, 3, T_k, H, W), cache -> moments (B, 2Cz, t_k, h, w), the next chunk's cache."""
        new_cache: Cache = {}
        return self.encoder(video, cache, new_cache), new_cache

    def decode_chunk(self, latents: torch.Tensor, cache: Cache | None) -> tuple[torch.Tensor, Cache]:
        """(B, Cz, t_k, h, w), cache -> video (B, 3, T_k, H, W), the next chunk's cache."""
        new_cache: Cache = {}
        return self.decoder(latents, cache, new_cache), new_cache

    @staticmethod
    def _frame_batched(x: torch.Tensor, chunk: int, step) -> torch.Tensor:
        """Run `step(frames, cache) -> (out, cache)` over the reference frame batches and join the outputs."""
        cache, outputs = None, []
        for start, end in chunk_bounds(x.shape[2], chunk):
            out, cache = step(x[:, :, start:end], cache)
            outputs.append(out)
        return torch.cat(outputs, dim=2)

    def _encode_frames(self, video: torch.Tensor) -> torch.Tensor:
        return self._frame_batched(video, ENCODE_CHUNK, self.encode_chunk)

    def _decode_frames(self, latents: torch.Tensor) -> torch.Tensor:
        return self._frame_batched(latents, DECODE_CHUNK, self.decode_chunk)

    # -- public ------------------------------------------------------------------------------------

    def encode(self, video: torch.Tensor, tiled: bool | None = None) -> DiagonalGaussian:
        """(B, 3, T, H, W) in [-1, 1] -> posterior over (B, Cz, t, h, w)."""
        c = self.config
        if video.ndim != 5 or video.shape[1] != c.in_channels:
            raise ValueError(f"video must be (B, {c.in_channels}, T, H, W) in [-1, 1] (got {tuple(video.shape)})")
        latent_frames(video.shape[2], c.temporal_compression)
        s = c.spatial_compression
        if video.shape[3] % s or video.shape[4] % s:
            raise ValueError(f"video height/width must be multiples of {s} (got {video.shape[3]}x{video.shape[4]})")
        tiled = self.use_tiling if tiled is None else tiled
        if tiled and (video.shape[4] > self.tile_sample_min_width or video.shape[3] > self.tile_sample_min_height):
            return DiagonalGaussian(self._tiled(video, self._encode_frames, encode=True))
        return DiagonalGaussian(self._encode_frames(video))

    def decode(self, latents: torch.Tensor, tiled: bool | None = None) -> torch.Tensor:
        """(B, Cz, t, h, w) -> (B, 3, T, H, W) in about [-1, 1]."""
        c = self.config
        if latents.ndim != 5 or latents.shape[1] != c.latent_channels:
            raise ValueError(f"latents must be (B, {c.latent_channels}, t, h, w) (got {tuple(latents.shape)})")
        tiled = self.use_tiling if tiled is None else tiled
        if tiled and (latents.shape[4] > self.tile_latent_min_width or latents.shape[3] > self.tile_latent_min_height):
            return self._tiled(latents, self._decode_frames, encode=False)
        return self._decode_frames(latents)

    def _tiled(self, x: torch.Tensor, run, encode: bool) -> torch.Tensor:
        """Overlapping spatial tiles, each through the whole frame loop, blended linearly at the seams."""
        sample_h, sample_w = self.tile_sample_min_height, self.tile_sample_min_width
        latent_h, latent_w = self.tile_latent_min_height, self.tile_latent_min_width
        in_h, in_w = (sample_h, sample_w) if encode else (latent_h, latent_w)
        out_h, out_w = (latent_h, latent_w) if encode else (sample_h, sample_w)
        step_h = int(in_h * (1 - self.tile_overlap_factor_height))
        step_w = int(in_w * (1 - self.tile_overlap_factor_width))
        blend_h = int(out_h * self.tile_overlap_factor_height)
        blend_w = int(out_w * self.tile_overlap_factor_width)
        self.last_tile_count = 0
        rows = []
        for i in range(0, x.shape[3], step_h):
            rows.append([])
            for j in range(0, x.shape[4], step_w):
                rows[-1].append(run(x[:, :, :, i:i + in_h, j:j + in_w]))
                self.last_tile_count += 1
        result_rows = []
        for i, row in enumerate(rows):
            kept = []
            for j, tile in enumerate(row):
                if i > 0:
                    tile = _blend(rows[i - 1][j], tile, blend_h, dim=3)
                if j > 0:
                    tile = _blend(row[j - 1], tile, blend_w, dim=4)
                kept.append(tile[:, :, :, :out_h - blend_h, :out_w - blend_w])
            result_rows.append(torch.cat(kept, dim=4))
        return torch.cat(result_rows, dim=3)


def _blend(previous: torch.Tensor, tile: torch.Tensor, extent: int, dim: int) -> torch.Tensor:
    """Linear ramp from the previous tile's tail into this tile's head along `dim` (3 = rows, 4 = columns).

    In place, as the reference does: a blended tile is what its right and lower neighbours blend from.
    """
    extent = min(previous.shape[dim], tile.shape[dim], extent)
    for y in range(extent):
        weight = y / extent
        head = tile.narrow(dim, y, 1)
        head.copy_(previous.narrow(dim, previous.shape[dim] - extent + y, 1) * (1 - weight) + head * weight)
    return tile
