"""Multi-resolution frame pack: clips of different lengths and sizes in one token sequence.

Letters: B packed rows, K clips in a row, L_k / V_k text / vision tokens of clip k,
L = sum L_k, V = sum V_k (padded to the longest row), D hidden, E time embedding width.

A row is laid out [text_1 ; ... ; text_K ; vision_1 ; ... ; vision_K]: the transformer's blocks
see one text part and one vision part, as always. `segment_ids` (B, L + V) names the clip of
every token (-1 for padding); through the attention seam it confines attention to each clip, and
the blocks use it to modulate every token by its own clip's timestep embedding. RoPE tables are
each clip's own, concatenated, so positions stay relative within a clip (see docs/reference.md,
'Training recipes').

A packed forward gives each clip the loss and gradients it would get alone (the tests check 1e-5 of
the scale in fp32).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from cogvx.modeling.positions import PositionTables
from cogvx.modeling.transformer import CogVideoXTransformer, unpatchify

from .config import TrainConfigError
from .losses import v_prediction_loss, v_prediction_pair

logger = logging.getLogger(__name__)


@dataclass
class PackClip:
    """One clip of a pack: noisy latents (F, C, h, w), text embeddings (L_k, Dt), integer timestep."""

    latents: torch.Tensor
    text_embeds: torch.Tensor
    timestep: int | torch.Tensor


def clip_tokens(model_config, latents_shape: tuple[int, ...], text_len: int) -> int:
    """Tokens a clip of latents (F, C, h, w) with `text_len` text tokens takes in a pack."""
    frames, _, height, width = latents_shape
    p, p_t = model_config.patch_size, model_config.patch_size_t or 1
    return text_len + -(-frames // p_t) * (height // p) * (width // p)


def plan_packs(token_counts: list[int], max_tokens: int) -> list[list[int]]:
    """Clip indices grouped into rows of at most `max_tokens` tokens (first fit, longest first)."""
    too_long = [n for n in token_counts if n > max_tokens]
    if too_long:
        raise TrainConfigError(
            f"a clip needs {max(too_long)} tokens, more than pack_tokens={max_tokens}; raise pack_tokens "
            "or train that resolution without packing"
        )
    rows: list[list[int]] = []
    room: list[int] = []
    for index in sorted(range(len(token_counts)), key=lambda i: -token_counts[i]):
        for r, free in enumerate(room):
            if token_counts[index] <= free:
                rows[r].append(index)
                room[r] -= token_counts[index]
                break
        else:
            rows.append([index])
            room.append(max_tokens - token_counts[index])
    return [sorted(row) for row in rows]


def _segment_ids(lengths: list[int], total: int) -> torch.Tensor:
    """Clip index of each of `total` tokens laid out clip after clip; -1 for the padding after them."""
    ids = torch.full((total,), -1, dtype=torch.long)
    start = 0
    for k, n in enumerate(lengths):
        ids[start:start + n] = k
        start += n
    return ids


def packed_forward(model: CogVideoXTransformer, rows: list[list[PackClip]]) -> list[list[torch.Tensor]]:
    """Velocity of every clip, computed with each row as one sequence: rows of clips -> rows of (F, C, h, w)."""
    if model.config.positions == "rope+learned":
        raise TrainConfigError("the 5B-I2V's learned positions cover one fixed shape; frame packing needs a RoPE or "
                               "sincos model: unset pack_tokens")
    embedded = []  # per row: per clip (vision (V_k, D), text (L_k, D), emb (E,), cos, sin)
    for row in rows:
        if not row:
            raise ValueError("a pack row holds no clip; drop empty rows")
        clips = []
        for clip in row:
            timestep = torch.as_tensor(clip.timestep, device=clip.latents.device).reshape(1)
            vision, text, emb, positions = model.embed(clip.latents[None], clip.text_embeds[None], timestep)
            clips.append((vision[0], text[0], emb[0], positions.rope_cos, positions.rope_sin))
        embedded.append(clips)

    text_len = max(sum(c[1].shape[0] for c in clips) for clips in embedded)
    vision_len = max(sum(c[0].shape[0] for c in clips) for clips in embedded)
    most_clips = max(len(clips) for clips in embedded)
    use_rope = embedded[0][0][3] is not None
    pad = lambda x, n: torch.cat([x, x.new_zeros(n - x.shape[0], *x.shape[1:])])  # zero rows up to n

    texts, visions, embs, segments, coss, sins = [], [], [], [], [], []
    for clips in embedded:
        text_ids = _segment_ids([c[1].shape[0] for c in clips], text_len)  # (L,)
        vision_ids = _segment_ids([c[0].shape[0] for c in clips], vision_len)  # (V,)
        segments.append(torch.cat([text_ids, vision_ids]))  # (L + V,)
        texts.append(pad(torch.cat([c[1] for c in clips]), text_len))  # (L, D)
        visions.append(pad(torch.cat([c[0] for c in clips]), vision_len))  # (V, D)
        embs.append(pad(torch.stack([c[2] for c in clips]), most_clips))  # (K, E)
        if use_rope:
            cos = torch.cat([c[3] for c in clips])  # (V_row, Dh)
            sin = torch.cat([c[4] for c in clips])
            filler = vision_len - cos.shape[0]
            coss.append(torch.cat([cos, cos.new_ones(filler, cos.shape[1])]))  # identity rotation on padding
            sins.append(pad(sin, vision_len))

    device = texts[0].device
    segment_ids = torch.stack(segments).to(device)  # (B, L + V)
    text, vision, emb = torch.stack(texts), torch.stack(visions), torch.stack(embs)  # (B, L, D), (B, V, D), (B, K, E)
    positions = PositionTables(torch.stack(coss), torch.stack(sins)) if use_rope else PositionTables()
    vision, text = model.run_blocks(vision, text, emb, positions, segment_ids)
    patches = model.head(vision, emb, segment_ids[:, text_len:])  # (B, V, p*p*pt*C_out)

    c = model.config
    outputs = []
    for b, (row, clips) in enumerate(zip(rows, embedded)):
        start, row_out = 0, []
        for clip, (clip_vision, *_rest) in zip(row, clips):
            n = clip_vision.shape[0]
            frames, _, height, width = clip.latents.shape
            row_out.append(unpatchify(patches[b, start:start + n][None], 1, frames, height, width,
                                      c.patch_size, c.patch_size_t)[0])  # (F, C_out, h, w)
            start += n
        outputs.append(row_out)
    return outputs


def packed_loss(model: CogVideoXTransformer, schedule, latents: list[torch.Tensor], text_embeds: list[torch.Tensor],
                timesteps: torch.Tensor, noises: list[torch.Tensor], rows: list[list[int]]) -> torch.Tensor:
    """Per-clip v-prediction loss (N,) of N clips (latents (F_i, C, h_i, w_i) each), packed as `rows` say."""
    pairs = [v_prediction_pair(schedule, x[None], n[None], timesteps[i:i + 1])
             for i, (x, n) in enumerate(zip(latents, noises))]  # (x_t, v) per clip, each (1, F, C, h, w)
    pack = [[PackClip(pairs[i][0][0], text_embeds[i], timesteps[i]) for i in row] for row in rows]
    predictions = packed_forward(model, pack)
    losses = [None] * len(latents)
    for row, row_out in zip(rows, predictions):
        for i, prediction in zip(row, row_out):
            losses[i] = v_prediction_loss(prediction[None], pairs[i][1])[0]
    return torch.stack(losses)  # (N,)
