"""`--backend onnxruntime`: every stage on ONNX Runtime against the torch reference, every family;
profile refusals before any run; `validate` passing on faithful engines and failing on stale ones."""

from __future__ import annotations

import math
import shutil

import pytest
import torch
from safetensors.torch import save_file
from tiny_models import TINY_FAMILIES

from cogvx.engines.export_dir import export_engines
from cogvx.contract.shapes import ShapeProfile, ShapeSpec
from cogvx.modeling.checkpoint import read_state_dict
from cogvx.runtime.graph_stage import GraphStage
from cogvx.runtime.pipeline import CogVideoXPipeline, PipelineInputError
from cogvx.runtime.stages import TorchStage
from cogvx.runtime.validate import validate, video_psnr, write_report

TEXT_LEN = 7  # the tiny models' max_text_seq_length


def spec_for(family: str) -> ShapeSpec:
    _, _, _, frames, height, width = TINY_FAMILIES[family]
    return ShapeSpec(batch=1, frames=frames, height=height, width=width, text_len=TEXT_LEN)


@pytest.fixture(scope="module")
def engines(tiny_checkpoint, tmp_path_factory):
    made = {}

    def get(family: str):
        if family not in made:
            components = ["text_encoder", "transformer", "vae_decoder"]
            components += ["vae_encoder"] if family.endswith("i2v") else []
            out = tmp_path_factory.mktemp(f"engines-{family}")
            export_engines(tiny_checkpoint(family), out, components, ShapeProfile.static(spec_for(family)))
            made[family] = out
        return tiny_checkpoint(family), made[family]

    return get


def image_for(spec: ShapeSpec) -> torch.Tensor:
    y, x = torch.meshgrid(torch.linspace(-1, 1, spec.height), torch.linspace(-1, 1, spec.width), indexing="ij")
    return torch.stack([x, -y, x * y])  # (3, H, W) in [-1, 1]


@pytest.mark.parametrize("family", list(TINY_FAMILIES))
def test_end_to_end_psnr_against_torch(family, engines):
    checkpoint, out = engines(family)
    reference = CogVideoXPipeline.from_pretrained(checkpoint)
    engine = CogVideoXPipeline.from_engines(out)
    assert all(isinstance(stage, GraphStage) for stage in engine.stages.values())
    spec = spec_for(family)
    request = dict(prompt="a red square moving right", num_frames=spec.frames, height=spec.height, width=spec.width,
                   num_inference_steps=4, guidance_scale=6.0, seed=7, output_type="pt",
                   image=image_for(spec) if family.endswith("i2v") else None)
    expected, got = reference(**request).frames, engine(**request).frames
    assert got.shape == expected.shape == (1, spec.frames, 3, spec.height, spec.width)
    assert min(video_psnr(expected, got)) >= 50.0


def test_request_outside_the_profile_is_refused_before_any_run(engines):
    _, out = engines("5b")
    engine = CogVideoXPipeline.from_engines(out)
    calls = []
    text_stage = engine.stages["text_encoder"]
    engine.stages["text_encoder"] = TorchStage("text_encoder", lambda **inputs: calls.append(1) or text_stage(**inputs),
                                               ("input_ids",))
    with pytest.raises(PipelineInputError, match="frames 17 is outside this engine's profile \\(exactly 9\\)"):
        engine("a red square", num_frames=17, num_inference_steps=1)
    with pytest.raises(PipelineInputError, match="batch 2 is outside this engine's profile"):
        engine(["a", "b"], num_inference_steps=1)
    with pytest.raises(PipelineInputError, match="width 80 is outside"):
        engine("a", width=80, num_inference_steps=1)
    assert calls == []


def test_validate_passes_on_faithful_engines_and_writes_the_report(engines, tmp_path):
    checkpoint, out = engines("5b")
    spec = spec_for("5b")
    report = validate(CogVideoXPipeline.from_pretrained(checkpoint), CogVideoXPipeline.from_engines(out),
                      "a blue circle", spec.frames, spec.height, spec.width, steps=3, guidance=6.0, seed=1,
                      precision="fp32")
    assert report.passed, report.failures
    assert set(report.stages) == {"text_encoder", "denoiser", "vae_decoder"}
    assert all(m["sqnr"] >= 60 and m["cosine"] >= 0.99999 for m in report.stages.values())
    assert len(report.denoiser_steps) == len(report.drift) == 3 and min(report.frame_psnr) >= 50
    files = write_report(report, tmp_path / "report")
    assert {f.name for f in files} == {"report.json", "report.md", "drift.png", "psnr.png"}
    assert (tmp_path / "report" / "drift.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_validate_fails_on_stale_engines(engines, tmp_path):
    """Engines exported before the transformer's weights changed: validate must notice."""
    checkpoint, out = engines("5b")
    changed = tmp_path / "changed"
    shutil.copytree(checkpoint, changed)
    state = read_state_dict(changed / "transformer")
    generator = torch.Generator().manual_seed(0)
    # 5% of each weight matrix's spread as noise: same config, different weights
    tweaked = {name: t + 0.05 * t.std() * torch.randn(t.shape, generator=generator) if t.ndim == 2 else t
               for name, t in state.items()}
    save_file(tweaked, changed / "transformer" / "diffusion_pytorch_model.safetensors")
    spec = spec_for("5b")
    report = validate(CogVideoXPipeline.from_pretrained(changed), CogVideoXPipeline.from_engines(out),
                      "a blue circle", spec.frames, spec.height, spec.width, steps=3, guidance=6.0, seed=1,
                      precision="fp32")
    assert not report.passed
    assert any(f.startswith("denoiser: SQNR") for f in report.failures)
    assert report.stages["text_encoder"]["sqnr"] >= 60  # the untouched stages still pass
    assert math.isfinite(report.stages["denoiser"]["sqnr"]) and report.stages["denoiser"]["sqnr"] < 60
