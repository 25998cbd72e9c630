"""Training losses: the VAE's (L1 + KL + perceptual + late 3D GAN) and the transformer's (v-prediction MSE).

Letters: B batch, T video frames, H, W video size; F latent frames, C latent channels, h, w latent
size; L text tokens, Dt text width.

Per-sample losses are means over a sample's elements, so weights do not depend on the clip size;
the batch loss is the mean over samples (a packed batch averages its clips the same way).

Transformer (see docs/reference.md, 'Schedulers' and 'Training recipes'):
x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise on the CogVideoX schedule (SNR shift, zero terminal
SNR); the target is the velocity v = sqrt(abar_t) noise - sqrt(1 - abar_t) x0. MSE on v equals
the x0-MSE weighted by 1 / (1 - abar_t). For classifier-free guidance the text of a sample is replaced by the
empty-prompt embedding with probability `text_dropout` (10 %).

VAE perceptual term: LPIPS-style distance on VGG16 features read from a user-supplied torchvision
VGG16 weights file (no torchvision needed): unit-normalise each tapped feature over channels,
square the difference, weight the channels (LPIPS' linear weights when given, else a plain mean),
average over space and frames, sum over the five taps.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from .config import TrainConfigError
from .discriminator import PatchDiscriminator3D, hinge_discriminator_loss, hinge_generator_loss

logger = logging.getLogger(__name__)

# torchvision's vgg16().features: numbers are conv widths (3x3, ReLU after each), "M" a 2x2 max pool.
VGG16_LAYOUT = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)
LPIPS_TAPS = (3, 8, 15, 22, 29)  # relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 in features' indexing
# LPIPS' input scaling layer: inputs in [-1, 1] -> ImageNet-normalised.
LPIPS_SHIFT = (-0.030, -0.088, -0.188)
LPIPS_SCALE = (0.458, 0.448, 0.450)


# -- VAE ------------------------------------------------------------------------------------------

def l1_loss(video: torch.Tensor, reconstruction: torch.Tensor) -> torch.Tensor:
    """(B, 3, T, H, W) x 2 -> (B,) mean absolute error per sample."""
    return (video - reconstruction).abs().flatten(1).mean(dim=1)


def mse_loss(video: torch.Tensor, reconstruction: torch.Tensor) -> torch.Tensor:
    """(B, 3, T, H, W) x 2 -> (B,) mean squared error per sample."""
    return (video - reconstruction).square().flatten(1).mean(dim=1)


RECONSTRUCTION_LOSSES = {"l1": l1_loss, "mse": mse_loss}


def kl_divergence(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, exp(logvar)) || N(0, 1)) per latent element, averaged per sample: (B, ...) -> (B,)."""
    kl = 0.5 * (mean.square() + logvar.exp() - 1.0 - logvar)  # (B, C, F, h, w)
    return kl.flatten(1).mean(dim=1)


def _load_weights_file(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise TrainConfigError(f"weights file {path} does not exist; give the path of a torchvision VGG16 "
                                "state dict (vgg16-397923af.pth) or leave perceptual weights unset")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    return state


class VGG16Features(nn.Module):
    """torchvision's VGG16 `features` (same indices, so its state dict loads as is), tapped for LPIPS."""

    def __init__(self):
        super().__init__()
        layers: list[nn.Module] = []
        channels = 3
        for item in VGG16_LAYOUT:
            if item == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(channels, item, 3, padding=1), nn.ReLU()]
                channels = item
        self.features = nn.Sequential(*layers)

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        """(N, 3, H, W) ImageNet-normalised -> five feature maps (N, C_k, H / 2^k, W / 2^k)."""
        taps = []
        x = images
        for index, layer in enumerate(self.features):
            x = layer(x)
            if index in LPIPS_TAPS:
                taps.append(x)
        return taps


class PerceptualLoss(nn.Module):
    """LPIPS-style distance between videos, frame by frame: (B, 3, T, H, W) x 2 -> (B,).

    `vgg16_weights`: a torchvision VGG16 state dict (keys `features.N.weight` / `.bias`; the
    classifier is ignored), .pth or .safetensors. `lpips_weights` (optional): LPIPS' linear layer
    file (keys `lin{k}.model.1.weight`, shape (1, C_k, 1, 1)); without it channels weigh equally.
    """

    def __init__(self, vgg16_weights: str | Path, lpips_weights: str | Path | None = None):
        super().__init__()
        self.vgg = VGG16Features()
        state = _load_weights_file(Path(vgg16_weights))
        features = {k: v for k, v in state.items() if k.startswith("features.")}
        missing = sorted(set(self.vgg.state_dict()) - set(features))
        if missing:
            raise TrainConfigError(
                f"{vgg16_weights} is not a torchvision VGG16 state dict: missing {missing[:4]}"
                f"{' ...' if len(missing) > 4 else ''}; download vgg16-397923af.pth or convert your weights "
                "to torchvision's `features.N.weight` names"
            )
        self.vgg.load_state_dict(features)
        widths = [c for c in VGG16_LAYOUT if c != "M"]
        tap_widths = [widths[i] for i in (1, 3, 6, 9, 12)]
        if lpips_weights is not None:
            lin = _load_weights_file(Path(lpips_weights))
            try:
                weights = [lin[f"lin{k}.model.1.weight"].reshape(-1) for k in range(5)]
            except KeyError as error:
                raise TrainConfigError(f"{lpips_weights} has no LPIPS linear weight {error}; "
                                       "expected lin0..lin4") from None
        else:
            weights = [torch.full((width,), 1.0 / width) for width in tap_widths]
        for k, w in enumerate(weights):
            if w.numel() != tap_widths[k]:
                raise TrainConfigError(f"LPIPS weight lin{k} has {w.numel()} channels; VGG16 tap {k} has "
                                       f"{tap_widths[k]}")
            self.register_buffer(f"channel_weight_{k}", w.float(), persistent=False)
        self.register_buffer("shift", torch.tensor(LPIPS_SHIFT)[None, :, None, None], persistent=False)
        self.register_buffer("scale", torch.tensor(LPIPS_SCALE)[None, :, None, None], persistent=False)
        self.requires_grad_(False).eval()

    def forward(self, video: torch.Tensor, reconstruction: torch.Tensor) -> torch.Tensor:
        B = video.shape[0]
        frames = lambda v: v.transpose(1, 2).flatten(0, 1)  # (B*T, 3, H, W)
        x = (frames(video) - self.shift) / self.scale
        y = (frames(reconstruction) - self.shift) / self.scale
        distance = 0.0
        for k, (fx, fy) in enumerate(zip(self.vgg(x), self.vgg(y))):
            fx = fx / (fx.square().sum(dim=1, keepdim=True).sqrt() + 1e-10)  # unit norm over channels
            fy = fy / (fy.square().sum(dim=1, keepdim=True).sqrt() + 1e-10)
            weight = getattr(self, f"channel_weight_{k}")[None, :, None, None]
            distance = distance + ((fx - fy).square() * weight).sum(dim=1).mean(dim=(1, 2))  # (B*T,)
        return distance.reshape(B, -1).mean(dim=1)  # (B,)


def adaptive_gan_weight(reconstruction_loss: torch.Tensor, generator_loss: torch.Tensor,
                        last_layer: torch.Tensor, limit: float = 1e4) -> torch.Tensor:
    """VQGAN's balance: |grad of the reconstruction loss| / |grad of the GAN loss| at the decoder's last layer."""
    rec_grad = torch.autograd.grad(reconstruction_loss, last_layer, retain_graph=True)[0]
    gan_grad = torch.autograd.grad(generator_loss, last_layer, retain_graph=True)[0]
    return (rec_grad.norm() / (gan_grad.norm() + 1e-4)).clamp(0.0, limit).detach()


class VAELoss(nn.Module):
    """L1 + kl_weight * KL (+ perceptual_weight * LPIPS) (+ gan_weight * hinge GAN from `gan_start_step` on).

    `reconstruction="mse"` puts squared error in place of L1. L1's optimum is the per-pixel median, and
    where a small object covers a few percent of the frame the median is the background: on the toy
    world an L1-trained VAE stays at ~18 dB (background only) for hundreds of steps while MSE passes
    22 dB in 300 (measured, see docs/toy-model.md). Real footage is dense; there L1 is the recipe.
    `generator_loss` is the VAE's objective, `discriminator_loss` the discriminator's; both return
    (scalar loss, {name: float} parts for the log).
    """

    def __init__(self, kl_weight: float = 1e-6, perceptual: PerceptualLoss | None = None,
                 perceptual_weight: float = 0.1, discriminator: PatchDiscriminator3D | None = None,
                 gan_weight: float = 0.1, gan_start_step: int = 0, adaptive_gan_weight: bool = True,
                 reconstruction: str = "l1"):
        super().__init__()
        if reconstruction not in RECONSTRUCTION_LOSSES:
            raise ValueError(f"reconstruction must be one of {sorted(RECONSTRUCTION_LOSSES)} (got {reconstruction!r})")
        self.reconstruction = reconstruction
        self.kl_weight, self.perceptual_weight = kl_weight, perceptual_weight
        self.perceptual = perceptual
        self.discriminator = discriminator
        self.gan_weight, self.gan_start_step = gan_weight, gan_start_step
        self.adaptive = adaptive_gan_weight

    def gan_active(self, step: int) -> bool:
        """The GAN term is on at `step` (0-based global step) when a discriminator exists and step >= gan_start_step."""
        return self.discriminator is not None and step >= self.gan_start_step

    def generator_loss(self, video: torch.Tensor, reconstruction: torch.Tensor, mean: torch.Tensor,
                       logvar: torch.Tensor, step: int, last_layer: torch.Tensor | None = None):
        """video, reconstruction (B, 3, T, H, W); posterior mean, logvar (B, C, F, h, w)."""
        rec = RECONSTRUCTION_LOSSES[self.reconstruction](video, reconstruction).mean()
        kl = kl_divergence(mean, logvar).mean()
        parts = {self.reconstruction: rec.item(), "kl": kl.item()}
        nll = rec
        if self.perceptual is not None:
            perceptual = self.perceptual(video, reconstruction).mean()
            nll = nll + self.perceptual_weight * perceptual
            parts["perceptual"] = perceptual.item()
        loss = nll + self.kl_weight * kl
        if self.gan_active(step):
            self.discriminator.requires_grad_(False)  # the VAE step leaves the discriminator's grads alone
            try:
                gan = hinge_generator_loss(self.discriminator(reconstruction))
            finally:
                self.discriminator.requires_grad_(True)
            weight = torch.tensor(self.gan_weight)
            if self.adaptive and last_layer is not None:
                weight = weight * adaptive_gan_weight(nll, gan, last_layer)
            loss = loss + weight * gan
            parts.update(gan=gan.item(), gan_weight=float(weight))
        return loss, parts

    def discriminator_loss(self, video: torch.Tensor, reconstruction: torch.Tensor):
        """Hinge loss of the discriminator on real videos and (detached) reconstructions."""
        if self.discriminator is None:
            raise RuntimeError("this VAELoss has no discriminator; construct it with discriminator=...")
        loss = hinge_discriminator_loss(self.discriminator(video), self.discriminator(reconstruction.detach()))
        return loss, {"discriminator": loss.item()}


# -- transformer ----------------------------------------------------------------------------------

def drop_text(text_embeds: torch.Tensor, empty_embedding: torch.Tensor, probability: float,
              generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Replace each sample's text by the empty-prompt embedding with `probability` (CFG training).

    text_embeds (B, L, Dt), empty_embedding (L, Dt) or (1, L, Dt) -> (B, L, Dt) and the (B,) bool
    mask of dropped samples. The draw is on the CPU generator, one number per sample.
    """
    if not 0.0 <= probability <= 1.0:
        raise ValueError(f"text dropout must be a probability in [0, 1] (got {probability})")
    B = text_embeds.shape[0]
    empty = empty_embedding.reshape(1, *text_embeds.shape[1:]).to(text_embeds)  # (1, L, Dt)
    dropped = torch.rand(B, generator=generator) < probability  # (B,)
    mixed = torch.where(dropped.to(text_embeds.device)[:, None, None], empty, text_embeds)  # (B, L, Dt)
    return mixed, dropped


def v_prediction_pair(schedule, latents: torch.Tensor, noise: torch.Tensor,
                      timesteps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(noisy latents x_t, velocity target) for latents (B, F, C, h, w) at integer timesteps (B,).

    `schedule` is a runtime scheduler (`add_noise`, `get_velocity` on the CogVideoX abar table).
    """
    return schedule.add_noise(latents, noise, timesteps), schedule.get_velocity(latents, noise, timesteps)


def v_prediction_loss(prediction: torch.Tensor, velocity: torch.Tensor) -> torch.Tensor:
    """MSE in fp32 per sample: (B, F, C, h, w) x 2 -> (B,)."""
    return (prediction.float() - velocity.float()).square().flatten(1).mean(dim=1)


def transformer_loss(model, schedule, latents: torch.Tensor, text_embeds: torch.Tensor,
                     timesteps: torch.Tensor, noise: torch.Tensor, ofs: torch.Tensor | None = None) -> torch.Tensor:
    """Per-sample v-prediction loss (B,) of `model(x_t, text, t) -> v` on latents (B, F, C, h, w)."""
    noisy, velocity = v_prediction_pair(schedule, latents, noise, timesteps)
    if ofs is None:
        prediction = model(noisy, text_embeds, timesteps)  # (B, F, C, h, w)
    else:
        prediction = model(noisy, text_embeds, timesteps, ofs)
    return v_prediction_loss(prediction, velocity)
