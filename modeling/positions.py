"""Positions of CogVideoX vision tokens: 3D sincos (2B), 3D RoPE (5B, 1.5), timestep sinusoids.

Letters: T = latent frames after temporal patching, H', W' = latent height / width after spatial
patching, S = T*H'*W' vision tokens, D = hidden size, Dh = head dim.

Vision tokens are ordered (t, h, w) row-major. These tables depend only on the shape, so the
runtime (and exported engines) can compute them once per shape and pass them in as inputs.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from .configs import TransformerConfig


class PositionTables(NamedTuple):
    """What the transformer adds or rotates by, for one shape. Unused entries are None."""

    rope_cos: torch.Tensor | None = None  # (S, Dh) fp32, 5B / 1.5
    rope_sin: torch.Tensor | None = None  # (S, Dh) fp32
    sincos: torch.Tensor | None = None  # (S, D) fp32, 2B


def timestep_sinusoid(timesteps: torch.Tensor, dim: int, flip_sin_to_cos: bool = True, freq_shift: float = 0) -> torch.Tensor:
    """(B,) -> (B, dim): [cos, sin] of t * 10000^(-k / (dim/2 - shift)), in fp32."""
    half = dim // 2
    exponent = -math.log(10000) * torch.arange(half, dtype=torch.float32, device=timesteps.device)
    frequencies = torch.exp(exponent / (half - freq_shift))  # (dim/2,)
    angles = timesteps[:, None].float() * frequencies[None, :]  # (B, dim/2)
    sin, cos = torch.sin(angles), torch.cos(angles)
    embedding = torch.cat([cos, sin] if flip_sin_to_cos else [sin, cos], dim=-1)  # (B, dim)
    if dim % 2:
        embedding = torch.nn.functional.pad(embedding, (0, 1))
    return embedding


def _sincos_1d(dim: int, positions: torch.Tensor) -> torch.Tensor:
    """(M,) -> (M, dim) float64: [sin(p w_k) ; cos(p w_k)], w_k = 10000^(-k / (dim/2))."""
    omega = torch.arange(dim // 2, dtype=torch.float64) / (dim / 2.0)
    omega = 1.0 / 10000**omega  # (dim/2,)
    angles = torch.outer(positions.reshape(-1).to(torch.float64), omega)  # (M, dim/2)
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)


def sincos_3d(
    hidden_size: int,
    num_frames: int,
    grid_height: int,
    grid_width: int,
    spatial_interpolation_scale: float = 1.875,
    temporal_interpolation_scale: float = 1.0,
) -> torch.Tensor:
    """The 2B's absolute table (S, D): temporal quarter, then E(w) and E(h) three quarters."""
    spatial_dim, temporal_dim = 3 * hidden_size // 4, hidden_size // 4
    rows = torch.arange(grid_height, dtype=torch.float32) / spatial_interpolation_scale
    cols = torch.arange(grid_width, dtype=torch.float32) / spatial_interpolation_scale
    w_grid, h_grid = torch.meshgrid(cols, rows, indexing="xy")  # (H', W') each
    spatial = torch.cat(
        [_sincos_1d(spatial_dim // 2, w_grid), _sincos_1d(spatial_dim // 2, h_grid)], dim=1
    )  # (H'*W', 3D/4)
    times = torch.arange(num_frames, dtype=torch.float32) / temporal_interpolation_scale
    temporal = _sincos_1d(temporal_dim, times)  # (T, D/4)
    spatial = spatial[None].expand(num_frames, -1, -1)  # (T, H'*W', 3D/4)
    temporal = temporal[:, None].expand(-1, grid_height * grid_width, -1)  # (T, H'*W', D/4)
    return torch.cat([temporal, spatial], dim=-1).flatten(0, 1).float()  # (S, D)


def _rope_1d(dim: int, positions: torch.Tensor, theta: float = 10000.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(M,) -> cos, sin (M, dim), each frequency repeated for its (a, b) pair."""
    frequencies = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))  # (dim/2,)
    angles = torch.outer(positions, frequencies)  # (M, dim/2)
    return angles.cos().repeat_interleave(2, dim=1), angles.sin().repeat_interleave(2, dim=1)


def crop_region(grid_height: int, grid_width: int, base_height: int, base_width: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """Resize the (H', W') grid to fit the base grid keeping its aspect, centred: (top, left), (bottom, right)."""
    if grid_height / grid_width > base_height / base_width:
        resize_height, resize_width = base_height, int(round(base_height / grid_height * grid_width))
    else:
        resize_width, resize_height = base_width, int(round(base_width / grid_width * grid_height))
    top = int(round((base_height - resize_height) / 2.0))
    left = int(round((base_width - resize_width) / 2.0))
    return (top, left), (top + resize_height, left + resize_width)


def rope_3d(
    head_dim: int,
    num_frames: int,
    grid_height: int,
    grid_width: int,
    base_height: int,
    base_width: int,
    grid_type: str = "crop",
    theta: float = 10000.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """3D RoPE cos, sin (S, Dh): head dim split t = Dh/4, h = 3Dh/8, w = 3Dh/8, in that order.

    grid_type "crop" (1.0): the grid spans the resize-and-crop region of the base grid, so
    positions are fractional at other resolutions. "slice" (1.5): integer positions 0..n-1.
    """
    if grid_type == "crop":
        (top, left), (bottom, right) = crop_region(grid_height, grid_width, base_height, base_width)
        rows = torch.linspace(top, bottom * (grid_height - 1) / grid_height, grid_height, dtype=torch.float32)
        cols = torch.linspace(left, right * (grid_width - 1) / grid_width, grid_width, dtype=torch.float32)
    elif grid_type == "slice":
        if grid_height > base_height or grid_width > base_width:
            raise ValueError(
                f"latent grid {grid_height}x{grid_width} exceeds the RoPE base grid {base_height}x{base_width}; "
                "use a smaller height/width"
            )
        rows = torch.arange(grid_height, dtype=torch.float32)
        cols = torch.arange(grid_width, dtype=torch.float32)
    else:
        raise ValueError(f"grid_type must be 'crop' or 'slice' (got {grid_type!r})")
    times = torch.arange(num_frames, dtype=torch.float32)
    dim_t, dim_hw = head_dim // 4, head_dim // 8 * 3
    tables = (_rope_1d(dim_t, times, theta), _rope_1d(dim_hw, rows, theta), _rope_1d(dim_hw, cols, theta))

    def combine(t: torch.Tensor, h: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        t = t[:, None, None, :].expand(-1, grid_height, grid_width, -1)  # (T, H', W', Dh/4)
        h = h[None, :, None, :].expand(num_frames, -1, grid_width, -1)  # (T, H', W', 3Dh/8)
        w = w[None, None, :, :].expand(num_frames, grid_height, -1, -1)  # (T, H', W', 3Dh/8)
        return torch.cat([t, h, w], dim=-1).reshape(num_frames * grid_height * grid_width, -1)  # (S, Dh)

    cos = combine(*(table[0] for table in tables))
    sin = combine(*(table[1] for table in tables))
    return cos, sin


def position_tables(
    config: TransformerConfig, num_latent_frames: int, latent_height: int, latent_width: int,
    device: torch.device | str | None = None,
) -> PositionTables:
    """The tables the transformer needs for latents (F, C, latent_height, latent_width).

    Public so the runtime, exporters and kernels can compute them once per shape.
    """
    p, p_t = config.patch_size, config.patch_size_t or 1
    frames = -(-num_latent_frames // p_t)
    grid_height, grid_width = latent_height // p, latent_width // p
    if config.positions == "sincos":
        table = sincos_3d(
            config.hidden_size, frames, grid_height, grid_width,
            config.spatial_interpolation_scale, config.temporal_interpolation_scale,
        )
        return PositionTables(sincos=table.to(device))
    cos, sin = rope_3d(
        config.attention_head_dim, frames, grid_height, grid_width,
        config.sample_height // p, config.sample_width // p, config.rope_grid,
    )
    return PositionTables(rope_cos=cos.to(device), rope_sin=sin.to(device))
