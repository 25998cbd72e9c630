"""The attention seam: every CogVideoX attention goes through `rope_attention`.

`rope_attention(q, k, v, cos, sin, num_text_tokens)` rotates the vision part of q and k by 3D RoPE
(in fp32, as the reference does) and runs full, unmasked attention over [text ; vision].
It is the torch custom op `cogvx::rope_attention`, so compilers and exporters see one opaque
node: the ONNX exporter maps it to `cogvx::RoPEAttention3D`, a Triton kernel registers itself as
another implementation. Models without RoPE (2B) pass cos = sin = None.

Which implementation runs: the one `use_implementation` names inside its block; otherwise the
default registered for the tensors' device type (`register_implementation(..., device_type="cuda")`,
as cogvx.engines.triton_attention does), else the reference. This module never imports a kernel
library: kernels register themselves from outside (the CLI does it for `cogvx generate`).

Packed clips (training's multi-resolution frame pack) take the same seam with one more, optional,
argument: `segment_ids` (B, S) names the clip every token belongs to, attention stays inside a
clip, and the RoPE tables are per batch element (B, V, Dh). That path is its own custom op
(`cogvx::packed_rope_attention`), so the exported op and its schema are unchanged.

Letters: B batch, N heads, S = L + V tokens (L text, V vision), Dh head dim.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F

AttentionFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None, int], torch.Tensor]


def rotate_pairs(x: torch.Tensor) -> torch.Tensor:
    """(a, b) -> (-b, a) on consecutive pairs of the last dim."""
    a, b = x.unflatten(-1, (-1, 2)).unbind(-1)  # (..., Dh/2) each
    return torch.stack([-b, a], dim=-1).flatten(-2)  # (..., Dh)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x (B, N, V, Dh) rotated by cos, sin (V, Dh) in fp32, back in x's dtype."""
    return (x.float() * cos + rotate_pairs(x).float() * sin).to(x.dtype)


def reference_rope_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
    cos: torch.Tensor | None, sin: torch.Tensor | None, num_text_tokens: int,
) -> torch.Tensor:
    """Plain torch: RoPE on the vision rows of q and k, then SDPA. (B, N, S, Dh) -> (B, N, S, Dh)."""
    if cos is not None:
        L = num_text_tokens
        q = torch.cat([q[:, :, :L], apply_rope(q[:, :, L:], cos, sin)], dim=2)  # (B, N, S, Dh)
        k = torch.cat([k[:, :, :L], apply_rope(k[:, :, L:], cos, sin)], dim=2)  # (B, N, S, Dh)
    return F.scaled_dot_product_attention(q, k, v)  # (B, N, S, Dh)


def reference_packed_rope_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
    cos: torch.Tensor | None, sin: torch.Tensor | None, num_text_tokens: int, segment_ids: torch.Tensor,
) -> torch.Tensor:
    """Packed clips: RoPE by per-element tables (B, V, Dh), attention only between equal segment ids.

    Tokens of id -1 are padding: they see each other only, so no row is empty (no NaN) and no clip
    sees them. (B, N, S, Dh) -> (B, N, S, Dh).
    """
    if cos is not None:
        L = num_text_tokens
        cos, sin = cos[:, None], sin[:, None]  # (B, 1, V, Dh)
        q = torch.cat([q[:, :, :L], apply_rope(q[:, :, L:], cos, sin)], dim=2)  # (B, N, S, Dh)
        k = torch.cat([k[:, :, :L], apply_rope(k[:, :, L:], cos, sin)], dim=2)  # (B, N, S, Dh)
    same_clip = segment_ids[:, None, :, None] == segment_ids[:, None, None, :]  # (B, 1, S, S)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=same_clip)  # (B, N, S, Dh)


PackedAttentionFn = Callable[..., torch.Tensor]

_IMPLEMENTATIONS: dict[str, AttentionFn] = {"torch": reference_rope_attention}
_PACKED_IMPLEMENTATIONS: dict[str, PackedAttentionFn] = {"torch": reference_packed_rope_attention}
_DEVICE_DEFAULTS: dict[str, str] = {}  # device type ("cuda") -> implementation used there by default
_active: str | None = None  # set by use_implementation; None: the device's default, else the reference


def register_implementation(name: str, fn: AttentionFn, packed_fn: PackedAttentionFn | None = None,
                            device_type: str | None = None) -> None:
    """Add an implementation of the seam (e.g. a Triton kernel); it must match the reference.

    `packed_fn` (optional) serves the packed-clip path; without it that path runs the reference.
    `device_type` ("cuda"): the implementation becomes the default for tensors on that device type,
    used without `use_implementation`; `set_device_default(device_type, None)` turns that off.
    """
    _IMPLEMENTATIONS[name] = fn
    if packed_fn is not None:
        _PACKED_IMPLEMENTATIONS[name] = packed_fn
    if device_type is not None:
        set_device_default(device_type, name)


def set_device_default(device_type: str, name: str | None) -> None:
    """The implementation the seam uses for tensors on `device_type`; None: the reference."""
    if name is None:
        _DEVICE_DEFAULTS.pop(device_type, None)
        return
    if name not in _IMPLEMENTATIONS:
        raise ValueError(f"unknown attention implementation {name!r}; registered: {sorted(_IMPLEMENTATIONS)}")
    _DEVICE_DEFAULTS[device_type] = name


def implementation_for(device: torch.device) -> str:
    """The name of the implementation the seam runs for tensors on `device`, now."""
    return _active if _active is not None else _DEVICE_DEFAULTS.get(device.type, "torch")


@contextlib.contextmanager
def use_implementation(name: str) -> Iterator[None]:
    """Run the seam with another implementation inside this block, on every device ("torch": the
    reference, whatever a device's default)."""
    global _active
    if name not in _IMPLEMENTATIONS:
        raise ValueError(f"unknown attention implementation {name!r}; registered: {sorted(_IMPLEMENTATIONS)}")
    previous, _active = _active, name
    try:
        yield
    finally:
        _active = previous


@torch.library.custom_op("cogvx::rope_attention", mutates_args=())
def _rope_attention_op(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
    cos: torch.Tensor | None, sin: torch.Tensor | None, num_text_tokens: int,
) -> torch.Tensor:
    return _IMPLEMENTATIONS[implementation_for(q.device)](q, k, v, cos, sin, num_text_tokens).contiguous()


@_rope_attention_op.register_fake
def _(q, k, v, cos, sin, num_text_tokens):
    return torch.empty_like(q)


def _setup_context(ctx, inputs, output) -> None:
    q, k, v, cos, sin, num_text_tokens = inputs
    ctx.save_for_backward(q, k, v, cos, sin)
    ctx.num_text_tokens = num_text_tokens


def _backward(ctx, grad_output):
    # Recompute the reference forward and differentiate it (activation-checkpoint style): the op
    # keeps no attention matrix alive between forward and backward.
    q, k, v, cos, sin = ctx.saved_tensors
    with torch.enable_grad():
        inputs = [t.detach().requires_grad_(True) for t in (q, k, v)]
        out = reference_rope_attention(*inputs, cos, sin, ctx.num_text_tokens)
        grads = torch.autograd.grad(out, inputs, grad_output)
    return (*grads, None, None, None)


_rope_attention_op.register_autograd(_backward, setup_context=_setup_context)


@torch.library.custom_op("cogvx::packed_rope_attention", mutates_args=())
def _packed_rope_attention_op(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
    cos: torch.Tensor | None, sin: torch.Tensor | None, num_text_tokens: int, segment_ids: torch.Tensor,
) -> torch.Tensor:
    fn = _PACKED_IMPLEMENTATIONS.get(implementation_for(q.device), reference_packed_rope_attention)
    return fn(q, k, v, cos, sin, num_text_tokens, segment_ids).contiguous()


@_packed_rope_attention_op.register_fake
def _(q, k, v, cos, sin, num_text_tokens, segment_ids):
    return torch.empty_like(q)


def _packed_setup_context(ctx, inputs, output) -> None:
    q, k, v, cos, sin, num_text_tokens, segment_ids = inputs
    ctx.save_for_backward(q, k, v, cos, sin, segment_ids)
    ctx.num_text_tokens = num_text_tokens


def _packed_backward(ctx, grad_output):
    q, k, v, cos, sin, segment_ids = ctx.saved_tensors
    with torch.enable_grad():
        inputs = [t.detach().requires_grad_(True) for t in (q, k, v)]
        out = reference_packed_rope_attention(*inputs, cos, sin, ctx.num_text_tokens, segment_ids)
        grads = torch.autograd.grad(out, inputs, grad_output)
    return (*grads, None, None, None, None)


_packed_rope_attention_op.register_autograd(_packed_backward, setup_context=_packed_setup_context)


def rope_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
    cos: torch.Tensor | None, sin: torch.Tensor | None, num_text_tokens: int,
    segment_ids: torch.Tensor | None = None,
) -> torch.Tensor:
    """The seam. q, k, v (B, N, S, Dh); cos, sin (S - num_text_tokens, Dh) or None.

    With `segment_ids` (B, S) int64 (packed clips): cos, sin are (B, S - num_text_tokens, Dh).
    """
    if (cos is None) != (sin is None):
        raise ValueError("rope_attention needs both cos and sin, or neither")
    if segment_ids is not None:
        B, _, S, Dh = q.shape
        if segment_ids.shape != (B, S):
            raise ValueError(f"segment_ids must be (batch, tokens) = {(B, S)} (got {tuple(segment_ids.shape)})")
        if cos is not None and cos.shape != (B, S - num_text_tokens, Dh):
            raise ValueError(
                f"packed RoPE tables {tuple(cos.shape)} do not fit {(B, S - num_text_tokens, Dh)}; "
                "concatenate each clip's position_tables() rows per batch element"
            )
        return _packed_rope_attention_op(q, k, v, cos, sin, num_text_tokens, segment_ids)
    if cos is not None and cos.shape != (q.shape[2] - num_text_tokens, q.shape[3]):
        raise ValueError(
            f"RoPE tables {tuple(cos.shape)} do not fit {q.shape[2] - num_text_tokens} vision tokens of "
            f"head dim {q.shape[3]}; compute them with position_tables() for this shape"
        )
    return _rope_attention_op(q, k, v, cos, sin, num_text_tokens)
