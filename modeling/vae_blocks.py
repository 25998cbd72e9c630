"""Building blocks of the CogVideoX 3D causal VAE (see docs/reference.md, 'VAE').

Letters: B batch, C channels, T frames, H, W height / width; zq the latent (B, Cz, t, h, w) that
conditions every decoder norm.

The causal-conv cache is explicit: a forward takes `cache` (the previous chunk's last k-1 input
frames of every causal conv, keyed by the conv's module path; None for the first chunk) and fills
`new_cache`. Nothing is kept on the modules between calls, so a chunk is a pure function of
(frames, cache) and the exporter can make every cache entry a graph input and output.
Parameter names equal diffusers' `AutoencoderKLCogVideoX`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

Cache = dict[str, torch.Tensor]


class SplitConv3d(nn.Conv3d):
    """Conv3d that runs past-2 GiB inputs in overlapping time slices (same result, bounded memory)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gib = x.numel() * 2 / 1024**3
        if gib <= 2:
            return super().forward(x)
        k = self.kernel_size[0]
        parts = list(torch.chunk(x, int(gib / 2) + 1, dim=2))
        if k > 1:
            parts = [parts[0]] + [torch.cat([parts[i - 1][:, :, 1 - k:], parts[i]], dim=2) for i in range(1, len(parts))]
        return torch.cat([super().forward(part) for part in parts], dim=2)


class CausalConv3d(nn.Module):
    """Conv3d, zero padding in space, causal in time: the first frame repeated k-1 times, or the cache."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3):
        super().__init__()
        self.time_kernel = kernel_size
        pad = (kernel_size - 1) // 2
        self.conv = SplitConv3d(in_channels, out_channels, kernel_size, padding=(0, pad, pad))
        self.cache_key = ""  # set by the VAE to this module's path

    def forward(self, x: torch.Tensor, cache: Cache | None, new_cache: Cache) -> torch.Tensor:
        k = self.time_kernel
        if k > 1:
            previous = cache[self.cache_key] if cache else x[:, :, :1].expand(-1, -1, k - 1, -1, -1)
            x = torch.cat([previous, x], dim=2)  # (B, C, T + k - 1, H, W)
            new_cache[self.cache_key] = x[:, :, 1 - k:].clone()
        return self.conv(x)


class SpatialNorm3D(nn.Module):
    """GroupNorm(f) * conv_y(zq) + conv_b(zq); zq resized (nearest) to f, first frame apart when T is odd."""

    def __init__(self, channels: int, latent_channels: int, groups: int):
        super().__init__()
        self.norm_layer = nn.GroupNorm(groups, channels, eps=1e-6)
        self.conv_y = CausalConv3d(latent_channels, channels, kernel_size=1)
        self.conv_b = CausalConv3d(latent_channels, channels, kernel_size=1)

    def forward(self, f: torch.Tensor, zq: torch.Tensor, cache: Cache | None, new_cache: Cache) -> torch.Tensor:
        if f.shape[2] > 1 and f.shape[2] % 2 == 1:
            first = F.interpolate(zq[:, :, :1], size=f[:, :, :1].shape[-3:])
            rest = F.interpolate(zq[:, :, 1:], size=f[:, :, 1:].shape[-3:])
            zq = torch.cat([first, rest], dim=2)  # (B, Cz, T, H, W)
        else:
            zq = F.interpolate(zq, size=f.shape[-3:])
        return self.norm_layer(f) * self.conv_y(zq, cache, new_cache) + self.conv_b(zq, cache, new_cache)


class ResnetBlock3D(nn.Module):
    """norm -> SiLU -> causal conv, twice, plus a (1x1x1 conv) shortcut; norms are spatial in the decoder."""

    def __init__(self, in_channels: int, out_channels: int, groups: int, eps: float, latent_channels: int | None = None):
        super().__init__()
        if latent_channels is None:
            self.norm1 = nn.GroupNorm(groups, in_channels, eps=eps)
            self.norm2 = nn.GroupNorm(groups, out_channels, eps=eps)
        else:
            self.norm1 = SpatialNorm3D(in_channels, latent_channels, groups)
            self.norm2 = SpatialNorm3D(out_channels, latent_channels, groups)
        self.conv1 = CausalConv3d(in_channels, out_channels)
        self.conv2 = CausalConv3d(out_channels, out_channels)
        if in_channels != out_channels:
            self.conv_shortcut = SplitConv3d(in_channels, out_channels, kernel_size=1)

    def _norm(self, norm, x, zq, cache, new_cache):
        return norm(x, zq, cache, new_cache) if zq is not None else norm(x)

    def forward(self, x: torch.Tensor, zq: torch.Tensor | None, cache: Cache | None, new_cache: Cache) -> torch.Tensor:
        h = self.conv1(F.silu(self._norm(self.norm1, x, zq, cache, new_cache)), cache, new_cache)
        h = self.conv2(F.silu(self._norm(self.norm2, h, zq, cache, new_cache)), cache, new_cache)
        shortcut = self.conv_shortcut(x) if hasattr(self, "conv_shortcut") else x
        return h + shortcut


class Downsample3D(nn.Module):
    """Optional time halving (frame 0 kept, pairs averaged), then a stride-2 3x3 conv per frame."""

    def __init__(self, channels: int, compress_time: bool):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, stride=2, padding=0)
        self.compress_time = compress_time

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, T, H, W = x.shape
        if self.compress_time:
            x = x.permute(0, 3, 4, 1, 2).reshape(B * H * W, C, T)
            if T % 2 == 1:
                rest = F.avg_pool1d(x[..., 1:], kernel_size=2, stride=2) if T > 1 else x[..., 1:]
                x = torch.cat([x[..., :1], rest], dim=-1)
            else:
                x = F.avg_pool1d(x, kernel_size=2, stride=2)
            T = x.shape[-1]
            x = x.reshape(B, H, W, C, T).permute(0, 3, 4, 1, 2)  # (B, C, T', H, W)
        x = F.pad(x, (0, 1, 0, 1))
        x = self.conv(x.permute(0, 2, 1, 3, 4).flatten(0, 1))  # (B*T', C, H/2, W/2)
        return x.unflatten(0, (B, T)).permute(0, 2, 1, 3, 4)


class Upsample3D(nn.Module):
    """Nearest x2 in space (and in time but for frame 0 when compressing time), then a 3x3 conv per frame."""

    def __init__(self, channels: int, compress_time: bool):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, stride=1, padding=1)
        self.compress_time = compress_time

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        T = x.shape[2]
        if self.compress_time and T > 1 and T % 2 == 1:
            first = F.interpolate(x[:, :, 0], scale_factor=2.0)[:, :, None]
            x = torch.cat([first, F.interpolate(x[:, :, 1:], scale_factor=2.0)], dim=2)  # (B, C, 2T-1, 2H, 2W)
        elif self.compress_time and T > 1:
            x = F.interpolate(x, scale_factor=2.0)  # (B, C, 2T, 2H, 2W)
        else:
            B = x.shape[0]
            x = F.interpolate(x.permute(0, 2, 1, 3, 4).flatten(0, 1), scale_factor=2.0)  # (B*T, C, 2H, 2W)
            x = x.unflatten(0, (B, T)).permute(0, 2, 1, 3, 4)
        B, T = x.shape[0], x.shape[2]
        x = self.conv(x.permute(0, 2, 1, 3, 4).flatten(0, 1))
        return x.unflatten(0, (B, T)).permute(0, 2, 1, 3, 4)


class Block3D(nn.Module):
    """Resnets then an optional down- or upsampler (diffusers' Down/Up/MidBlock3D)."""

    def __init__(self, in_channels: int, out_channels: int, num_layers: int, groups: int, eps: float,
                 resample: str | None = None, compress_time: bool = False, latent_channels: int | None = None):
        super().__init__()
        self.resnets = nn.ModuleList([
            ResnetBlock3D(in_channels if i == 0 else out_channels, out_channels, groups, eps, latent_channels)
            for i in range(num_layers)
        ])
        if resample == "down":
            self.downsamplers = nn.ModuleList([Downsample3D(out_channels, compress_time)])
        elif resample == "up":
            self.upsamplers = nn.ModuleList([Upsample3D(out_channels, compress_time)])

    def forward(self, x, zq, cache, new_cache):
        for resnet in self.resnets:
            x = resnet(x, zq, cache, new_cache)
        for sampler in getattr(self, "downsamplers", []) or getattr(self, "upsamplers", []):
            x = sampler(x)
        return x


class Encoder3D(nn.Module):
    """(B, 3, T, H, W) -> (B, 2Cz, t, h, w): mean and logvar."""

    def __init__(self, in_channels, latent_channels, channels, layers, groups, eps, time_levels):
        super().__init__()
        self.conv_in = CausalConv3d(in_channels, channels[0])
        self.down_blocks = nn.ModuleList([
            Block3D(channels[max(i - 1, 0)], channels[i], layers, groups, eps,
                    resample=None if i == len(channels) - 1 else "down", compress_time=i < time_levels)
            for i in range(len(channels))
        ])
        self.mid_block = Block3D(channels[-1], channels[-1], 2, groups, eps)
        self.norm_out = nn.GroupNorm(groups, channels[-1], eps=1e-6)
        self.conv_out = CausalConv3d(channels[-1], 2 * latent_channels)

    def forward(self, x: torch.Tensor, cache: Cache | None, new_cache: Cache) -> torch.Tensor:
        x = self.conv_in(x, cache, new_cache)
        for block in self.down_blocks:
            x = block(x, None, cache, new_cache)
        x = self.mid_block(x, None, cache, new_cache)
        return self.conv_out(F.silu(self.norm_out(x)), cache, new_cache)


class Decoder3D(nn.Module):
    """(B, Cz, t, h, w) -> (B, 3, T, H, W); every norm conditioned on the latent."""

    def __init__(self, latent_channels, out_channels, channels, layers, groups, eps, time_levels):
        super().__init__()
        reversed_channels = list(reversed(channels))
        self.conv_in = CausalConv3d(latent_channels, reversed_channels[0])
        self.mid_block = Block3D(reversed_channels[0], reversed_channels[0], 2, groups, eps,
                                 latent_channels=latent_channels)
        self.up_blocks = nn.ModuleList([
            Block3D(reversed_channels[max(i - 1, 0)], reversed_channels[i], layers + 1, groups, eps,
                    resample=None if i == len(channels) - 1 else "up", compress_time=i < time_levels,
                    latent_channels=latent_channels)
            for i in range(len(channels))
        ])
        self.norm_out = SpatialNorm3D(reversed_channels[-1], latent_channels, groups)
        self.conv_out = CausalConv3d(reversed_channels[-1], out_channels)

    def forward(self, z: torch.Tensor, cache: Cache | None, new_cache: Cache) -> torch.Tensor:
        x = self.conv_in(z, cache, new_cache)
        x = self.mid_block(x, z, cache, new_cache)
        for block in self.up_blocks:
            x = block(x, z, cache, new_cache)
        return self.conv_out(F.silu(self.norm_out(x, z, cache, new_cache)), cache, new_cache)
