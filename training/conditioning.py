"""From dataset items to what the transformer trains on: scaled latents and text embeddings.

Letters: T video frames, H, W video size; F latent frames, C latent channels, h, w latent size;
L text tokens, Dt text width.

Items are `{"video": (3, T, H, W) in [-1, 1], "caption": str}` (encoded here by the frozen VAE
and text encoder) or, from a latent cache, `{"latents": (F, C, h, w), "text_embeddings": (L, Dt),
"caption": str}` with latents already scaled by the VAE's scaling_factor, in the transformer's
layout. The VAE samples its posterior from the trainer's generator, so the latents are part of
the reproducible random stream.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from .config import TrainConfigError

logger = logging.getLogger(__name__)


class Conditioning:
    """Frozen encoders (either may be None when the data is a latent cache) and the empty-prompt embedding."""

    def __init__(self, vae=None, text_encoder=None, scaling_factor: float = 1.0,
                 device: torch.device | str = "cpu", empty_embedding: torch.Tensor | None = None):
        self.vae, self.text_encoder = vae, text_encoder
        self.scaling_factor = scaling_factor
        self.device = torch.device(device)
        self._empty = empty_embedding

    @classmethod
    def from_checkpoint(cls, directory: str | Path, device: torch.device | str = "cpu") -> Conditioning:
        """The VAE (vae/) and text encoder (text_encoder/, tokenizer/) of a diffusers model folder."""
        from cogvx.modeling.configs import TransformerConfig
        from cogvx.modeling.text_encoder import TextEncoder
        from cogvx.modeling.vae import CogVideoXVAE

        directory = Path(directory)
        missing = [name for name in ("vae", "text_encoder", "tokenizer") if not (directory / name).is_dir()]
        if missing:
            raise TrainConfigError(
                f"{directory} has no {', '.join(missing)}/: encoding videos needs the VAE and the text encoder "
                "of a diffusers model folder; point [model] checkpoint at one, or train from a latent cache"
            )
        max_length = TransformerConfig.from_file(directory / "transformer").max_text_seq_length \
            if (directory / "transformer" / "config.json").is_file() else 226
        vae = CogVideoXVAE.from_pretrained(directory / "vae").to(device)
        text_encoder = TextEncoder.from_pretrained(directory / "text_encoder", directory / "tokenizer",
                                                   max_length=max_length)
        text_encoder.model.to(device)
        return cls(vae, text_encoder, vae.config.scaling_factor, device)

    @torch.no_grad()
    def latents(self, items: list[dict], generator: torch.Generator) -> list[torch.Tensor]:
        """Scaled latents (F, C, h, w) per item, on the device."""
        if all("latents" in item for item in items):
            return [item["latents"].to(self.device, torch.float32) for item in items]
        if self.vae is None:
            raise TrainConfigError("the data holds videos but this run has no VAE to encode them; set [model] checkpoint "
                             "to a diffusers model folder (it provides vae/) or train from a latent cache")
        videos = [item["video"].to(self.device, torch.float32) for item in items]
        same_shape = all(v.shape == videos[0].shape for v in videos)
        groups = [torch.stack(videos)] if same_shape else [v[None] for v in videos]  # (B, 3, T, H, W) each
        out = []
        for group in groups:
            z = self.vae.encode(group).sample(generator) * self.scaling_factor  # (B, C, F, h, w)
            out += list(z.permute(0, 2, 1, 3, 4))  # (F, C, h, w) each
        return out

    @torch.no_grad()
    def text_embeddings(self, items: list[dict]) -> torch.Tensor:
        """(B, L, Dt) on the device."""
        if all("text_embeddings" in item for item in items):
            return torch.stack([item["text_embeddings"] for item in items]).to(self.device, torch.float32)
        if self.text_encoder is None:
            raise TrainConfigError("the data holds captions but this run has no text encoder; set [model] checkpoint "
                             "to a diffusers model folder (text_encoder/, tokenizer/) or train from a latent cache")
        return self.text_encoder.encode_prompt([item["caption"] for item in items]).to(self.device, torch.float32)

    @torch.no_grad()
    def empty_embedding(self, like: torch.Tensor) -> torch.Tensor:
        """The empty prompt's embedding (L, Dt) for text dropout; zeros (SAT's choice) without a text encoder."""
        if self._empty is None:
            if self.text_encoder is not None:
                self._empty = self.text_encoder.encode_prompt([""])[0].to(self.device, torch.float32)
            else:
                logger.info("no text encoder: text dropout replaces the text by zeros, as SAT does")
                self._empty = torch.zeros(like.shape[1:], device=self.device)
        return self._empty
