"""The CogVideoX expert diffusion transformer, every variant (see docs/reference.md, 'Transformer' and 'Positions').

Letters: B batch, F latent frames, C latent channels, H, W latent height / width,
L text tokens, V vision tokens (F/pt * H/p * W/p), S = L + V, D hidden, N heads, Dh head dim,
E time embedding width.

Parameter names equal diffusers' `CogVideoXTransformer3DModel`, so a diffusers checkpoint
assigns straight in.

Packed clips (training's frame pack, `cogvx.training.pack`): `embed`, `run_blocks` and `head` are
the three halves of `forward`; the last two take optional `segment_ids` (B, S) naming the clip
of every token of a [texts ; visions] sequence, with `emb` then per clip (B, K, E). Without
`segment_ids` nothing changes.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from . import checkpoint as ckpt
from .attention import rope_attention
from .configs import TransformerConfig, get_preset
from .memory import check_fits
from .positions import PositionTables, position_tables, timestep_sinusoid

logger = logging.getLogger(__name__)


class TimestepEmbedding(nn.Module):
    """Linear -> SiLU -> Linear on a sinusoid."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.linear_1 = nn.Linear(in_dim, out_dim)
        self.linear_2 = nn.Linear(out_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(F.silu(self.linear_1(x)))


class PatchEmbed(nn.Module):
    """Text Linear(4096 -> D); vision per-frame Conv2d(p, p) (1.0) or Linear over (c, pt, ph, pw) patches (1.5)."""

    def __init__(self, config: TransformerConfig):
        super().__init__()
        c, d, p, p_t = config.in_channels, config.hidden_size, config.patch_size, config.patch_size_t
        self.patch_size, self.patch_size_t = p, p_t
        if p_t is None:
            self.proj = nn.Conv2d(c, d, kernel_size=p, stride=p, bias=config.patch_bias)
        else:
            # The 1.5 checkpoints carry this bias whatever `patch_bias` says (it only governs the
            # 1.0 Conv2d), as in diffusers and SAT.
            self.proj = nn.Linear(c * p * p * p_t, d)
        self.text_proj = nn.Linear(config.text_embed_dim, d)
        if config.use_learned_positional_embeddings:
            # 5B-I2V: a learned table over [text ; vision] at the training shape.
            num_tokens = config.max_text_seq_length + config.sample_latent_frames * (
                config.sample_height // p) * (config.sample_width // p)
            self.pos_embedding = nn.Parameter(torch.zeros(1, num_tokens, d))

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, F, C, H, W) -> (B, V, D)."""
        B, Fr, C, H, W = latents.shape
        p = self.patch_size
        if self.patch_size_t is None:
            x = self.proj(latents.reshape(B * Fr, C, H, W))  # (B*F, D, H/p, W/p)
            return x.unflatten(0, (B, Fr)).flatten(3).transpose(2, 3).flatten(1, 2)  # (B, V, D)
        p_t = self.patch_size_t
        x = latents.permute(0, 1, 3, 4, 2)  # (B, F, H, W, C)
        x = x.reshape(B, Fr // p_t, p_t, H // p, p, W // p, p, C)
        x = x.permute(0, 1, 3, 5, 7, 2, 4, 6).flatten(4, 7).flatten(1, 3)  # (B, V, C*pt*p*p)
        return self.proj(x)  # (B, V, D)


def rows_per_token(per_clip: torch.Tensor, segment_ids: torch.Tensor) -> torch.Tensor:
    """(B, K, X) per clip -> (B, S, X) per token by `segment_ids` (B, S); padding (-1) takes clip 0's row."""
    index = segment_ids.clamp(min=0)[..., None].expand(-1, -1, per_clip.shape[-1])  # (B, S, X)
    return torch.gather(per_clip, 1, index)


class ExpertAdaLayerNorm(nn.Module):
    """One LayerNorm for both modalities, modulated per modality: shift, scale, gate x (vision, text)."""

    def __init__(self, time_dim: int, dim: int, eps: float):
        super().__init__()
        self.linear = nn.Linear(time_dim, 6 * dim)
        self.norm = nn.LayerNorm(dim, eps=eps)

    def forward(self, vision: torch.Tensor, text: torch.Tensor, emb: torch.Tensor,
                segment_ids: torch.Tensor | None = None):
        modulation = self.linear(F.silu(emb))  # (B, 6D), or (B, K, 6D) per packed clip
        if segment_ids is None:
            shift, scale, gate, text_shift, text_scale, text_gate = modulation[:, None].chunk(6, dim=2)  # (B, 1, D) each
        else:
            per_token = rows_per_token(modulation, segment_ids)  # (B, S, 6D)
            L = text.shape[1]
            shift, scale, gate = per_token[:, L:].chunk(6, dim=2)[:3]  # (B, V, D) each
            text_shift, text_scale, text_gate = per_token[:, :L].chunk(6, dim=2)[3:]  # (B, L, D) each
        vision = self.norm(vision) * (1 + scale) + shift  # (B, V, D)
        text = self.norm(text) * (1 + text_scale) + text_shift  # (B, L, D)
        return vision, text, gate, text_gate


class Attention(nn.Module):
    """q, k, v projections, per-head q/k LayerNorm, the attention seam, output projection."""

    def __init__(self, config: TransformerConfig):
        super().__init__()
        d, bias = config.hidden_size, config.attention_bias
        self.num_heads = config.num_attention_heads
        self.to_q = nn.Linear(d, d, bias=bias)
        self.to_k = nn.Linear(d, d, bias=bias)
        self.to_v = nn.Linear(d, d, bias=bias)
        self.norm_q = nn.LayerNorm(config.attention_head_dim, eps=1e-6)
        self.norm_k = nn.LayerNorm(config.attention_head_dim, eps=1e-6)
        self.to_out = nn.ModuleList([nn.Linear(d, d, bias=True)])

    def forward(self, x: torch.Tensor, num_text_tokens: int, positions: PositionTables,
                segment_ids: torch.Tensor | None = None) -> torch.Tensor:
        """(B, S, D) -> (B, S, D)."""
        heads = lambda t: t.unflatten(-1, (self.num_heads, -1)).transpose(1, 2)  # (B, N, S, Dh)
        q = self.norm_q(heads(self.to_q(x)))
        k = self.norm_k(heads(self.to_k(x)))
        v = heads(self.to_v(x))
        out = rope_attention(q, k, v, positions.rope_cos, positions.rope_sin, num_text_tokens,
                             segment_ids)  # (B, N, S, Dh)
        return self.to_out[0](out.transpose(1, 2).flatten(2))  # (B, S, D)


class GELUTanhProj(nn.Module):
    def __init__(self, dim: int, inner: int):
        super().__init__()
        self.proj = nn.Linear(dim, inner)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.proj(x), approximate="tanh")


class FeedForward(nn.Module):
    """Linear(D -> 4D), GELU(tanh), Linear(4D -> D); `net.1` is the (inference no-op) dropout slot."""

    def __init__(self, dim: int):
        super().__init__()
        self.net = nn.ModuleList([GELUTanhProj(dim, 4 * dim), nn.Identity(), nn.Linear(4 * dim, dim)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net[2](self.net[0](x))


class Block(nn.Module):
    """Expert AdaLN -> attention over [text ; vision] -> gated residuals; again for the shared FFN."""

    def __init__(self, config: TransformerConfig):
        super().__init__()
        d = config.hidden_size
        self.norm1 = ExpertAdaLayerNorm(config.time_embed_dim, d, config.norm_eps)
        self.attn1 = Attention(config)
        self.norm2 = ExpertAdaLayerNorm(config.time_embed_dim, d, config.norm_eps)
        self.ff = FeedForward(d)

    def forward(self, vision, text, emb, positions: PositionTables, segment_ids: torch.Tensor | None = None):
        L = text.shape[1]
        norm_vision, norm_text, gate, text_gate = self.norm1(vision, text, emb, segment_ids)
        attended = self.attn1(torch.cat([norm_text, norm_vision], dim=1), L, positions, segment_ids)  # (B, S, D)
        vision = vision + gate * attended[:, L:]
        text = text + text_gate * attended[:, :L]
        norm_vision, norm_text, gate, text_gate = self.norm2(vision, text, emb, segment_ids)
        fed = self.ff(torch.cat([norm_text, norm_vision], dim=1))  # (B, S, D)
        vision = vision + gate * fed[:, L:]
        text = text + text_gate * fed[:, :L]
        return vision, text


class FinalAdaLayerNorm(nn.Module):
    """LayerNorm modulated by (shift, scale) = chunk(2) of Linear(SiLU(emb)), shift first."""

    def __init__(self, time_dim: int, dim: int, eps: float):
        super().__init__()
        self.linear = nn.Linear(time_dim, 2 * dim)
        self.norm = nn.LayerNorm(dim, eps=eps)

    def forward(self, x: torch.Tensor, emb: torch.Tensor, segment_ids: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, V, D); emb (B, E), or (B, K, E) per packed clip with segment_ids (B, V)."""
        modulation = self.linear(F.silu(emb))  # (B, 2D) or (B, K, 2D)
        if segment_ids is None:
            shift, scale = modulation[:, None].chunk(2, dim=2)  # (B, 1, D) each
        else:
            shift, scale = rows_per_token(modulation, segment_ids).chunk(2, dim=2)  # (B, V, D) each
        return self.norm(x) * (1 + scale) + shift


class CogVideoXTransformer(nn.Module):
    """`transformer(latents (B,F,C,H,W), text_embeds (B,L,4096), timestep (B,), ofs=None) -> (B,F,C_out,H,W)`."""

    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.config = config
        d = config.hidden_size
        self.patch_embed = PatchEmbed(config)
        self.time_embedding = TimestepEmbedding(d, config.time_embed_dim)
        if config.ofs_embed_dim:
            self.ofs_embedding = TimestepEmbedding(config.ofs_embed_dim, config.ofs_embed_dim)
        self.transformer_blocks = nn.ModuleList([Block(config) for _ in range(config.num_layers)])
        self.norm_final = nn.LayerNorm(d, eps=config.norm_eps)
        self.norm_out = FinalAdaLayerNorm(config.time_embed_dim, d, config.norm_eps)
        self.proj_out = nn.Linear(d, config.out_patch_dim)
        self.gradient_checkpointing = False
        self._position_cache: dict[tuple, PositionTables] = {}  # per shape: the loop reuses one shape ~50x

    # -- loading ---------------------------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, directory: str | Path, dtype: torch.dtype = torch.float32) -> CogVideoXTransformer:
        """Read a diffusers `transformer/` folder (single or sharded safetensors) on the meta device."""
        directory = Path(directory)
        config = TransformerConfig.from_file(directory)
        warn_if_unstable_dtype(config, dtype)
        cls.check_fits(config, dtype)
        return ckpt.load_module(lambda: cls(config), directory, dtype)

    @classmethod
    def from_preset(cls, name: str, dtype: torch.dtype = torch.float32, seed: int = 0, **overrides) -> CogVideoXTransformer:
        """Random weights of a preset (benchmarks, tests); `overrides` change config fields, e.g. num_layers=2."""
        config = get_preset(name).transformer.replace(**overrides)
        warn_if_unstable_dtype(config, dtype)
        cls.check_fits(config, torch.float32)  # built in float32, then cast
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = cls(config)
        return model.to(dtype).eval().requires_grad_(False)

    @classmethod
    def parameter_count(cls, config: TransformerConfig) -> int:
        """Parameters of a model of this config, from one- and two-layer models on the meta device
        (building the whole model first is what a config with a million layers must not do)."""
        with ckpt.meta_device():
            one, two = (sum(p.numel() for p in cls(config.replace(num_layers=n)).parameters()) for n in (1, 2))
        return one + (two - one) * (config.num_layers - 1)

    @classmethod
    def check_fits(cls, config: TransformerConfig, dtype: torch.dtype) -> None:
        """Refuse a config whose weights alone do not fit in host memory, before building it."""
        needed = cls.parameter_count(config) * torch.empty((), dtype=dtype).element_size()
        check_fits(needed, f"a transformer of {config.num_layers} layers x {config.hidden_size} wide",
                   advice="check num_layers / num_attention_heads / attention_head_dim in its config.json")

    def save_pretrained(self, directory: str | Path, max_shard_bytes: int | None = None) -> None:
        ckpt.save_component(self, self.config.to_dict(), directory, max_shard_bytes=max_shard_bytes)

    # -- forward ---------------------------------------------------------------------------------

    def position_tables(self, num_latent_frames: int, latent_height: int, latent_width: int, device=None) -> PositionTables:
        key = (num_latent_frames, latent_height, latent_width, str(device))
        if key not in self._position_cache:
            if len(self._position_cache) >= 4:
                self._position_cache.pop(next(iter(self._position_cache)))
            self._position_cache[key] = position_tables(self.config, num_latent_frames, latent_height, latent_width, device)
        return self._position_cache[key]

    def check_inputs(self, latents: torch.Tensor, text_embeds: torch.Tensor, timestep: torch.Tensor, ofs) -> None:
        c = self.config
        if latents.ndim != 5 or latents.shape[2] != c.in_channels:
            raise ValueError(f"latents must be (B, F, {c.in_channels}, H, W) (got {tuple(latents.shape)})")
        _, frames, _, height, width = latents.shape
        if height % c.patch_size or width % c.patch_size:
            raise ValueError(
                f"latent height/width must be multiples of {c.patch_size} (got {height}x{width}); "
                f"video height/width must be multiples of {8 * c.patch_size}"
            )
        if c.patch_size_t and frames % c.patch_size_t:
            raise ValueError(
                f"CogVideoX 1.5 patches {c.patch_size_t} latent frames together: got {frames} latent frames; "
                "pad one latent frame in front (the pipeline does) so the count is even"
            )
        if text_embeds.ndim != 3 or text_embeds.shape[0] != latents.shape[0] or text_embeds.shape[2] != c.text_embed_dim:
            raise ValueError(
                f"text_embeds must be ({latents.shape[0]}, L, {c.text_embed_dim}) (got {tuple(text_embeds.shape)})"
            )
        if c.positions != "rope" and text_embeds.shape[1] != c.max_text_seq_length:
            raise ValueError(
                f"this model's position table covers exactly {c.max_text_seq_length} text tokens "
                f"(got {text_embeds.shape[1]}); pad or truncate the prompt to {c.max_text_seq_length} tokens"
            )
        if c.positions == "rope+learned":
            if (height, width) != (c.sample_height, c.sample_width) or frames > c.sample_latent_frames:
                raise ValueError(
                    f"this model's learned positions cover latents up to {c.sample_latent_frames}x"
                    f"{c.sample_height}x{c.sample_width} (frames x height x width; video "
                    f"{c.sample_frames}x{8 * c.sample_height}x{8 * c.sample_width}); got "
                    f"{frames}x{height}x{width}"
                )
        if timestep.ndim != 1 or timestep.shape[0] != latents.shape[0]:
            raise ValueError(f"timestep must be ({latents.shape[0]},) (got {tuple(timestep.shape)})")
        if c.ofs_embed_dim and ofs is None:
            raise ValueError("this model (CogVideoX 1.5 I2V) needs ofs (the pipeline passes 2.0)")

    def forward(
        self,
        latents: torch.Tensor,
        text_embeds: torch.Tensor,
        timestep: torch.Tensor,
        ofs: torch.Tensor | None = None,
        positions: PositionTables | None = None,
    ) -> torch.Tensor:
        """(B, F, C, H, W), (B, L, 4096), (B,) -> (B, F, C_out, H, W)."""
        B, Fr, _, H, W = latents.shape
        vision, text, emb, positions = self.embed(latents, text_embeds, timestep, ofs, positions)
        vision, text = self.run_blocks(vision, text, emb, positions)
        x = self.head(vision, emb)  # (B, V, p*p*pt*C_out)
        return unpatchify(x, B, Fr, H, W, self.config.patch_size, self.config.patch_size_t)

    def embed(
        self,
        latents: torch.Tensor,
        text_embeds: torch.Tensor,
        timestep: torch.Tensor,
        ofs: torch.Tensor | None = None,
        positions: PositionTables | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, PositionTables]:
        """Inputs -> vision (B, V, D), text (B, L, D), emb (B, E), and the RoPE tables still to apply."""
        self.check_inputs(latents, text_embeds, timestep, ofs)
        c = self.config
        B, Fr, _, H, W = latents.shape
        if positions is None:
            positions = self.position_tables(Fr, H, W, latents.device)
        dtype = latents.dtype

        emb = self.time_embedding(timestep_sinusoid(timestep, c.hidden_size, c.flip_sin_to_cos, c.freq_shift).to(dtype))
        if c.ofs_embed_dim:
            ofs = torch.as_tensor(ofs, device=latents.device).float().reshape(-1).expand(B)
            emb = emb + self.ofs_embedding(timestep_sinusoid(ofs, c.ofs_embed_dim, c.flip_sin_to_cos, c.freq_shift).to(dtype))  # (B, E)

        text = self.patch_embed.text_proj(text_embeds)  # (B, L, D)
        vision = self.patch_embed(latents)  # (B, V, D)
        L = text.shape[1]
        if positions.sincos is not None:
            vision = vision + positions.sincos.to(dtype)
        if c.positions == "rope+learned":
            table = self.patch_embed.pos_embedding[:, : L + vision.shape[1]].to(dtype)  # (1, S, D)
            text, vision = text + table[:, :L], vision + table[:, L:]
        return vision, text, emb, positions

    def run_blocks(
        self, vision: torch.Tensor, text: torch.Tensor, emb: torch.Tensor, positions: PositionTables,
        segment_ids: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Every block, gradient-checkpointed when asked: (B, V, D), (B, L, D) -> the same shapes."""
        for block in self.transformer_blocks:
            if self.gradient_checkpointing and torch.is_grad_enabled():
                vision, text = checkpoint(block, vision, text, emb, positions, segment_ids, use_reentrant=False)
            else:
                vision, text = block(vision, text, emb, positions, segment_ids)
        return vision, text

    def head(self, vision: torch.Tensor, emb: torch.Tensor, segment_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Final norms and projection: (B, V, D) -> patches (B, V, p*p*pt*C_out)."""
        x = self.norm_out(self.norm_final(vision), emb, segment_ids)  # (B, V, D)
        return self.proj_out(x)  # (B, V, p*p*pt*C_out)


def unpatchify(x: torch.Tensor, B: int, frames: int, H: int, W: int, p: int, p_t: int | None) -> torch.Tensor:
    """(B, V, pt*p*p*C) channel-major patches -> (B, F, C, H, W)."""
    if p_t is None:
        x = x.reshape(B, frames, H // p, W // p, -1, p, p)  # (B, F, H', W', C, p, p)
        return x.permute(0, 1, 4, 2, 5, 3, 6).flatten(5, 6).flatten(3, 4)  # (B, F, C, H, W)
    x = x.reshape(B, frames // p_t, H // p, W // p, -1, p_t, p, p)  # (B, F', H', W', C, pt, p, p)
    return x.permute(0, 1, 5, 4, 2, 6, 3, 7).flatten(6, 7).flatten(4, 5).flatten(1, 2)  # (B, F, C, H, W)


def warn_if_unstable_dtype(config: TransformerConfig, dtype: torch.dtype) -> None:
    """fp16 on the 5B-wide models overflows (NaN / black video); they were trained in bf16."""
    if dtype == torch.float16 and config.hidden_size >= 3072:
        logger.warning(
            "float16 on a %d-wide CogVideoX (5B / 1.5) produces NaN or black video; use bfloat16",
            config.hidden_size,
        )
