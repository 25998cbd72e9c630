"""Which implementation of the attention seam the torch backend runs: `cogvx generate --attention`.

- "auto" (the default): on a machine where torch sees a CUDA GPU and triton imports, the Triton
  RoPE flash-attention kernel (engines/triton_attention.py) becomes the seam's implementation for
  CUDA tensors; CPU tensors, and machines without triton, keep the reference.
- "reference": torch SDPA everywhere (the way to turn the kernel off, e.g. to bisect a difference).

modeling/ never imports triton: the kernel registers itself from here, through
`cogvx.modeling.attention.register_implementation(..., device_type="cuda")`.
"""

from __future__ import annotations

import logging

import torch

from cogvx.modeling.attention import set_device_default

logger = logging.getLogger(__name__)

CHOICES = ("auto", "reference")


def select_attention(choice: str = "auto") -> str:
    """Set the seam's implementation for CUDA tensors as `choice` says; returns what CUDA tensors
    now run ("triton" or "torch")."""
    if choice not in CHOICES:
        raise ValueError(f"attention {choice!r}: choose from {', '.join(CHOICES)}")
    if choice == "reference" or not torch.cuda.is_available():
        set_device_default("cuda", None)
        return "torch"
    try:
        from . import triton_attention
    except ImportError as error:  # triton missing, or a triton that does not fit this torch
        logger.warning("attention: the Triton kernel is unavailable (%s); CUDA tensors run the reference", error)
        set_device_default("cuda", None)
        return "torch"
    triton_attention.register()
    return triton_attention.NAME
