"""cogvx: a compiled deployment and export toolchain for CogVideoX.

The public API, imported on first use so that `cogvx --help` stays fast:

    from cogvx import CogVideoXTransformer, CogVideoXVAE, TextEncoder, CogVideoXPipeline, PRESETS
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "CogVideoXTransformer": "cogvx.modeling.transformer",
    "CogVideoXVAE": "cogvx.modeling.vae",
    "TextEncoder": "cogvx.modeling.text_encoder",
    "rope_attention": "cogvx.modeling.attention",
    "position_tables": "cogvx.modeling.positions",
    "PRESETS": "cogvx.modeling.configs",
    "get_preset": "cogvx.modeling.configs",
    "CogVideoXPipeline": "cogvx.runtime.pipeline",
    "make_scheduler": "cogvx.runtime.schedulers",
    "write_video": "cogvx.runtime.video_io",
    "read_video": "cogvx.runtime.video_io",
    "ShapeSpec": "cogvx.contract.shapes",
    "ShapeProfile": "cogvx.contract.shapes",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'cogvx' has no attribute {name!r}")
