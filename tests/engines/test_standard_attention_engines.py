"""Engine directories with `--attention standard` transformers: every family end to end on ONNX
Runtime against torch, and the attention form kept apart in the stage record and content key."""

from __future__ import annotations

import onnx
import pytest
from tiny_models import TINY_FAMILIES

from cogvx.contract.manifest import Manifest
from cogvx.contract.shapes import ShapeProfile, ShapeSpec
from cogvx.engines.export_dir import export_engines
from cogvx.errors import CogvxError
from cogvx.runtime.graph_stage import GraphStage
from cogvx.runtime.pipeline import CogVideoXPipeline
from cogvx.runtime.stages import TorchStage
from cogvx.runtime.validate import video_psnr

TEXT_LEN = 7  # the tiny models' max_text_seq_length


def spec_for(family: str) -> ShapeSpec:
    _, _, _, frames, height, width = TINY_FAMILIES[family]
    return ShapeSpec(batch=1, frames=frames, height=height, width=width, text_len=TEXT_LEN)


def image_for(spec: ShapeSpec):
    import torch

    y, x = torch.meshgrid(torch.linspace(-1, 1, spec.height), torch.linspace(-1, 1, spec.width), indexing="ij")
    return torch.stack([x, -y, x * y])  # (3, H, W) in [-1, 1]


@pytest.mark.parametrize("family", list(TINY_FAMILIES))
def test_standard_attention_video_matches_torch(family, tiny_checkpoint, tmp_path):
    """Only the transformer is an engine (the denoiser, where attention lives): the other stages run
    in torch from the same checkpoint, so the video differs from torch's by the attention form alone."""
    checkpoint, out = tiny_checkpoint(family), tmp_path / "engines"
    spec = spec_for(family)
    export_engines(checkpoint, out, ["transformer"], ShapeProfile.static(spec), attention="standard")
    graph = onnx.load(out / "transformer.onnx")
    assert not [n for n in graph.graph.node if n.domain] and {"RotaryEmbedding", "Attention"} <= {
        n.op_type for n in graph.graph.node}
    engine = CogVideoXPipeline.from_engines(out, checkpoint)
    assert isinstance(engine.stages["denoiser"], GraphStage)
    assert isinstance(engine.stages["vae_decoder"], TorchStage)
    reference = CogVideoXPipeline.from_pretrained(checkpoint)
    request = dict(prompt="a red square moving right", num_frames=spec.frames, height=spec.height, width=spec.width,
                   num_inference_steps=4, guidance_scale=6.0, seed=7, output_type="pt",
                   image=image_for(spec) if family.endswith("i2v") else None)
    expected, got = reference(**request).frames, engine(**request).frames
    assert got.shape == expected.shape == (1, spec.frames, 3, spec.height, spec.width)
    assert min(video_psnr(expected, got)) >= 50.0


def test_the_two_forms_never_share_a_stage(tiny_checkpoint, tmp_path):
    checkpoint, out = tiny_checkpoint("5b"), tmp_path / "engines"
    profile = ShapeProfile.static(spec_for("5b"))
    export_engines(checkpoint, out, ["transformer", "vae_decoder"], profile)
    plugin = Manifest.load(out)
    assert plugin.stages["transformer"].attention == "plugin" and plugin.stages["vae_decoder"].attention is None
    results = export_engines(checkpoint, out, ["transformer", "vae_decoder"], profile, attention="standard")
    assert [(r.component, r.reused) for r in results] == [("transformer", False), ("vae_decoder", True)]
    standard = Manifest.load(out)
    assert standard.stages["transformer"].attention == "standard"
    assert standard.stages["transformer"].key != plugin.stages["transformer"].key
    assert standard.stages["vae_decoder"].key == plugin.stages["vae_decoder"].key  # no attention, same key
    again = export_engines(checkpoint, out, ["transformer"], profile, attention="standard")
    assert again[0].reused
    back = export_engines(checkpoint, out, ["transformer"], profile)
    assert not back[0].reused and Manifest.load(out).stages["transformer"].key == plugin.stages["transformer"].key


def test_unknown_form_and_quantized_standard_are_refused(tiny_checkpoint, tmp_path):
    checkpoint = tiny_checkpoint("5b")
    profile = ShapeProfile.static(spec_for("5b"))
    with pytest.raises(CogvxError, match="choose from plugin, standard"):
        export_engines(checkpoint, tmp_path / "a", ["transformer"], profile, attention="fused")
    with pytest.raises(CogvxError, match="export int8 / fp8 with --attention plugin"):
        export_engines(checkpoint, tmp_path / "b", ["transformer"], profile, precision="int8", attention="standard")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
