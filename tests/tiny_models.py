"""Tiny random CogVideoX models (diffusers classes) and the error measure the tests share.

Nothing binary is committed; every checkpoint is made by the tests, in a temporary folder.
"""

from __future__ import annotations

import math

import torch

# Tiny configs of each family, in diffusers' CogVideoXTransformer3DModel keys.
_TINY_BASE = dict(
    num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=4, time_embed_dim=8,
    text_embed_dim=12, num_layers=2, sample_width=8, sample_height=8, sample_frames=9,
    max_text_seq_length=7,
)
TINY_TRANSFORMERS = {
    "2b": dict(_TINY_BASE),
    "5b": dict(_TINY_BASE, use_rotary_positional_embeddings=True),
    "5b-i2v": dict(_TINY_BASE, in_channels=8, use_rotary_positional_embeddings=True,
                   use_learned_positional_embeddings=True),
    "1.5": dict(_TINY_BASE, patch_size_t=2, patch_bias=False, sample_width=16, sample_height=16,
                sample_frames=17, use_rotary_positional_embeddings=True),
    "1.5-i2v": dict(_TINY_BASE, in_channels=8, patch_size_t=2, patch_bias=False, sample_width=16,
                    sample_height=16, sample_frames=17, ofs_embed_dim=8,
                    use_rotary_positional_embeddings=True),
}


def randomize_(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Non-trivial weights everywhere (diffusers' init leaves norms at 1/0), output scale ~1."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.ndim == 1:
                base = 1.0 if name.endswith("weight") else 0.0  # 1-D weights are norm scales
                p.copy_(base + 0.2 * torch.randn(p.shape, generator=generator))
            else:
                fan_in = math.prod(p.shape[1:])
                p.copy_(torch.randn(p.shape, generator=generator) / math.sqrt(fan_in))
    return module


def make_diffusers_transformer(variant: str, seed: int = 0, **overrides):
    from diffusers import CogVideoXTransformer3DModel

    torch.manual_seed(seed)
    model = CogVideoXTransformer3DModel(**{**TINY_TRANSFORMERS[variant], **overrides})
    return randomize_(model, seed).eval()




def scaled_error(ours: torch.Tensor, reference: torch.Tensor) -> float:
    """Max abs error relative to the output scale (max(1, max |reference|))."""
    scale = max(1.0, reference.abs().max().item())
    return (ours.float() - reference.float()).abs().max().item() / scale


TINY_VAE = dict(
    block_out_channels=(8, 8, 8, 8), latent_channels=4, layers_per_block=1, norm_num_groups=2,
    sample_height=64, sample_width=64,
)
# family -> (transformer variant, vae overrides, scheduler snr_shift_scale, video frames, height, width)
TINY_FAMILIES = {
    "2b": ("2b", dict(scaling_factor=1.15258426), 3.0, 9, 64, 64),
    "5b": ("5b", dict(scaling_factor=0.7), 1.0, 9, 64, 64),
    "5b-i2v": ("5b-i2v", dict(scaling_factor=0.7), 1.0, 9, 64, 64),
    "1.5": ("1.5", dict(scaling_factor=0.7), 1.0, 9, 64, 80),
    "1.5-i2v": ("1.5-i2v", dict(scaling_factor=0.7, invert_scale_latents=True), 1.0, 9, 64, 80),
}


def make_diffusers_pipeline(family: str, directory, seed: int = 0):
    """A tiny random diffusers CogVideoX (or I2V) pipeline with a real sentencepiece tokenizer, saved."""
    from diffusers import (AutoencoderKLCogVideoX, CogVideoXDDIMScheduler, CogVideoXImageToVideoPipeline,
                           CogVideoXPipeline)
    from transformers import AutoTokenizer, T5EncoderModel

    from cogvx.modeling.configs import SchedulerConfig, TextEncoderConfig
    from cogvx.training.toy.captions import train_tokenizer

    variant, vae_overrides, shift, *_ = TINY_FAMILIES[family]
    transformer = make_diffusers_transformer(variant, seed=seed)
    torch.manual_seed(seed)
    vae = randomize_(AutoencoderKLCogVideoX(**TINY_VAE, **vae_overrides), seed + 1).eval()
    tokenizer = AutoTokenizer.from_pretrained(train_tokenizer(directory / "_tokenizer_source"))
    text_config = TextEncoderConfig(vocab_size=len(tokenizer), d_model=TINY_TRANSFORMERS[variant]["text_embed_dim"],
                                    d_kv=6, d_ff=24, num_layers=1, num_heads=2, dropout_rate=0.0)
    text_encoder = T5EncoderModel(text_config.to_transformers()).eval()
    scheduler_config = {k: v for k, v in SchedulerConfig(snr_shift_scale=shift).to_dict().items() if k != "_class_name"}
    scheduler = CogVideoXDDIMScheduler(**scheduler_config)
    cls = CogVideoXImageToVideoPipeline if family.endswith("i2v") else CogVideoXPipeline
    pipe = cls(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, transformer=transformer, scheduler=scheduler)
    pipe.save_pretrained(directory)
    pipe.set_progress_bar_config(disable=True)
    return pipe
