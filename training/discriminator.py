"""A small 3D PatchGAN discriminator for VAE training (the GAN term late in training; see docs/reference.md,
'Training recipes').

Letters: B batch, T frames, H, W video size; T', H', W' the patch grid of the logits.

Conv3d stacks with stride 2 in space (and in time after the first layer), GroupNorm rather than
BatchNorm (batch statistics do not mix across data-parallel ranks), LeakyReLU(0.2); the output is
one real/fake logit per spatio-temporal patch.
"""

from __future__ import annotations

import torch
from torch import nn


class PatchDiscriminator3D(nn.Module):
    """`discriminator(video (B, 3, T, H, W) in [-1, 1]) -> logits (B, 1, T', H', W')`."""

    def __init__(self, in_channels: int = 3, channels: int = 64, num_layers: int = 3):
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"num_layers must be at least 1 (got {num_layers})")
        layers: list[nn.Module] = [
            nn.Conv3d(in_channels, channels, kernel_size=(3, 4, 4), stride=(1, 2, 2), padding=1),
            nn.LeakyReLU(0.2),
        ]
        width = channels
        for _ in range(1, num_layers):
            out = min(2 * width, 8 * channels)
            layers += [
                nn.Conv3d(width, out, kernel_size=(3, 4, 4), stride=2, padding=1, bias=False),
                nn.GroupNorm(min(32, out // 4) or 1, out),
                nn.LeakyReLU(0.2),
            ]
            width = out
        layers.append(nn.Conv3d(width, 1, kernel_size=3, stride=1, padding=1))
        self.layers = nn.Sequential(*layers)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        """(B, 3, T, H, W) -> (B, 1, T', H / 2^num_layers, W / 2^num_layers)."""
        return self.layers(video)


def hinge_discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """mean(relu(1 - D(real))) + mean(relu(1 + D(fake))); 0 once real > 1 and fake < -1 everywhere."""
    return torch.relu(1.0 - real_logits).mean() + torch.relu(1.0 + fake_logits).mean()


def hinge_generator_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """-mean(D(fake))."""
    return -fake_logits.mean()
