"""Frame pack: a packed batch gives every clip the loss (and gradients) it gets alone."""

from __future__ import annotations

import pytest
import torch

from cogvx.modeling.attention import reference_rope_attention, rope_attention
from cogvx.modeling.configs import SchedulerConfig
from cogvx.modeling.positions import position_tables
from cogvx.modeling.transformer import CogVideoXTransformer
from cogvx.runtime.schedulers import DDIMScheduler
from cogvx.training.losses import transformer_loss
from cogvx.training.config import TrainConfigError
from cogvx.training.pack import clip_tokens, packed_loss, plan_packs

TINY = dict(num_layers=2, num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=4,
            text_embed_dim=16, max_text_seq_length=6, time_embed_dim=16)
VARIANTS = {
    "5b (3D RoPE)": dict(TINY),
    "2b (sincos)": dict(TINY, use_rotary_positional_embeddings=False),
    "1.5 (temporal patch)": dict(TINY, patch_size_t=2, patch_bias=False, sample_height=16, sample_width=16),
}
# (F, C, h, w): different lengths and resolutions
SHAPES = [(2, 4, 8, 8), (4, 4, 4, 6), (2, 4, 6, 4), (2, 4, 4, 4)]


def clips(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    latents = [torch.randn(s, generator=g) for s in SHAPES]
    noise = [torch.randn(s, generator=g) for s in SHAPES]
    text = [torch.randn(6, 16, generator=g) for _ in SHAPES]
    return latents, noise, text, torch.tensor([10, 500, 900, 999])


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_packed_loss_and_gradients_equal_clip_by_clip(variant):
    model = CogVideoXTransformer.from_preset("toy", seed=1, **VARIANTS[variant]).requires_grad_(True)
    schedule = DDIMScheduler(SchedulerConfig(snr_shift_scale=1.0))
    latents, noise, text, t = clips()
    rows = plan_packs([clip_tokens(model.config, x.shape, 6) for x in latents], max_tokens=60)
    assert len(rows) == 2 and sorted(i for row in rows for i in row) == [0, 1, 2, 3]  # padded rows

    packed = packed_loss(model, schedule, latents, text, t, noise, rows)
    packed.sum().backward()
    packed_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    alone = torch.stack([transformer_loss(model, schedule, x[None], e[None], t[i:i + 1], n[None])[0]
                         for i, (x, e, n) in enumerate(zip(latents, text, noise))])
    alone.sum().backward()

    # fp32 sums in another order: errors relative to each quantity's scale (rounding ~1e-7, a wrong mask ~1e-2)
    assert (packed - alone).abs().max().item() <= 1e-5 * alone.abs().max().item()
    assert packed.min().item() > 0.1  # a real loss, not a degenerate zero
    # gradients against the largest one (some parameters' gradients are ~0, where only rounding is left)
    scale = max(p.grad.abs().max().item() for p in model.parameters())
    worst = max((p.grad - packed_grads[n]).abs().max().item() for n, p in model.named_parameters())
    assert worst <= 1e-5 * scale


def test_plan_packs_first_fit_and_refusal():
    assert plan_packs([30, 20, 50, 10], 60) == [[2, 3], [0, 1]]
    with pytest.raises(TrainConfigError, match="needs 70 tokens, more than pack_tokens=60; raise pack_tokens"):
        plan_packs([70], 60)


def test_the_seam_without_segments_is_unchanged_and_with_segments_confines_attention():
    g = torch.Generator().manual_seed(0)
    config = CogVideoXTransformer.from_preset("toy", **TINY).config
    q, k, v = (torch.randn(1, 2, 3 + 8, 16, generator=g) for _ in range(3))  # 3 text + 2x2x2 vision
    tables = position_tables(config, 2, 4, 4)
    plain = rope_attention(q, k, v, tables.rope_cos, tables.rope_sin, 3)
    assert torch.equal(plain, reference_rope_attention(q, k, v, tables.rope_cos, tables.rope_sin, 3).contiguous())

    # two copies of the clip side by side in one row: [text, text ; vision, vision]
    cat = lambda x: torch.cat([x[:, :, :3], x[:, :, :3], x[:, :, 3:], x[:, :, 3:]], dim=2)  # (1, 2, 22, 16)
    segments = torch.tensor([[0] * 3 + [1] * 3 + [0] * 8 + [1] * 8])
    cos, sin = torch.cat([tables.rope_cos] * 2)[None], torch.cat([tables.rope_sin] * 2)[None]  # (1, 16, 16)
    packed = rope_attention(cat(q), cat(k), cat(v), cos, sin, 6, segment_ids=segments)
    assert (packed - cat(plain)).abs().max().item() <= 1e-5 * plain.abs().max().item()
    with pytest.raises(ValueError, match=r"segment_ids must be \(batch, tokens\)"):
        rope_attention(cat(q), cat(k), cat(v), cos, sin, 6, segment_ids=segments[:, :5])
